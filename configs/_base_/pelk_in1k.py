# What every PeLK ImageNet-1K config shares (paper table 4, SLaK's recipe,
# which is ConvNeXt's): 300 epochs, 224x224, batch 4096 (32 GPUs x 128),
# AdamW lr 4e-3, weight decay 0.05 (none on norms, biases, layer scales and
# positional embeddings), 20 warm-up epochs then cosine, label smoothing 0.1,
# Mixup 0.8 / CutMix 1.0, RandAugment and random erasing (mmpretrain's Swin
# pipeline), and SLaK's dynamic sparsity: 40% of every 2-D / 4-D weight of the
# backbone and the classifier head pruned and regrown during training.
# No EMA: an average of sparse weights is not sparse.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py'
]

custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(type='PeLK', arch='tiny', drop_path_rate=0.1),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=998,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=None),
    init_cfg=dict(
        type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

train_dataloader = dict(batch_size=128)

# No lr decay (rate 1); the parameters without weight decay are the ones
# PeLK.no_weight_decay() declares, plus the head's bias.
optim_wrapper = dict(
    optimizer=dict(lr=4e-3),
    constructor='PeLKLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(_delete_=True, decay_rate=1.0),
    clip_grad=None)

# SLaK's defaults: SNIP mask init, prune rate 0.3 with cosine decay, magnitude
# pruning + random regrowth every 100 optimizer steps (PeLK-T: 0.5, 2000).
custom_hooks = [
    dict(type='PeLKArchMetaHook'),  # the backbone's arch in checkpoint meta
    dict(
        type='DynamicSparsityHook',
        mode='dynamic',
        sparsity=0.4,
        init='snip',
        growth='random',
        prune_rate=0.3,
        update_interval=100)
]

# base_batch_size = 32 GPUs x 128 images per GPU
auto_scale_lr = dict(base_batch_size=4096)
