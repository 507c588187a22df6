"""The code's structure: no import cycle in pelk_mm, stages and blocks come
from the backbone (:meth:`PeLK.locate`), one config -> model builder and one
backbone loader that keeps the arch record."""
import ast
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

import pelk_mm  # noqa: F401
from pelk_mm import PeLK
from pelk_mm.checkpoint import (ARCH_META_KEY, PeLKCheckpointMismatch,
                                load_backbone)
from pelk_mm.mm.builder import (build_model, load_config,
                                save_initial_checkpoint)
from pelk_mm.sparsity.masks import SparsityMasks, layer_group
from helpers import ROOT

ARCH = dict(
    depths=[2, 1, 3, 1],
    channels=[16, 24, 32, 40],
    kernel_sizes=[11, 7, 5, 3],
    center_sizes=3)
CONFIG = f"""
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='PeLK', arch={ARCH!r}),
    neck=None,
    head=dict(type='LinearClsHead', num_classes=3, in_channels=40))
"""


# ------------------------------------------------------------ imports
def _imports(path, module):
    """The pelk_mm modules ``module`` (file ``path``) imports anywhere."""
    package = module if path.endswith('__init__.py') else module.rsplit(
        '.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = package.split('.')
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = '.'.join(base +
                                  ([node.module] if node.module else []))
            else:
                target = node.module or ''
            names = [f'{target}.{a.name}' for a in node.names]
            found.add(target)
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith('pelk_mm')}


def test_no_import_cycle_in_pelk_mm():
    files = {}
    for folder, _, names in __import__('os').walk(osp.join(ROOT, 'pelk_mm')):
        for name in names:
            if name.endswith('.py'):
                path = osp.join(folder, name)
                rel = osp.relpath(path, ROOT)[:-3].replace(osp.sep, '.')
                files[rel[:-len('.__init__')] if rel.
                      endswith('__init__') else rel] = path
    graph = {
        m: {t
            for t in _imports(p, m) if t in files and t != m}
        for m, p in files.items()
    }
    # a module importing its own package's __init__ is not a cycle of
    # modules; every other edge counts
    graph = {
        m: {t
            for t in targets if not m.startswith(t + '.')}
        for m, targets in graph.items()
    }
    assert 'pelk_mm.models.pelk' not in graph['pelk_mm.checkpoint.arch_record']
    state = {}

    def visit(module, stack):
        state[module] = 'open'
        for target in sorted(graph[module]):
            assert state.get(target) != 'open', (
                'import cycle: ' + ' -> '.join(stack + [module, target]))
            if target not in state:
                visit(target, stack + [module])
        state[module] = 'done'

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_pelk_mm_does_not_import_tools():
    """Tools import pelk_mm, never the reverse (tools/ is not installed)."""
    for folder, _, names in __import__('os').walk(osp.join(ROOT, 'pelk_mm')):
        for name in names:
            if name.endswith('.py'):
                tree = ast.parse(open(osp.join(folder, name)).read())
                for node in ast.walk(tree):
                    modules = ([a.name for a in node.names] if isinstance(
                        node, ast.Import) else [node.module or '']
                               if isinstance(node, ast.ImportFrom) else [])
                    assert not any(
                        m.split('.')[0] in ('tools', 'launch_utils',
                                            'output_comparison')
                        for m in modules), osp.join(folder, name)


# ------------------------------------------------- the backbone's layout
def test_locate_maps_every_parameter_to_its_module():
    model = PeLK(ARCH, out_indices=(0, 3))
    parts = set()
    for name, param in model.named_parameters():
        where = model.locate(name)
        parts.add(where.part)
        if where.part == 'block':
            owner = model.stages[where.stage][where.block]
            assert where.unit == f'stages.{where.stage}.{where.block}'
        elif where.part in ('stem', 'downsample'):
            owner = model.downsample_layers[where.stage]
            assert (where.part == 'stem') == (where.stage == 0)
        elif where.part == 'pos_embed':
            assert param is model.pos_embeds[where.stage]
            continue
        else:
            assert where.part == 'norm', name
            owner = getattr(model, f'norm{where.stage}')
        assert dict(owner.named_parameters())[where.rest] is param, name
    assert parts == {'stem', 'downsample', 'block', 'pos_embed', 'norm'}
    # a checkpoint's key of a block this backbone does not have, a prefix
    where = model.locate('backbone.stages.3.7.gamma', 'backbone.')
    assert (where.part, where.stage, where.block, where.rest) == ('block', 3,
                                                                  7, 'gamma')
    assert model.locate('head.fc.weight', 'backbone.').part == ''
    assert model.locate('stages.x.0.norm.weight').part == ''


