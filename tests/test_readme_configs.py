"""The README's mm-config blocks work as pasted.

Each block is read from README.md, loaded as a config on its base (mmseg's
UperNet-R50, mmdet's Cascade Mask R-CNN-R50) and built with the README's own
``arch='tiny'``; a forward on one small image runs. Without ``_delete_=True``
the base's ResNet keys reach PeLK, and the error names them and the fix.
"""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

import pelk_mm  # noqa: F401
from pelk_mm import PeLK
from pelk_mm.mm.builder import build_model
from helpers import ROOT

BASES = {
    'mmseg': 'mmseg::_base_/models/upernet_r50.py',
    'mmdet': 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py',
}


def readme_block(library):
    """The README's config block on ``library``'s base."""
    with open(osp.join(ROOT, 'README.md')) as f:
        blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
    found = [
        b for b in blocks if b.startswith(f"_base_ = ['{BASES[library]}']")
    ]
    assert len(found) == 1, f'one README block on {BASES[library]}'
    return found[0]


def build(block, library):
    cfg = Config.fromstring(block, file_format='.py')
    return build_model(
        cfg, dict(default_scope=library), seed=0, init_weights=True)


@pytest.mark.slow  # arch tiny, as the README has it
def test_mmseg_block_builds_and_runs():
    model = build(readme_block('mmseg'), 'mmseg')
    assert type(model.backbone) is PeLK
    assert model.backbone.arch_record()['channels'] == [124, 249, 499, 998]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 19, 16, 16)  # the base's 19 classes, 1/4
    assert torch.isfinite(logits).all()


@pytest.mark.slow  # arch tiny, as the README has it
def test_mmdet_block_builds_and_runs():
    from mmdet.testing import demo_mm_inputs
    model = build(readme_block('mmdet'), 'mmdet')
    assert type(model.backbone) is PeLK
    packed = demo_mm_inputs(1, [[3, 64, 64]], num_items=[2], num_classes=80)
    data = model.data_preprocessor(packed, False)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs'])
        results = model(**data, mode='predict')
    assert [f.shape[1] for f in feats] == [256] * 5  # FPN over PeLK's maps
    assert len(results) == 1 and results[0].pred_instances is not None


@pytest.mark.parametrize('library', ['mmseg', 'mmdet'])
def test_without_delete_the_error_names_foreign_keys(library):
    block = readme_block(library)
    merged = re.sub(r'\n\s*_delete_=True,[^\n]*', '', block)
    assert '_delete_' not in merged
    with pytest.raises(TypeError) as info:
        build(merged, library)
    message = str(info.value)
    for key in ('depth', 'num_stages', 'style'):  # ResNet's
        assert f"'{key}'" in message
    assert "'arch'" not in message and "'out_indices'" not in message
    assert '_delete_=True' in message and 'base' in message
