"""PeLKLearningRateDecayOptimizerConstructor: groups, lr and wd scales, and
the backbone's own parameter groups (get_layer_depth, get_stage_depth,
no_weight_decay)."""
import copy
import os.path as osp
from functools import partial

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from pelk_mm import PeLK
from pelk_mm.mm.builder import build_model, load_config
from helpers import ROOT, TINY_ARCH

BASE_LR, BASE_WD, DECAY = 1e-3, 0.05, 0.5


class TinySegmentor(nn.Module):
    """backbone + a head, named as mm models name them."""

    def __init__(self, depths=(3, 3, 9, 3), frozen_stages=0):
        super().__init__()
        self.backbone = PeLK(
            arch=dict(
                depths=list(depths),
                channels=[8, 16, 16, 16],
                kernel_sizes=[9, 7, 7, 5],
                center_sizes=3),
            out_indices=(0, 1, 2, 3),
            frozen_stages=frozen_stages)
        self.decode_head = nn.Conv2d(16, 3, 1)


def build(model, decay_type, **paramwise):
    cfg = dict(
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        constructor='PeLKLearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(
            decay_rate=DECAY, decay_type=decay_type, **paramwise))
    return build_optim_wrapper(model, cfg).optimizer.param_groups


def group_of(groups, model):
    """{param name: its group}, checking each param is in exactly one."""
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for group in groups:
        assert len(group['params']) == len(group['param_names'])
        for p, name in zip(group['params'], group['param_names']):
            assert names[id(p)] == name and name not in found
            found[name] = group
    return found


def expected_layer_id(name, num_layers):
    """The documented layer-wise ids (mmpretrain ConvNeXt's table)."""
    if not name.startswith('backbone.'):
        return num_layers + 1
    parts = name.split('.')
    kind, index = parts[1], parts[2] if len(parts) > 2 else None
    if kind == 'downsample_layers':
        return {0: 0, 1: 2, 2: 3, 3: num_layers}[int(index)]
    if kind == 'pos_embeds':  # the depth of the stage's first block
        return {0: 1, 1: 2, 2: 3, 3: num_layers}[int(index)]
    if kind == 'stages':
        stage, block = int(index), int(parts[3])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: num_layers}[stage]
    return num_layers + 1  # output norms


def expected_stage_id(name, num_layers):
    """The documented stage-wise ids (ConvNeXt's segmentation code)."""
    parts = name.split('.')
    if parts[0] != 'backbone':
        return num_layers + 1
    if parts[1] == 'downsample_layers':
        return 0
    if parts[1] in ('stages', 'pos_embeds'):
        return int(parts[2]) + 1
    return num_layers + 1


def no_weight_decay(name, param):
    return param.ndim == 1 or name.endswith('.bias') or 'pos_embed' in name


@pytest.mark.parametrize('decay_type, depths, num_layers', [
    ('layer_wise', (3, 3, 9, 3), 6),
    ('layer_wise', (3, 3, 27, 3), 12),
    ('stage_wise', (3, 3, 9, 3), 6),
    ('stage_wise', (3, 3, 27, 3), 12),
])
def test_scales_and_weight_decay(decay_type, depths, num_layers):
    model = TinySegmentor(depths)
    groups = build(model, decay_type, num_layers=num_layers)
    found = group_of(groups, model)
    params = dict(model.named_parameters())
    assert set(found) == set(params)
    expected_id = (
        expected_layer_id if decay_type == 'layer_wise' else expected_stage_id)
    for name, group in found.items():
        scale = DECAY**(num_layers + 1 - expected_id(name, num_layers))
        assert group['lr_scale'] == pytest.approx(scale), name
        assert group['lr'] == pytest.approx(BASE_LR * scale), name
        wd = 0. if no_weight_decay(name, params[name]) else BASE_WD
        assert group['weight_decay'] == wd, name
        assert group['group_name'] == (
            f'layer_{expected_id(name, num_layers)}_'
            f'{"no_decay" if wd == 0 else "decay"}')
    # The concrete values the configs rely on (num_layers=6, stage-wise):
    # heads at the base lr, stage 3 at decay**3, the stem at decay**7.
    if decay_type == 'stage_wise' and num_layers == 6:
        assert found['decode_head.weight']['lr_scale'] == 1
        assert found['backbone.stages.3.0.gamma']['lr_scale'] == DECAY**3
        assert found['backbone.downsample_layers.0.0.weight'][
            'lr_scale'] == DECAY**7
    # Peripheral (compact 4-D) and pointwise weights decay; h does not.
    assert found['backbone.stages.0.0.peripheral_conv.weight'][
        'weight_decay'] == BASE_WD
    assert found['backbone.pos_embeds.0']['weight_decay'] == 0


