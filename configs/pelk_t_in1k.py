# PeLK-T on ImageNet-1K, 300 epochs, with 40% dynamic sparsity (paper table 4).
# Shared settings: configs/_base_/pelk_in1k.py. Drop path 0.1 as SLaK /
# ConvNeXt of the same size; sparse updates as SLaK-T (prune rate 0.5, every
# 2000 steps).
_base_ = ['./_base_/pelk_in1k.py']

model = dict(
    backbone=dict(arch='tiny', drop_path_rate=0.1), head=dict(in_channels=998))

custom_hooks = [
    dict(type='PeLKArchMetaHook'),  # the backbone's arch in checkpoint meta
    dict(
        type='DynamicSparsityHook',
        mode='dynamic',
        sparsity=0.4,
        init='snip',
        growth='random',
        prune_rate=0.5,
        update_interval=2000)
]
