"""configs/metafile.yml (OpenMMLab model-index format) lists every config.

Every entry's config exists and builds, its task / dataset / metrics are
well-formed, its dense parameter count is the one of the model the config
builds, and every config under configs/ (except _base_/ and demo/) has an
entry. No weights are released yet, so every ``Weights`` is empty.
"""
import glob
import os.path as osp

import pytest
import torch
import yaml

from pelk_mm import PeLK
from pelk_mm.mm.builder import build_model
from helpers import ROOT

TASKS = {
    'Semantic Segmentation': ('ADE20K', {'mIoU'}),
    'Object Detection': ('COCO', {'box AP'}),
    'Instance Segmentation': ('COCO', {'mask AP'}),
    'Image Classification': ('ImageNet-1k', {'Top 1 Accuracy'}),
}


def load_yaml(*path):
    with open(osp.join(ROOT, *path)) as f:
        return yaml.safe_load(f)


METAFILE = load_yaml('configs', 'metafile.yml')
MODELS_ = METAFILE['Models']


def test_model_index_imports_the_metafile():
    assert load_yaml('model-index.yml') == {'Import': ['configs/metafile.yml']}


def test_every_config_has_one_entry():
    configs = {
        osp.relpath(p, ROOT)
        for p in glob.glob(osp.join(ROOT, 'configs', '*.py'))
    }
    listed = [m['Config'] for m in MODELS_]
    assert len(listed) == len(set(listed))
    assert set(listed) == configs
    names = [m['Name'] for m in MODELS_]
    assert len(names) == len(set(names))
    assert all(m['Name'] == osp.basename(m['Config'])[:-3] for m in MODELS_)


@pytest.mark.parametrize('entry', MODELS_, ids=lambda m: m['Name'])
def test_entry(entry):
    collections = {c['Name'] for c in METAFILE['Collections']}
    assert entry['In Collection'] in collections
    assert entry['Weights'] is None  # no weights released yet
    for result in entry.get('Results', []):
        dataset, metrics = TASKS[result['Task']]
        assert result['Dataset'] == dataset
        assert set(result['Metrics']) == metrics
        assert all(0 < v < 100 for v in result['Metrics'].values())
    meta = entry['Metadata']
    assert meta['Training Data'] in {d for d, _ in TASKS.values()}

    with torch.device('meta'):  # shapes only: no memory, no init
        model = build_model(osp.join(ROOT, entry['Config']))
    assert isinstance(model.backbone, PeLK)
    if getattr(model, 'auxiliary_head', None) is not None:
        model.auxiliary_head = None  # not run at inference, not counted
    dense = sum(p.numel() for p in model.parameters()) / 1e6
    assert meta['Parameters (dense, M)'] == pytest.approx(dense, abs=0.005)
    assert meta['Parameters (M)'] < meta['Parameters (dense, M)']