def test_frozen_parameters_are_left_out():
    model = TinySegmentor(frozen_stages=1)
    found = group_of(build(model, 'layer_wise'), model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(found)
    assert set(found) | frozen == {n for n, _ in model.named_parameters()}


def test_optimizer_steps_with_the_group_lrs():
    model = TinySegmentor()
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD', lr=BASE_LR),
            constructor='PeLKLearningRateDecayOptimizerConstructor',
            paramwise_cfg=dict(decay_rate=DECAY, decay_type='stage_wise')))
    params = dict(model.named_parameters())
    with torch.no_grad():  # from zero, one SGD step is exactly -lr * grad
        for p in params.values():
            p.zero_()
            p.grad = torch.ones_like(p)
    wrapper.step()
    stem = params['backbone.downsample_layers.0.0.weight']
    head = params['decode_head.weight']
    assert torch.all(head == -torch.tensor(BASE_LR))
    assert torch.all(stem == -torch.tensor(BASE_LR * DECAY**7))


@pytest.mark.parametrize('paramwise, match', [
    (dict(decay_rate=0.9, decay_type='block_wise'), 'decay_type'),
    (dict(decay_rate=1.5, decay_type='layer_wise'), 'decay_rate'),
    (dict(decay_rate=0, decay_type='layer_wise'), r'decay_rate .*\(0, 1\]'),
    (dict(decay_rate=-0.5), 'decay_rate'),
    (dict(decay_rate=True), 'decay_rate'),
    (dict(decay_type='layer_wise'), 'decay_rate'),
    (dict(decay_rate=0.9, decay_type='layer_wise',
          num_layers=12), 'num_layers'),
    (dict(decay_rate=0.9, decay_type='stage_wise',
          num_layers=3), 'num_layers'),
    (dict(decay_rate=0.9, num_layers=0), 'num_layers must be a positive'),
    (dict(decay_rate=0.9, num_layers='6'), 'num_layers must be a positive'),
    (dict(decay_rate=0.9, custom_key={'decode_head': dict(lr_mult=10.)}),
     r"unknown keys \['custom_key'\].*'custom_keys'"),
    (dict(decay_rate=0.9, layer_decay_rate=0.9),
     r"unknown keys \['layer_decay_rate'\].*'decay_rate'"),
    (dict(decay_rate=0.9, bias_lr_mult=-1.), 'bias_lr_mult must be a number'),
    (dict(decay_rate=0.9, norm_decay_mult='0'), 'norm_decay_mult'),
    (dict(decay_rate=0.9, bypass_duplicate='yes'), 'bypass_duplicate'),
    (dict(decay_rate=0.9, custom_keys={'decode_head': 10.}), 'custom_keys'),
    (dict(decay_rate=0.9, custom_keys={'decode_head': dict(lr_mult='x')}),
     r"custom_keys\['decode_head'\].lr_mult"),
])
def test_bad_configuration(paramwise, match):
    cfg = dict(
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        constructor='PeLKLearningRateDecayOptimizerConstructor',
        paramwise_cfg=paramwise)
    with pytest.raises(ValueError, match=match):
        build_optim_wrapper(TinySegmentor(), cfg)


