# What every UperNet-PeLK ADE20K config shares (paper section 3 / table 2,
# following ConvNeXt's and SLaK's UperNet recipe):
# - ADE20K 512x512 crops, mmseg's standard pipeline, 8 GPUs x 2 images;
# - AdamW lr 1e-4, weight decay 0.05 (none on norms, biases, layer scales and
#   positional embeddings), stage-wise lr decay 0.9;
# - 1500 iterations of linear warm-up, then poly (power 1.0) to 0; 80K
#   iterations (the *_160k configs: 160K);
# - auxiliary FCN head on stage 3 (loss weight 0.4), sliding-window inference
#   (512x512 windows, stride 341);
# - sparsity: the sparse ImageNet backbone's zero pattern kept, or 40 %
#   dynamic sparsity when training from scratch (see custom_hooks below).
# fp32 by default; `tools/train.py --amp` switches to AmpOptimWrapper.
_base_ = [
    './models/upernet_pelk.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py'
]

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='PeLKLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))

max_iters = 80000
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=1500,
        end=max_iters)
]

# Sparsity (DynamicSparsityHook, mode='auto'): decided from the backbone as
# loaded, before the first iteration, and logged. A sparse ImageNet backbone
# (>= 10 % exact zeros, min_zero_fraction) is fine-tuned with its zero pattern
# kept ('fixed'); dense weights, e.g. with
# `--cfg-options model.backbone.init_cfg=None` (training from scratch), get
# the paper's 40 % dynamic sparsity (SNIP init, magnitude pruning + random
# regrowth every 100 optimizer steps from a prune rate of 0.3, SLaK's
# defaults). The decision is stored in the checkpoints, so --resume keeps it.
custom_hooks = [
    dict(type='PeLKArchMetaHook'),  # the backbone's arch in checkpoint meta
    dict(
        type='DynamicSparsityHook',
        mode='auto',
        sparsity=0.4,
        init='snip',
        growth='random',
        prune_rate=0.3,
        update_interval=100)
]

# 8 GPUs x 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
