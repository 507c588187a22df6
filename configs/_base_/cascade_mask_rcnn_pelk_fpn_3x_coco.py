# What every Cascade Mask R-CNN-PeLK COCO config shares (paper table 3):
# ConvNeXt's MMDetection config (4conv1fc cascade box heads with GIoU loss,
# DETR-style multi-scale training with random crops, 3x = 36 epochs, steps at
# 27 and 33, 16 images per batch = 8 GPUs x 2) with the backbone swapped and:
# - AdamW lr 2e-4, weight decay 0.05 (none on norms, biases, layer scales and
#   positional embeddings), layer-wise lr decay 0.7;
# - sparsity: the sparse ImageNet backbone's zero pattern kept, or 40 %
#   dynamic sparsity when training from scratch (see custom_hooks below).
# fp32 by default; `tools/train.py --amp` switches to AmpOptimWrapper.
_base_ = [
    'mmdet::convnext/'
    'cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_'
    'amp-ms-crop-3x_coco.py'
]

custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PeLK',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        gap_before_final_norm=False),
    neck=dict(in_channels=[124, 249, 499, 998]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='PeLKLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))

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
