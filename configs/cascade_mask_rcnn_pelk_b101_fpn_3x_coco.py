# Cascade Mask R-CNN + PeLK-B-101 + FPN on COCO, 3x multi-scale (paper table
# 3). Shared settings: configs/_base_/cascade_mask_rcnn_pelk_fpn_3x_coco.py.
# Drop path 0.7 as ConvNeXt's detection config of the same size. Backbone: the
# sparse ImageNet-1K PeLK-B-101 classifier converted with
#   python tools/model_converters/cls2backbone.py CLS_CKPT \
#       checkpoints/pelk_b101_in1k_backbone.pth --arch base-101
_base_ = ['./_base_/cascade_mask_rcnn_pelk_fpn_3x_coco.py']

checkpoint_file = 'checkpoints/pelk_b101_in1k_backbone.pth'
model = dict(
    backbone=dict(
        arch='base-101',
        drop_path_rate=0.7,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint_file,
            prefix='backbone.')),
    neck=dict(in_channels=[166, 332, 665, 1331]))

optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
