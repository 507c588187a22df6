"""Multi-scale outputs are feature maps unless pooling is asked for.

``gap_before_final_norm=None`` (the default) pools only when ``out_indices``
is the last stage alone (mmpretrain-style classification); an explicit value
wins. PeLK then drops into mmseg's and mmdet's own ResNet-50 base configs with
``_delete_=True``, ``type``, ``arch`` and ``out_indices`` (plus what any
backbone swap needs:
the head / neck input channels, and ``pretrained=None`` in mmseg's, whose
model-level ``pretrained`` names the ResNet checkpoint), and a forward + loss
+ backward runs.
"""
import pytest
import torch
from mmengine.config import Config

import pelk_mm  # noqa: F401
from pelk_mm import PeLK
from pelk_mm.mm.builder import build_model
from helpers import ARCH21


@pytest.mark.parametrize('out_indices,gap,pooled', [
    (-1, None, True),
    (3, None, True),
    ((3, ), None, True),
    ((0, 1, 2, 3), None, False),
    ((2, 3), None, False),
    ((-2, -1), None, False),
    (2, None, False),
    ((0, 1, 2, 3), True, True),
    (-1, False, False),
])
def test_default_pools_only_the_last_stage_alone(out_indices, gap, pooled):
    torch.manual_seed(0)
    model = PeLK(ARCH21, out_indices=out_indices, gap_before_final_norm=gap)
    model.init_weights()
    assert model.gap_before_final_norm is pooled
    outs = model(torch.randn(2, 3, 64, 64))
    assert all(o.dim() == (2 if pooled else 4) for o in outs)
    if not pooled:
        sizes = {0: 16, 1: 8, 2: 4, 3: 2}
        assert [o.shape[-1]
                for o in outs] == [sizes[i] for i in model.out_indices]


def test_mmseg_upernet_r50_base():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    cfg = Config.fromstring(
        "_base_ = ['mmseg::_base_/models/upernet_r50.py']\n"
        "model = dict(\n"
        "    pretrained=None,  # the base's ResNet checkpoint\n"
        "    backbone=dict(_delete_=True, type='PeLK',\n"
        "                  out_indices=(0, 1, 2, 3),\n"
        f"                  arch={ARCH21!r}),\n"
        "    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32,\n"
        "                     num_classes=4),\n"
        "    auxiliary_head=dict(in_channels=64, channels=16,\n"
        "                        num_classes=4))\n",
        file_format='.py')
    assert cfg.model.backbone == dict(
        type='PeLK', arch=ARCH21, out_indices=(0, 1, 2, 3))
    model = build_model(
        cfg, dict(default_scope='mmseg'), seed=0, init_weights=True)
    model.train()  # the builder's model is in eval mode
    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            metainfo=dict(
                img_shape=(64, 64), pad_shape=(64, 64), ori_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 4, (1, 64, 64)))
        samples.append(sample)
    losses = model(inputs, samples, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.pos_embeds[0].grad is not None


@pytest.mark.slow
def test_mmdet_mask_rcnn_r50_base():
    from mmdet.testing import demo_mm_inputs
    cfg = Config.fromstring(
        "_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']\n"
        "model = dict(\n"
        "    backbone=dict(_delete_=True, type='PeLK',\n"
        "                  out_indices=(0, 1, 2, 3),\n"
        f"                  arch={ARCH21!r}),\n"
        "    neck=dict(in_channels=[16, 32, 64, 128]))\n",
        file_format='.py')
    model = build_model(
        cfg, dict(default_scope='mmdet'), seed=0, init_weights=True)
    model.train()  # the builder's model is in eval mode
    packed = demo_mm_inputs(
        2, [[3, 64, 64]] * 2, num_items=[2, 3], num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    total = sum(
        v if torch.is_tensor(v) else sum(v) for k, v in losses.items()
        if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.pos_embeds[0].grad is not None