def test_mask_groups_come_from_the_backbone():
    model = build_model(Config.fromstring(CONFIG, '.py'))
    masks = SparsityMasks.init(
        model,
        sparsity=0.4,
        init='uniform',
        generator=torch.Generator().manual_seed(0))
    groups = [layer_group(name, model) for name in masks.masks]
    first = ['stem', 'downsample', 'downsample', 'downsample']
    assert groups[:5] == first + ['stage0.peripheral_conv']
    assert list(masks.group_counts(model)) == [
        'stem', 'downsample', 'stage0.peripheral_conv',
        'stage0.pointwise_conv', 'stage1.peripheral_conv',
        'stage1.pointwise_conv', 'stage2.peripheral_conv',
        'stage2.pointwise_conv', 'stage3.peripheral_conv',
        'stage3.pointwise_conv', 'head.fc'
    ]
    assert sum(t for _, t in masks.group_counts(model).values()) == sum(
        m.numel() for m in masks.masks.values())


# ------------------------------------------------------------ the builder
def test_build_model_from_a_config(tmp_path):
    path = tmp_path / 'cls.py'
    path.write_text(CONFIG)
    model = build_model(str(path))
    assert type(model).__name__ == 'ImageClassifier' and not model.training
    backbone = build_model(
        str(path), {'model.backbone.drop_path_rate': 0.1},
        part='model.backbone')
    assert isinstance(backbone, PeLK)
    assert backbone.stages[3][0].drop_path.drop_prob == pytest.approx(0.1)
    a = build_model(str(path), seed=3, init_weights=True).state_dict()
    b = build_model(str(path), seed=3, init_weights=True).state_dict()
    c = build_model(str(path), seed=4, init_weights=True).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['backbone.stages.0.0.peripheral_conv.weight'],
                           c['backbone.stages.0.0.peripheral_conv.weight'])
    with pytest.raises(ValueError, match='the config has no model.neckk'):
        build_model(str(path), part='model.neckk')
    with pytest.raises(ValueError, match='CONFIG must be a config file'):
        load_config(str(tmp_path / 'absent.py'))
    # a loaded config is copied, not changed
    cfg = load_config(str(path))
    load_config(cfg, {'model.head.num_classes': 5})
    assert cfg.model.head.num_classes == 3


def test_save_initial_checkpoint(tmp_path):
    path = tmp_path / 'cls.py'
    path.write_text(CONFIG)
    out = tmp_path / 'init.pth'
    save_initial_checkpoint(str(path), str(out), seed=0)
    saved = torch.load(out, weights_only=True)
    assert saved['meta'] == {}
    expected = build_model(str(path), seed=0, init_weights=True).state_dict()
    assert saved['state_dict'].keys() == expected.keys()
    assert all(
        torch.equal(saved['state_dict'][k], v) for k, v in expected.items())
    assert ARCH_META_KEY in saved['state_dict']._metadata['backbone']


# ------------------------------------------------------------- the loader
def test_load_backbone_keeps_the_arch_record(tmp_path):
    cfg = Config.fromstring(CONFIG, '.py')
    source = build_model(cfg, seed=0, init_weights=True)
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': source.state_dict()}, whole)
    target = PeLK(ARCH)
    loaded = load_backbone(target, str(whole))  # 'backbone.' found
    assert set(loaded) == {'state_dict'}
    for key, value in target.state_dict().items():
        assert torch.equal(value, source.backbone.state_dict()[key]), key
    # another arch with the same shapes (K = 11 and 13 with a 3x3 centre
    # both have 7x7 compact weights): only the record tells them apart
    source = build_model(cfg, {'model.backbone.pos_embed': False})
    torch.save({'state_dict': source.state_dict()}, whole)
    same_shapes = PeLK(dict(ARCH, kernel_sizes=[13, 7, 5, 3]), pos_embed=False)
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_backbone(same_shapes, str(whole))
    message = str(error.value)
    assert message.startswith(f"Checkpoint {whole}, keys under prefix "
                              "'backbone.'")
    assert 'Every tensor shape fits, but the checkpoint records' in message
    assert 'Checkpoint arch (its metadata)' in message
    assert 'kernel_sizes: checkpoint [11, 7, 5, 3], config [13, 7, 5, 3]' in (
        message)


def test_load_backbone_any_backbone_strictly(tmp_path):
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    path = tmp_path / 'seq.pth'
    torch.save(
        {
            'state_dict': {
                f'module.{k}': v
                for k, v in source.state_dict().items()
            }
        }, path)
    target = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    load_backbone(target, str(path))  # DDP's module. stripped
    assert torch.equal(target[0].weight, source[0].weight)
    deeper = nn.Sequential(*target, nn.Conv2d(4, 4, 1))
    missing = 'missing keys in source state_dict: 2.weight, 2.bias'
    with pytest.raises(RuntimeError, match=missing):
        load_backbone(deeper, str(path))
    with pytest.raises(PeLKCheckpointMismatch, match="prefix 'encoder.'"):
        load_backbone(target, str(path), prefix='encoder')
