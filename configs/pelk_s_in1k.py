# PeLK-S on ImageNet-1K, 300 epochs, with 40% dynamic sparsity (paper table 4).
# Shared settings: configs/_base_/pelk_in1k.py. Drop path 0.4 as SLaK /
# ConvNeXt of the same size.
_base_ = ['./_base_/pelk_in1k.py']

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.4),
    head=dict(in_channels=998))
