# UperNet + PeLK-B-101 on ADE20K, 512x512 crops, 80K iterations (paper section
# 3). Shared settings: configs/_base_/upernet_pelk_ade20k.py. Drop path 0.4 as
# ConvNeXt's UperNet config of the same size. Backbone: the sparse ImageNet-1K
# PeLK-B-101 classifier converted with
#   python tools/model_converters/cls2backbone.py CLS_CKPT \
#       checkpoints/pelk_b101_in1k_backbone.pth --arch base-101
_base_ = ['./_base_/upernet_pelk_ade20k.py']

checkpoint_file = 'checkpoints/pelk_b101_in1k_backbone.pth'
model = dict(
    backbone=dict(
        arch='base-101',
        drop_path_rate=0.4,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint_file,
            prefix='backbone.')),
    decode_head=dict(in_channels=[166, 332, 665, 1331]),
    auxiliary_head=dict(in_channels=665))

optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
