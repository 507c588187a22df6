# The built-in demo (tools/demo.sh): UperNet + a reduced PeLK trained from
# scratch on the procedurally drawn ADE20K-layout data of
#   python tools/make_demo_data.py ade20k data/ade20k_demo
# in about 4 minutes on 2 idle CPU cores. Everything but the sizes is the
# headline config (configs/upernet_pelk_t_ade20k.py): real peripheral
# convolutions with sharing grids and positional embeddings (kernels
# 31/29/27/13, centre 5x5), the stage-wise lr decay constructor, mmseg's ADE20K
# dataset, UperNet + auxiliary FCN head, and the sparsity hook in mode='auto',
# which finds the backbone dense (trained from scratch) and trains it with 40 %
# dynamic sparsity. Reduced: width [32, 64, 128, 256], depth [1, 1, 2, 1],
# 128x128 crops, narrower heads, 1e-3 lr with a short warm-up, masks updated
# every 25 optimizer steps (6 prune-and-regrow updates; the last at step 150,
# so the regrown weights train for 10 more steps), no validation during
# training (tools/demo.sh runs tools/test.py instead).
_base_ = ['../_base_/upernet_pelk_ade20k.py']

data_root = 'data/ade20k_demo'
crop_size = (128, 128)
max_iters = 160

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(
            _delete_=True,
            depths=[1, 1, 2, 1],
            channels=[32, 64, 128, 256],
            kernel_sizes=[31, 29, 27, 13],
            center_sizes=5),
        drop_path_rate=0.0),
    decode_head=dict(
        in_channels=[32, 64, 128, 256], channels=64, dropout_ratio=0.0),
    auxiliary_head=dict(in_channels=128, channels=32, dropout_ratio=0.0),
    test_cfg=dict(_delete_=True, mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(160, 160),
        ratio_range=(0.75, 1.5),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=1,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
val_dataloader = None
val_cfg = None
val_evaluator = None

optim_wrapper = dict(optimizer=dict(lr=1e-3))
custom_hooks = [
    dict(type='PeLKArchMetaHook'),  # the backbone's arch in checkpoint meta
    dict(
        type='DynamicSparsityHook',
        mode='auto',
        sparsity=0.4,
        init='snip',
        growth='random',
        prune_rate=0.3,
        update_interval=25)
]
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=30,
        end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
# Seeded: model init, data order and augmentation start from seed 0.
randomness = dict(seed=0)