def test_backbone_without_layer_depth():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match='get_layer_depth'):
        build(model, 'layer_wise')


# --- the backbone owns its parameter groups ---------------------------------


def forward_order(backbone, prefix='backbone.'):
    """Backbone parameter names in the order the forward pass uses them."""
    params = dict(backbone.named_parameters())
    order = []
    for i in range(backbone.num_stages):
        order += [n for n in params if n.startswith(f'downsample_layers.{i}.')]
        order += [n for n in params if n == f'pos_embeds.{i}']
        for j in range(backbone.depths[i]):
            order += [n for n in params if n.startswith(f'stages.{i}.{j}.')]
    order += [n for n in params if n.startswith('norm')]
    assert sorted(order) == sorted(params)
    return [prefix + n for n in order]


@pytest.mark.parametrize('depths', [[3, 3, 9, 3], [3, 3, 27, 3]])
def test_layer_depth_is_convnexts_for_the_standard_archs(depths):
    """Every parameter name (and a head's) as mmpretrain ConvNeXt numbers it
    (tiny: [3, 3, 9, 3]; small / base: [3, 3, 27, 3])."""
    from mmpretrain.models import ConvNeXt
    arch = dict(depths=depths, channels=[8, 8, 8, 8])
    convnext = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3))
    pelk = PeLK(
        arch=dict(arch, kernel_sizes=[7, 7, 7, 5], center_sizes=3),
        out_indices=(0, 1, 2, 3))
    convnext_names = [f'backbone.{n}' for n, _ in convnext.named_parameters()]
    names = forward_order(pelk) + convnext_names + ['decode_head.conv.weight']
    assert 'backbone.stages.2.8.depthwise_conv.weight' in names
    for name in names:
        depth = pelk.get_layer_depth(name, 'backbone.')
        if name.startswith('backbone.pos_embeds.'):  # not in ConvNeXt
            first_block = f'backbone.stages.{name.split(".")[2]}.0.gamma'
            assert depth == pelk.get_layer_depth(first_block, 'backbone.')
        else:
            assert depth == convnext.get_layer_depth(name, 'backbone.'), name


