# UperNet + PeLK-T: mmseg's UperNet/ConvNeXt model with the backbone swapped.
# Top-level configs set the arch, its channels, drop path and the pretrained
# backbone (see configs/README.md).
_base_ = ['mmseg::_base_/models/upernet_convnext.py']

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
    decode_head=dict(in_channels=[124, 249, 499, 998], num_classes=150),
    auxiliary_head=dict(in_channels=499, num_classes=150))
