# PeLK-B-101 on ImageNet-1K, 300 epochs, with 40% dynamic sparsity (paper table
# 4). Shared settings: configs/_base_/pelk_in1k.py. Drop path 0.5 as SLaK /
# ConvNeXt of the same size. The paper reports PeLK-B-101 at 384x384 (85.8%);
# this config trains at 224.
_base_ = ['./_base_/pelk_in1k.py']

model = dict(
    backbone=dict(arch='base-101', drop_path_rate=0.5),
    head=dict(in_channels=1331))
