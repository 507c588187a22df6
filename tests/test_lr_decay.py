"""PeLKLearningRateDecayOptimizerConstructor: groups, lr and wd scales."""
import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, init_default_scope
from torch import nn

from pelk_mm import PeLK, PeLKLearningRateDecayOptimizerConstructor

BASE_LR, BASE_WD, DECAY = 1e-3, 0.05, 0.5


class TinySegmentor(nn.Module):
    """backbone + a head, named as mm models name them."""

    def __init__(self, depths=(1, 1, 6, 1), frozen_stages=0):
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
        paramwise_cfg=dict(decay_rate=DECAY, decay_type=decay_type,
                           **paramwise))
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
    ('layer_wise', (1, 1, 6, 1), 6),
    ('layer_wise', (1, 1, 12, 1), 12),
    ('stage_wise', (1, 1, 6, 1), 6),
    ('stage_wise', (1, 1, 12, 1), 12),
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


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet', 'mmpretrain'])
def test_registered_in_the_root_registry(scope):
    init_default_scope(scope)
    assert OPTIM_WRAPPER_CONSTRUCTORS.get(
        'PeLKLearningRateDecayOptimizerConstructor'
    ) is PeLKLearningRateDecayOptimizerConstructor


@pytest.mark.parametrize('paramwise, match', [
    (dict(decay_rate=0.9, decay_type='block_wise'), 'decay_type'),
    (dict(decay_rate=1.5, decay_type='layer_wise'), 'decay_rate'),
    (dict(decay_type='layer_wise'), 'decay_rate'),
    (dict(decay_rate=0.9, decay_type='layer_wise', num_layers=12),
     'num_layers'),
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