@pytest.mark.parametrize('depths', [[2, 4, 2], [1, 2, 7, 2, 1]])
def test_layer_and_stage_depth_other_stage_counts(depths):
    """3 and 5 stages: ids in range, non-decreasing along the forward pass,
    one new layer per 3 blocks, the stem first and the heads last."""
    backbone = PeLK(
        arch=dict(
            depths=depths,
            channels=[8] * len(depths),
            kernel_sizes=[7] * len(depths),
            center_sizes=3),
        out_indices=tuple(range(len(depths))))
    num_layers = sum((d + 2) // 3 for d in depths)
    names = forward_order(backbone)
    layer = [backbone.get_layer_depth(n, 'backbone.') for n in names]
    stage = [backbone.get_stage_depth(n, 'backbone.') for n in names]
    assert {num for _, num in layer} == {num_layers + 2}
    assert {num for _, num in stage} == {len(depths) + 2}
    layer_ids = [i for i, _ in layer]
    assert layer_ids == sorted(layer_ids)
    assert layer_ids[0] == 0 and layer_ids[-1] == num_layers + 1
    assert set(layer_ids) == set(range(num_layers + 2))  # no gaps
    head = 'decode_head.conv_seg.weight'
    assert backbone.get_layer_depth(head, 'backbone.') == (num_layers + 1,
                                                           num_layers + 2)
    assert backbone.get_stage_depth(head, 'backbone.') == (len(depths) + 1,
                                                           len(depths) + 2)
    for name, (layer_id, _), (stage_id, _) in zip(names, layer, stage):
        parts = name.split('.')
        if parts[1] == 'stages':
            i, j = int(parts[2]), int(parts[3])
            assert layer_id == 1 + sum(
                (d + 2) // 3 for d in depths[:i]) + j // 3, name
            assert stage_id == i + 1
        elif parts[1] in ('pos_embeds', 'downsample_layers'):
            i = int(parts[2])
            if parts[1] == 'pos_embeds' or i > 0:
                assert layer_id == backbone.get_layer_depth(
                    f'backbone.stages.{i}.0.gamma', 'backbone.')[0], name
            assert stage_id == (i + 1 if parts[1] == 'pos_embeds' else 0), name
        else:  # output norms
            assert (layer_id, stage_id) == (num_layers + 1,
                                            len(depths) + 1), name
    if depths == [2, 4, 2]:  # spelled out
        assert sorted(set(zip(layer_ids, [n.split('.')[1]
                                          for n in names]))) == [
                                              (0, 'downsample_layers'),
                                              (1, 'pos_embeds'), (1, 'stages'),
                                              (2, 'downsample_layers'),
                                              (2, 'pos_embeds'), (2, 'stages'),
                                              (3, 'stages'),
                                              (4, 'downsample_layers'),
                                              (4, 'pos_embeds'), (4, 'stages'),
                                              (5, 'norm0'), (5, 'norm1'),
                                              (5, 'norm2')
                                          ]


def test_three_stage_constructor_groups():
    """The constructor on a 3-stage arch: scales follow the backbone's ids."""
    model = nn.Module()
    model.backbone = PeLK(
        arch=dict(
            depths=[2, 4, 2],
            channels=[8, 8, 8],
            kernel_sizes=[7, 7, 5],
            center_sizes=3),
        out_indices=(0, 1, 2))
    model.decode_head = nn.Conv2d(8, 3, 1)
    for decay_type in ('layer_wise', 'stage_wise'):
        found = group_of(build(model, decay_type), model)
        assert found['decode_head.weight']['lr_scale'] == 1
        stem = found['backbone.downsample_layers.0.0.weight']['lr_scale']
        # 4 layers (1 + 2 + 1): the stem is 5 decays below the head
        assert stem == DECAY**5
        if decay_type == 'stage_wise':
            assert found['backbone.stages.2.0.gamma']['lr_scale'] == DECAY**2
            assert found['backbone.pos_embeds.0']['lr_scale'] == DECAY**4


def test_no_weight_decay_contents():
    backbone = TinySegmentor().backbone
    names = backbone.no_weight_decay()
    params = dict(backbone.named_parameters())
    assert names <= set(params)
    assert {
        'pos_embeds.0', 'pos_embeds.3', 'stages.0.0.gamma',
        'stages.2.8.peripheral_conv.bias', 'stages.0.0.norm.weight',
        'stages.0.0.pointwise_conv1.bias', 'downsample_layers.0.0.bias',
        'downsample_layers.0.1.weight', 'downsample_layers.1.0.bias',
        'norm3.weight', 'norm0.bias'
    } <= names
    # exactly the positional embeddings and every 1-D tensor (norm weights
    # and biases, biases, layer scales); every weight matrix / kernel decays
    assert names == {n
                     for n, p in params.items()
                     if p.ndim == 1} | {f'pos_embeds.{i}'
                                        for i in range(4)}
    for decayed in ('stages.0.0.peripheral_conv.weight',
                    'stages.0.0.pointwise_conv1.weight',
                    'downsample_layers.1.1.weight',
                    'downsample_layers.0.0.weight'):
        assert decayed not in names
    # without positional embeddings / after deploy: none declared
    no_pe = PeLK(
        arch=dict(depths=[1, 1], channels=[8, 8], kernel_sizes=[7, 5]),
        pos_embed=False)
    assert not any(n.startswith('pos_embeds') for n in no_pe.no_weight_decay())
    backbone.switch_to_deploy()
    names = backbone.no_weight_decay()
    assert 'pos_embeds.0' not in names
    assert 'stages.0.0.peripheral_conv.bias' in names
    assert 'stages.0.0.peripheral_conv.weight' not in names


def test_constructor_reads_no_weight_decay():
    """The backbone's declaration decides, not a rule in the constructor."""
    model = TinySegmentor()
    declared = model.backbone.no_weight_decay()
    declared -= {'stages.0.0.norm.bias'}
    declared |= {'stages.0.0.pointwise_conv1.weight'}
    model.backbone.no_weight_decay = lambda: declared
    found = group_of(build(model, 'layer_wise'), model)
    assert found['backbone.stages.0.0.norm.bias']['weight_decay'] == BASE_WD
    assert found['backbone.stages.0.0.pointwise_conv1.weight'][
        'weight_decay'] == 0
    # modules other than the backbone: the generic 1-D / bias rule
    assert found['decode_head.bias']['weight_decay'] == 0
    assert found['decode_head.weight']['weight_decay'] == BASE_WD


def test_stage_wise_needs_get_stage_depth():
    from mmpretrain.models import ConvNeXt
    model = nn.Module()
    model.backbone = ConvNeXt(
        arch=dict(depths=[1, 1, 1, 1], channels=[8, 8, 8, 8]))
    with pytest.raises(ValueError, match='get_stage_depth'):
        build(model, 'stage_wise')
    # layer-wise works on any backbone with get_layer_depth, with the generic
    # weight-decay rule when it declares no no_weight_decay()
    found = group_of(build(model, 'layer_wise'), model)
    for name, param in model.named_parameters():
        no_decay = param.ndim == 1 or name.endswith('.bias')
        assert found[name]['weight_decay'] == (0 if no_decay else BASE_WD)


# --- the shipped configs ---------------------------------------------------

CONFIGS = osp.join(ROOT, 'configs')


def build_config_model(name):
    cfg = load_config(osp.join(CONFIGS, name))
    return cfg, build_model(cfg)


def effective_settings(optimizer, model):
    """{parameter name: the hyper-parameters the optimizer applies to it}."""
    names = {id(p): n for n, p in model.named_parameters()}
    settings = {}
    for group in optimizer.param_groups:
        hyper = {k: group[k] for k in optimizer.defaults}
        for p in group['params']:
            settings[names[id(p)]] = hyper
    return settings


@pytest.mark.slow
def test_in1k_config_same_settings_as_the_former_rule():
    """configs/_base_/pelk_in1k.py reads the no-decay rule from the backbone
    (lr decay 1): every parameter gets the lr / weight decay that mmengine's
    default constructor gave it with the rule the config used to spell out."""
    cfg, model = build_config_model('pelk_t_in1k.py')
    assert cfg.optim_wrapper.constructor == (
        'PeLKLearningRateDecayOptimizerConstructor')
    assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=1.0)
    new = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    former_cfg = copy.deepcopy(cfg.optim_wrapper)
    former_cfg.pop('constructor')
    former_cfg.paramwise_cfg = dict(
        norm_decay_mult=0.0,
        bias_decay_mult=0.0,
        flat_decay_mult=0.0,
        custom_keys={'pos_embeds': dict(decay_mult=0.0)})
    former = build_optim_wrapper(model, former_cfg).optimizer
    new_settings = effective_settings(new, model)
    assert new_settings == effective_settings(former, model)
    assert set(new_settings) == {n for n, _ in model.named_parameters()}
    wds = {n: s['weight_decay'] for n, s in new_settings.items()}
    assert wds['backbone.pos_embeds.0'] == 0 and wds['head.fc.bias'] == 0
    assert wds['backbone.stages.0.0.gamma'] == 0
    assert wds['head.fc.weight'] == 0.05
    assert wds['backbone.stages.0.0.peripheral_conv.weight'] == 0.05
    assert {s['lr'] for s in new_settings.values()} == {4e-3}


@pytest.mark.slow
@pytest.mark.parametrize('name, decay_type, rate', [
    ('upernet_pelk_t_ade20k.py', 'stage_wise', 0.9),
    ('cascade_mask_rcnn_pelk_t_fpn_3x_coco.py', 'layer_wise', 0.7),
    ('demo/upernet_pelk_demo_ade20k.py', 'stage_wise', 0.9),
])
def test_downstream_config_groups(name, decay_type, rate):
    """The T configs' groups against the documented ConvNeXt tables (mmseg's
    own ``get_*_id_for_convnext`` for every name ConvNeXt has) and the
    former weight-decay rule (1-D, ``.bias``, ``pos_embeds``). The demo's
    backbone (depths 1/1/2/1) has 4 layers; stage-wise, it keeps the
    recipe's ``num_layers=6`` spacing."""
    from mmseg.engine.optimizers.layer_decay_optimizer_constructor import (
        get_layer_id_for_convnext, get_stage_id_for_convnext)
    cfg, model = build_config_model(name)
    assert cfg.optim_wrapper.paramwise_cfg == dict(
        decay_rate=rate, decay_type=decay_type, num_layers=6)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    groups = optimizer.param_groups
    found = group_of(groups, model)
    params = dict(model.named_parameters())
    assert set(found) == set(params)
    table = (
        expected_layer_id if decay_type == 'layer_wise' else expected_stage_id)
    # mmseg's constructor passes num_layers (layer-wise), num_layers + 2
    if decay_type == 'layer_wise':
        mmseg_id = partial(get_layer_id_for_convnext, max_layer_id=6)
    else:
        mmseg_id = partial(get_stage_id_for_convnext, max_stage_id=8)
    for name, group in found.items():
        layer_id = table(name, 6)
        if 'pos_embeds' not in name:
            assert layer_id == mmseg_id(name), name
        no_decay = no_weight_decay(name, params[name])
        assert group['group_name'] == (
            f'layer_{layer_id}_{"no_decay" if no_decay else "decay"}')
        assert group['lr_scale'] == pytest.approx(rate**(7 - layer_id))
        assert group['weight_decay'] == (0 if no_decay else 0.05), name


# --- mmengine's paramwise_cfg keys, on real mmseg / mmdet models -----------

SEG_DECAY = dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6)
DET_DECAY = dict(decay_rate=0.7, decay_type='layer_wise')
TINY_CONFIGS = {
    'segmentor': (SEG_DECAY, """
_base_ = ['{root}/configs/demo/upernet_pelk_demo_ade20k.py']
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{arch}), init_cfg=None),
    decode_head=dict(in_channels={channels}, channels=16),
    auxiliary_head=dict(in_channels={channels[2]}, channels=16))
"""),
    'detector': (DET_DECAY, """
_base_ = ['{root}/configs/cascade_mask_rcnn_pelk_t_fpn_3x_coco.py']
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{arch}), init_cfg=None),
    neck=dict(in_channels={channels}))
"""),
}


