# UperNet + PeLK-B-101 on ADE20K, 512x512 crops, 160K iterations (paper table
# 2).
_base_ = ['./upernet_pelk_b101_ade20k.py']

max_iters = 160000
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
train_cfg = dict(max_iters=max_iters, val_interval=16000)
default_hooks = dict(checkpoint=dict(interval=16000))
