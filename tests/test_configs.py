"""Every shipped config builds its full model, optimizer and hooks."""
import glob
import os.path as osp

import pytest
from mmengine.optim import build_optim_wrapper
from mmengine.registry import HOOKS

from pelk_mm import PeLK, PeLKLearningRateDecayOptimizerConstructor
from pelk_mm.mm.builder import build_model, load_config
from helpers import ROOT

CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(
        osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
# The shared pieces under configs/_base_/ are built too: each holds a complete
# model (PeLK-T); configs/_base_/models/ hold only the model.

PAPER = {  # arch, kernel sizes of the named configs
    't': ('tiny', [51, 49, 47, 13]),
    's': ('small', [51, 49, 47, 13]),
    'b': ('base', [51, 49, 47, 13]),
    'b101': ('base-101', [101, 69, 67, 13]),
}


def test_every_config_is_listed():
    names = {osp.basename(p) for p in CONFIGS}
    for size in PAPER:
        for name in (f'upernet_pelk_{size}_ade20k.py',
                     f'upernet_pelk_{size}_ade20k_160k.py',
                     f'cascade_mask_rcnn_pelk_{size}_fpn_3x_coco.py',
                     f'pelk_{size}_in1k.py'):
            assert name in names


def _size_of(path):
    name = osp.basename(path)
    for size in ('b101', 't', 's', 'b'):
        if f'_{size}_' in name:
            return size
    return None


@pytest.mark.slow
@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds(path):
    cfg = load_config(osp.join(ROOT, path))
    assert 'pelk_mm' in cfg.custom_imports['imports']
    scope = cfg.get('default_scope', cfg.model.get('_scope_'))
    model = build_model(cfg)
    backbone = model.backbone
    assert isinstance(backbone, PeLK)

    size = _size_of(path)
    if size is not None and '/_base_/' not in path:
        arch, kernel_sizes = PAPER[size]
        reference = PeLK.arch_settings[arch]
        assert backbone.kernel_sizes == kernel_sizes
        assert backbone.depths == reference['depths']
        assert backbone.channels == reference['channels']

    # heads and necks take the backbone's channels
    if scope == 'mmseg':
        assert list(model.decode_head.in_channels) == backbone.channels
        assert model.auxiliary_head.in_channels == backbone.channels[2]
        assert backbone.out_indices == [0, 1, 2, 3]
    elif scope == 'mmdet':
        assert list(model.neck.in_channels) == backbone.channels
        assert backbone.out_indices == [0, 1, 2, 3]
    else:
        assert model.head.fc.in_features == backbone.channels[-1]
        assert backbone.gap_before_final_norm

    if '/_base_/models/' in path:
        return
    # downstream: sparse ImageNet backbone loaded; the hook decides from it
    # ('auto': its zeros kept, or dynamic sparsity when trained from scratch)
    hooks = [HOOKS.build(dict(h)) for h in cfg.get('custom_hooks', [])]
    modes = [
        h.mode for h in hooks if type(h).__name__ == 'DynamicSparsityHook'
    ]
    # every checkpoint a training run writes records the arch in its meta
    assert 'PeLKArchMetaHook' in [type(h).__name__ for h in hooks]
    if scope == 'mmpretrain':
        assert modes == ['dynamic']
    else:
        assert modes == ['auto']
        if size is not None and '/_base_/' not in path:
            init_cfg = cfg.model.backbone.init_cfg
            assert init_cfg.type == 'Pretrained'
            assert init_cfg.prefix == 'backbone.'
            assert init_cfg.checkpoint == (
                f'checkpoints/pelk_{size}_in1k_backbone.pth')

    # the optimizer (and for the decay constructor, its num_layers check)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    if cfg.optim_wrapper.get('constructor') == (
            PeLKLearningRateDecayOptimizerConstructor.__name__):
        scales = {g['lr_scale'] for g in wrapper.optimizer.param_groups}
        if cfg.optim_wrapper.paramwise_cfg.decay_rate == 1:
            # ImageNet: the constructor only for PeLK's no-weight-decay set
            assert scales == {1.0}
            assert {g['weight_decay']
                    for g in wrapper.optimizer.param_groups
                    } == {0.0, cfg.optim_wrapper.optimizer.weight_decay}
        else:
            assert max(scales) == 1 and len(scales) > 2


@pytest.mark.parametrize('name,codebase,outputs,dynamic', [
    ('segmentation_onnxruntime_static', 'mmseg', ['output'], False),
    ('detection_onnxruntime_dynamic', 'mmdet', ['dets', 'labels', 'masks'
                                                ], True),
])
def test_mmdeploy_deploy_configs(name, codebase, outputs, dynamic):
    """The deploy configs of tools/deployment/mmdeploy/ load (mmengine, as
    mmdeploy loads them) with their shared ONNX settings: opset 17 as
    pytorch2onnx.py, onnxruntime, and their own outputs."""
    from mmengine.config import Config
    cfg = Config.fromfile(
        osp.join(ROOT, 'tools', 'deployment', 'mmdeploy', f'{name}.py'))
    onnx = cfg.onnx_config
    assert (onnx.type, onnx.opset_version, onnx.input_names,
            onnx.output_names) == ('onnx', 17, ['input'], outputs)
    assert ('dynamic_axes' in onnx) == dynamic
    assert cfg.backend_config.type == 'onnxruntime'
    assert cfg.codebase_config.type == codebase