@pytest.fixture(scope='module', params=sorted(TINY_CONFIGS))
def tiny_model(request, tmp_path_factory):
    """``(kind, its decay keys, a real UperNet-PeLK / Cascade Mask
    R-CNN-PeLK with a TINY_ARCH backbone)``."""
    decay, text = TINY_CONFIGS[request.param]
    path = tmp_path_factory.mktemp('cfg') / f'{request.param}.py'
    path.write_text(
        text.format(root=ROOT, arch=TINY_ARCH, channels=TINY_ARCH['channels']))
    torch.manual_seed(0)
    return request.param, decay, build_model(str(path))


def per_param(model, paramwise, constructor=True):
    """``{name: (lr, weight_decay)}`` of the optimizer built with
    ``paramwise`` by this constructor (or mmengine's default one)."""
    cfg = dict(
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        paramwise_cfg=paramwise)
    if constructor:
        cfg['constructor'] = 'PeLKLearningRateDecayOptimizerConstructor'
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for group in build_optim_wrapper(model, cfg).optimizer.param_groups:
        for param in group['params']:
            assert names[id(param)] not in found
            found[names[id(param)]] = (group['lr'], group['weight_decay'])
    return found


def mmengine_on_top(model, decay, keys):
    """The expected result: mmengine's default constructor's lr multiplier
    times the decayed lr; mmengine's weight decay where its rules set one
    (here: multipliers != 1), else the decay-only constructor's."""
    decayed = per_param(model, decay)
    mmengine = per_param(model, keys, constructor=False)
    assert set(mmengine) == set(decayed)
    return {
        name: (lr * mmengine[name][0] / BASE_LR,
               wd if mmengine[name][1] == BASE_WD else mmengine[name][1])
        for name, (lr, wd) in decayed.items()
    }


