"""Every row of the README's "Parameters and FLOPs" table, measured.

Each model is built from its config on the meta device (no memory, no
forward) and counted with the README's convention, the one of
``tools/analysis_tools/get_flops.py``: a segmentor's auxiliary head dropped,
40 % of every 2-D / 4-D weight under ``backbone.`` and ``head.`` counted as
removed with uniform masks. The README's numbers are parsed from README.md,
so the table and this test cannot drift apart; its paper column must be the
paper's, and every effective count within 4 % of it.
"""
import functools
import os.path as osp
import re

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from pelk_mm import SparsityMasks, count_parameters
from pelk_mm.mm.builder import build_model
from pelk_mm.sparsity.densities import densities_to_counts, uniform_densities
from pelk_mm.sparsity.masks import select_parameters
from helpers import ROOT, SMALL_ARCH

SPARSITY = 0.4
INCLUDE = (r'backbone\.', r'head\.')  # get_flops.py's masks

# README model name -> config
CONFIGS = {
    'PeLK-T classifier':
    'pelk_t_in1k.py',
    'PeLK-S classifier':
    'pelk_s_in1k.py',
    'PeLK-B classifier':
    'pelk_b_in1k.py',
    'PeLK-B-101 classifier':
    'pelk_b101_in1k.py',
    'UperNet + PeLK-T':
    'upernet_pelk_t_ade20k.py',
    'UperNet + PeLK-S':
    'upernet_pelk_s_ade20k.py',
    'UperNet + PeLK-B':
    'upernet_pelk_b_ade20k.py',
    'UperNet + PeLK-B-101':
    'upernet_pelk_b101_ade20k.py',
    'Cascade Mask R-CNN + PeLK-T':
    'cascade_mask_rcnn_pelk_t_fpn_3x_coco.py',
    'Cascade Mask R-CNN + PeLK-S':
    'cascade_mask_rcnn_pelk_s_fpn_3x_coco.py',
    'Cascade Mask R-CNN + PeLK-B':
    'cascade_mask_rcnn_pelk_b_fpn_3x_coco.py',
    'Cascade Mask R-CNN + PeLK-B-101':
    'cascade_mask_rcnn_pelk_b101_fpn_3x_coco.py',
}
# The paper's parameter counts (M): tables 4 (ImageNet), 2 (ADE20K), 3 (COCO)
PAPER = {
    'PeLK-T classifier': 29,
    'PeLK-S classifier': 50,
    'PeLK-B classifier': 89,
    'PeLK-B-101 classifier': 90,
    'UperNet + PeLK-T': 62,
    'UperNet + PeLK-S': 84,
    'UperNet + PeLK-B': 126,
    'UperNet + PeLK-B-101': 126,
    'Cascade Mask R-CNN + PeLK-T': 86,
    'Cascade Mask R-CNN + PeLK-S': 108,
    'Cascade Mask R-CNN + PeLK-B': 147,
    'Cascade Mask R-CNN + PeLK-B-101': 147,
}


def readme_section():
    text = open(osp.join(ROOT, 'README.md')).read()
    return text.split('## Parameters and FLOPs')[1].split('\n## ')[0]


def readme_rows():
    """``{model: (effective, paper, diff %, dense)}`` from the table."""
    rows = {}
    for line in readme_section().splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if cells[0] in CONFIGS:
            rows[cells[0]] = (float(cells[1]), float(cells[2]),
                              float(cells[3].rstrip(' %')), cells[4])
    return rows


def build_on_meta(config):
    with torch.device('meta'):
        model = build_model(osp.join(ROOT, 'configs', config))
    if getattr(model, 'auxiliary_head', None) is not None:
        model.auxiliary_head = None  # does not run at inference
    return model


def counts(model):
    """Dense and effective counts, as ``count_parameters`` gives them for
    ``SparsityMasks.init(model, SPARSITY, 'uniform', include=INCLUDE)``: the
    same per-layer counts, without drawing the positions (which do not
    change a count; checked against the real masks below)."""
    dense = sum(p.numel() for p in model.parameters())
    shapes = {
        name: p.shape
        for name, p in select_parameters(model, INCLUDE).items()
    }
    density = 1 - SPARSITY
    kept = densities_to_counts(shapes, uniform_densities(shapes, density),
                               density)
    pruned = sum(shape.numel() - kept[name] for name, shape in shapes.items())
    return dense, dense - pruned


@functools.lru_cache(maxsize=None)
def measure(config):
    """``(dense, effective, positional-embedding)`` counts of a config."""
    model = build_on_meta(config)
    backbone = getattr(model, 'backbone', model)
    pos_embed = sum(h.numel() for h in backbone.pos_embeds)
    return counts(model) + (pos_embed, )


def test_every_row_is_in_the_table():
    assert set(readme_rows()) == set(CONFIGS)


@pytest.mark.parametrize('model_name', list(CONFIGS))
def test_readme_row(model_name):
    effective_readme, paper, diff_readme, dense_cell = readme_rows(
    )[model_name]
    dense, effective, _ = measure(CONFIGS[model_name])
    # every number is the measured one rounded to the digits printed
    assert effective / 1e6 == pytest.approx(effective_readme, abs=0.0051)
    digits = len(dense_cell.split('.')[1])
    assert digits == 2, f'dense column of {model_name}: give 2 decimals'
    assert dense / 1e6 == pytest.approx(float(dense_cell), abs=0.0051)
    assert 100 * (effective / 1e6 / paper - 1) == pytest.approx(
        diff_readme, abs=0.051)
    assert paper == PAPER[model_name]
    assert abs(effective / 1e6 / paper - 1) < 0.04


def test_fast_count_equals_count_parameters_with_real_masks():
    """``counts`` above equals ``count_parameters`` with the masks the
    get_flops tool draws (on a small classifier, built for real)."""
    init_default_scope('mmpretrain')
    # a dict, not a config: built through the registry directly
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='PeLK', arch=SMALL_ARCH),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=40)))
    masks = SparsityMasks.init(
        model,
        sparsity=SPARSITY,
        init='uniform',
        include=INCLUDE,
        generator=torch.Generator().manual_seed(0))
    real = count_parameters(model, masks)
    assert (real['dense'], real['effective']) == counts(model)
    assert real['effective'] < real['dense']


def test_readme_pos_embed_counts_and_paper_gap_without_them():
    """The README's positional-embedding sizes and where the classifiers
    land without them."""
    section = ' '.join(readme_section().split())
    sizes = re.search(
        r'\(([\d.]+) M in T/S, ([\d.]+) M in B, ([\d.]+) M in '
        r'B-101\)', section)
    gaps = re.search(
        r'land at ([-+][\d.]+) % \(T\), ([-+][\d.]+) % \(S\), '
        r'([-+][\d.]+) % \(B\), ([-+][\d.]+) % \(B-101\)', section)
    assert sizes and gaps
    for short, size in zip(('T', 'B', 'B-101'), sizes.groups()):
        pe = measure(CONFIGS[f'PeLK-{short} classifier'])[2]
        assert pe / 1e6 == pytest.approx(float(size), abs=0.0051)
    assert measure(CONFIGS['PeLK-S classifier'])[2] == measure(
        CONFIGS['PeLK-T classifier'])[2]  # "T/S"
    rows = readme_rows()
    for short, gap in zip(('T', 'S', 'B', 'B-101'), gaps.groups()):
        name = f'PeLK-{short} classifier'
        _, effective, pe = measure(CONFIGS[name])
        effective -= pe
        paper = rows[name][1]
        assert 100 * (effective / 1e6 / paper - 1) == pytest.approx(
            float(gap), abs=0.051)