def assert_close(got, expected):
    """Same names, each ``(lr, weight_decay)`` equal to rounding."""
    assert set(got) == set(expected)
    for name, value in got.items():
        assert value == pytest.approx(expected[name]), name


CUSTOM_KEYS = {
    'head': dict(lr_mult=10., decay_mult=0.5),
    'head.conv_seg': dict(lr_mult=2., decay_mult=2.),
    'roi_head.mask_head': dict(lr_mult=2., decay_mult=2.),
    'backbone.stages.0': dict(lr_mult=0.5, decay_mult=3.),
}
MM_KEYS = dict(
    bias_lr_mult=dict(bias_lr_mult=3.),
    bias_decay_mult=dict(bias_decay_mult=0.5),
    norm_decay_mult=dict(norm_decay_mult=0.25),
    flat_decay_mult=dict(flat_decay_mult=0.75),
    custom_keys=dict(custom_keys=CUSTOM_KEYS),
    all=dict(
        bias_lr_mult=3.,
        bias_decay_mult=0.5,
        norm_decay_mult=0.25,
        flat_decay_mult=0.75,
        custom_keys={'neck': dict(lr_mult=4., decay_mult=0.5)}))


@pytest.mark.parametrize('key', sorted(MM_KEYS))
def test_mmengine_keys_on_top_of_the_decay(tiny_model, key):
    """Each key gives what mmengine gives, times the layer / stage decay
    (longest custom key first, custom keys over the other rules, norm >
    bias > flat), and changes what it names."""
    kind, decay, model = tiny_model
    got = per_param(model, dict(decay, **MM_KEYS[key]))
    assert_close(got, mmengine_on_top(model, decay, MM_KEYS[key]))
    decayed = per_param(model, decay)
    changed = {n for n in got if got[n] != pytest.approx(decayed[n])}
    assert changed, f'{key} changed nothing'
    if key == 'custom_keys':
        # the longest key wins; a backbone key multiplies the decayed lr
        head = ('decode_head.bottleneck.bn.bias'
                if kind == 'segmentor' else 'rpn_head.rpn_conv.bias')
        assert got[head][0] == pytest.approx(10 * decayed[head][0])
        assert got[head][1] == pytest.approx(0.5 * BASE_WD)
        if kind == 'segmentor':
            seg = 'decode_head.conv_seg.weight'
            assert got[seg] == pytest.approx(
                (2 * decayed[seg][0], 2 * BASE_WD))
        else:
            mask = 'roi_head.mask_head.0.conv_logits.weight'
            assert got[mask] == pytest.approx(
                (2 * decayed[mask][0], 2 * BASE_WD))
        stem = 'backbone.downsample_layers.0.0.weight'
        block = 'backbone.stages.0.0.pointwise_conv1.weight'
        assert got[stem] == decayed[stem]
        assert got[block] == pytest.approx(
            (0.5 * decayed[block][0], 3 * BASE_WD))
        assert decayed[block][0] < BASE_LR  # the decay is still there
    if key == 'norm_decay_mult':  # PeLK's LayerNorms and the heads' BNs
        assert got['backbone.stages.0.0.norm.weight'][1] == pytest.approx(
            0.25 * BASE_WD)
        assert decayed['backbone.stages.0.0.norm.weight'][1] == 0
    if key == 'bias_lr_mult':
        assert all(n.endswith('.bias') for n in changed)
        bias = 'backbone.stages.1.0.pointwise_conv2.bias'
        assert got[bias][0] == pytest.approx(3 * decayed[bias][0])


def test_custom_key_gives_the_head_10x_lr(tiny_model):
    """The issue's example: ``custom_keys={'decode_head': lr_mult=10}``
    (``'roi_head'`` for the detector). Like mmengine, a custom key also sets
    the weight decay of what it matches (``decay_mult`` 1 when not given)."""
    kind, decay, model = tiny_model
    head = 'decode_head' if kind == 'segmentor' else 'roi_head'
    got = per_param(model, dict(decay, custom_keys={head: dict(lr_mult=10.)}))
    decayed = per_param(model, decay)
    for name, (lr, wd) in got.items():
        if name.startswith(head + '.'):
            assert lr == pytest.approx(10 * decayed[name][0]), name
            assert wd == BASE_WD, name
        else:
            assert (lr, wd) == decayed[name], name


def test_dwconv_decay_mult_covers_the_peripheral_conv(tiny_model):
    """mmengine's rule sees only ``nn.Conv2d`` with ``groups ==
    in_channels``; PeLK's depthwise ``PeripheralConv2d`` is one too, and a
    bias rule still comes first."""
    _, decay, model = tiny_model
    decayed = per_param(model, decay)
    got = per_param(model, dict(decay, dwconv_decay_mult=0.5))
    both = per_param(model,
                     dict(decay, dwconv_decay_mult=0.5, bias_decay_mult=0.25))
    peripheral = [n for n in got if '.peripheral_conv.' in n]
    assert len(peripheral) == 8  # 4 blocks, weight and bias
    for name, (lr, wd) in got.items():
        assert lr == decayed[name][0]
        if name in peripheral:
            assert wd == pytest.approx(0.5 * BASE_WD), name
            assert both[name][1] == pytest.approx(
                (0.25 if name.endswith('.bias') else 0.5) * BASE_WD)
        else:
            assert wd == decayed[name][1], name


def test_dcn_offset_lr_mult(tiny_model):
    """A deformable conv (mmcv's ``DeformConv2dPack``) in the head: its
    offset layer's lr times ``dcn_offset_lr_mult``, as mmengine does."""
    from mmcv.ops import DeformConv2dPack
    kind, decay, model = tiny_model
    model = copy.deepcopy(model)
    head = model.decode_head if kind == 'segmentor' else model.rpn_head
    head.dcn = DeformConv2dPack(4, 4, 3, padding=1)
    keys = dict(dcn_offset_lr_mult=5.)
    got = per_param(model, dict(decay, **keys))
    assert_close(got, mmengine_on_top(model, decay, keys))
    decayed = per_param(model, decay)
    prefix = 'decode_head' if kind == 'segmentor' else 'rpn_head'
    changed = {n for n in got if got[n] != decayed[n]}
    assert changed == {
        f'{prefix}.dcn.conv_offset.weight', f'{prefix}.dcn.conv_offset.bias'
    }
    for name in changed:
        assert got[name][0] == pytest.approx(5 * decayed[name][0])


def test_bypass_duplicate(tiny_model):
    """A module reached under two parents: without ``bypass_duplicate`` an
    error naming the parameter and the key (mmengine's default constructor
    fails too, in torch); with it, each parameter once, as without the
    duplicate."""
    kind, decay, model = tiny_model
    decayed = per_param(model, decay)
    model = copy.deepcopy(model)
    if kind == 'segmentor':
        name = 'decode_head.conv_seg'
        model.auxiliary_head.tied = model.decode_head.conv_seg
    else:
        name = 'rpn_head.rpn_cls'
        model.roi_head.tied = model.rpn_head.rpn_cls
    with pytest.raises(
            ValueError, match=rf'parameter {name}.weight .*bypass_duplicate'):
        per_param(model, decay)
    with pytest.raises(ValueError, match='more than one parameter group'):
        per_param(model, dict(bias_lr_mult=1.), constructor=False)
    assert per_param(model, dict(decay, bypass_duplicate=True)) == decayed
