"""The PeLK backbone: shapes, positional embeddings, deploy, freezing,
gradient checkpointing, initialisation and argument errors.

Registration in every scope is tested in ``test_registry.py``, the layer
depths in ``test_lr_decay.py``, the paper's parameter counts in
``test_param_counts.py``."""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pelk_mm import PeLK, PeripheralConv2d, pos_embed_bias
from helpers import SMALL_ARCH


def small_pelk(**kwargs):
    kwargs.setdefault('arch', SMALL_ARCH)
    torch.manual_seed(0)
    model = PeLK(**kwargs)
    model.init_weights()
    return model


def test_multi_scale_outputs():
    model = small_pelk(out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 24), (2, 24, 8, 12),
                                              (2, 32, 4, 6), (2, 40, 2, 3)]
    assert [hasattr(model, f'norm{i}') for i in range(4)] == [True] * 4
    # negative indices as in mmpretrain; gap_before_final_norm -> (N, C)
    model = small_pelk(out_indices=(-2, -1), gap_before_final_norm=True)
    assert model.out_indices == [2, 3]
    assert [o.shape for o in model(torch.randn(2, 3, 32, 32))] == [(2, 32),
                                                                   (2, 40)]
    assert not hasattr(model, 'norm0')


def test_named_archs():
    from pelk_mm.models.arch import parse_arch  # no 100M-param build
    tiny = parse_arch('tiny')
    assert tiny['channels'] == [124, 249, 499, 998]
    assert [int(1.3 * c) for c in [96, 192, 384, 768]] == tiny['channels']
    assert [sum(g) for g in tiny['grids']] == [51, 49, 47, 13]
    assert tiny['grids'][0] == (9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9)
    base = parse_arch('base')
    assert base['channels'] == [int(1.3 * c) for c in [128, 256, 512, 1024]]
    assert base['depths'] == [3, 3, 27, 3]
    b101 = parse_arch('base-101')
    assert [sum(g) for g in b101['grids']] == [101, 69, 67, 13]
    assert b101['grids'][0][len(b101['grids'][0]) // 2 - 3:][:7] == (1, ) * 7
    grids = [(2, 1, 2), (3, 1, 3), (1, 1, 1), (1, )]
    custom = parse_arch(
        dict(depths=[1, 1, 1, 1], channels=[8] * 4, grids=grids))
    assert custom['grids'] == grids


def test_tiny_forward_small_input():
    torch.manual_seed(0)
    model = PeLK('tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 124, 16, 16), (1, 249, 8, 8),
                                              (1, 499, 4, 4), (1, 998, 2, 2)]
    assert all(torch.isfinite(o).all() for o in outs)
    convs = [b.peripheral_conv for b in model.stages[0]]
    assert convs[0].weight.shape == (46, 1, 13, 13)  # int(124 * 3 / 8) = 46


def test_pos_embed_once_per_stage():
    # layer scale 1 (not 1e-6) so that the embedding's effect on the output
    # is far above float32 round-off
    model = small_pelk(layer_scale_init_value=1.)
    keys = [k for k in model.state_dict() if 'pos_embed' in k]
    assert keys == [f'pos_embeds.{i}' for i in range(4)]
    for i, (c, k) in enumerate(
            zip(SMALL_ARCH['channels'], SMALL_ARCH['kernel_sizes'])):
        assert model.pos_embeds[i].shape == (int(c * 3 / 8), k, k)
    # trunc-normal std 0.02
    values = torch.cat([h.flatten() for h in model.pos_embeds])
    assert 0.015 < values.std() < 0.025 and values.abs().max() <= 2
    # every block of a stage is handed the stage's one embedding ...
    received = []
    hooks = [
        block.peripheral_conv.register_forward_pre_hook(
            lambda module, args, i=i: received.append((i, args[1])))
        for i, stage in enumerate(model.stages) for block in stage
    ]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    out = model(x)[0]
    for hook in hooks:
        hook.remove()
    assert [i for i, _ in received] == [
        i for i, depth in enumerate(SMALL_ARCH['depths']) for _ in range(depth)
    ]
    assert all(h is model.pos_embeds[i] for i, h in received)
    # ... so its gradient is the sum of the blocks' gradients
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0
               for h in model.pos_embeds)

    no_pe = small_pelk(pos_embed=False, layer_scale_init_value=1.)
    assert not [k for k in no_pe.state_dict() if 'pos_embed' in k]
    assert no_pe.pos_embeds is None
    no_pe.load_state_dict({
        k: v
        for k, v in model.state_dict().items() if 'pos_embed' not in k
    })
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], no_pe(x)[0])
        for h in model.pos_embeds:
            h.zero_()
        torch.testing.assert_close(model(x)[0], no_pe(x)[0])


def test_pos_embed_effect_is_exactly_the_closed_form_term():
    """Where the embedding acts, the block's token mixer: with the stage's
    embedding its output differs from the one without by exactly
    ``pos_embed_bias`` (a per-channel constant) on the convolved channels,
    and not at all on the identity channels (float64, every stage, maps
    smaller than the kernels)."""
    model = small_pelk().double()
    gen = torch.Generator().manual_seed(0)
    for i, stage in enumerate(model.stages):
        channels = SMALL_ARCH['channels'][i]
        h = model.pos_embeds[i]
        for block in stage:
            g = block.conv_channels
            x = torch.randn(
                2, channels, 5, 7, generator=gen, dtype=torch.float64)
            with torch.no_grad():
                diff = block.mix_tokens(x, h) - block.mix_tokens(x)
            conv = block.peripheral_conv
            term = pos_embed_bias(conv.weight, conv.grid, h).detach()
            assert term.abs().min() > 1e-6  # a real, non-zero effect
            torch.testing.assert_close(
                diff[:, :g],
                term.view(1, g, 1, 1).expand(2, g, 5, 7),
                rtol=1e-12,
                atol=1e-12)
            assert torch.equal(diff[:, g:], torch.zeros_like(diff[:, g:]))


@pytest.mark.parametrize('conv_ratio', [3 / 8, 0.5, 1.0])
def test_partial_conv_identity_half(conv_ratio):
    model = small_pelk(conv_ratio=conv_ratio)
    block = model.stages[1][0]
    channels = 24
    g = int(channels * conv_ratio)
    assert block.conv_channels == g
    assert block.peripheral_conv.channels == g
    x = torch.randn(2, channels, 7, 5)
    pos_embed = model.pos_embeds[1]
    mixed = block.mix_tokens(x, pos_embed)
    assert torch.equal(mixed[:, g:], x[:, g:])
    conv = block.peripheral_conv
    torch.testing.assert_close(mixed[:, :g], conv(x[:, :g], pos_embed))
    expected = F.conv2d(
        x[:, :g],
        conv.dense_weight(),
        conv.bias,
        padding=conv.kernel_size // 2,
        groups=g)
    assert not torch.allclose(mixed[:, :g], expected)  # PE adds a constant
    torch.testing.assert_close(mixed[:, :g] - expected,
                               (mixed[:, :g] -
                                expected)[:, :, :1, :1].expand_as(expected))


def test_classifier_forward_224():
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    torch.manual_seed(0)
    # a dict, not a config, trained below: built by the registry (train mode)
    classifier = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='PeLK', arch=SMALL_ARCH, drop_path_rate=0.1),
            head=dict(
                type='LinearClsHead',
                num_classes=7,
                in_channels=40,
                loss=dict(type='CrossEntropyLoss'))))
    classifier.init_weights()
    inputs = torch.randn(2, 3, 224, 224)
    logits = classifier(inputs, mode='tensor')
    assert logits.shape == (2, 7)
    samples = [DataSample().set_gt_label(i) for i in (3, 5)]
    losses = classifier(inputs, samples, mode='loss')
    losses['loss'].backward()
    assert torch.isfinite(losses['loss'])
    grads = [p.grad for p in classifier.backbone.pos_embeds]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    preds = classifier(inputs, mode='predict')
    assert len(preds) == 2 and preds[0].pred_score.shape == (7, )


def test_switch_to_deploy_equivalence():
    model = small_pelk(
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        deploy_mode='dense')
    convs = [m for m in model.modules() if isinstance(m, PeripheralConv2d)]
    with torch.no_grad():
        for conv in convs:  # non-trivial biases and masked (zeroed) weights
            conv.bias.normal_()
            conv.weight.mul_(torch.rand_like(conv.weight) > 0.4)
        for h in model.pos_embeds:
            h.normal_()
    model.eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        expected = model(x)
    dense_kernels = [c.dense_weight().detach().clone() for c in convs]
    model.switch_to_deploy()
    assert model.deploy and model.pos_embeds is None
    assert not any(isinstance(m, PeripheralConv2d) for m in model.modules())
    deployed = [b.peripheral_conv for s in model.stages for b in s]
    assert all(type(c) is nn.Conv2d for c in deployed)
    for conv, kernel in zip(deployed, dense_kernels):
        assert torch.equal(conv.weight, kernel)  # masked zeros stay zeros
    assert 'stages.0.0.peripheral_conv.weight' in model.state_dict()
    assert not [k for k in model.state_dict() if 'pos_embed' in k]
    with torch.no_grad():
        outs = model(x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.switch_to_deploy()  # idempotent: nothing changes the second time
    assert model.deploy and model.pos_embeds is None
    again = model.state_dict()
    assert list(again) == list(state)
    assert all(torch.equal(again[k], v) for k, v in state.items())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), outs))


def test_frozen_stages():
    model = small_pelk(frozen_stages=2)
    model.train()
    for i in range(4):
        frozen = i < 2
        params = list(model.downsample_layers[i].parameters()) + list(
            model.stages[i].parameters()) + [model.pos_embeds[i]]
        assert all(p.requires_grad is not frozen for p in params)
        assert model.stages[i].training is not frozen
        assert model.downsample_layers[i].training is not frozen
    assert model.norm3.weight.requires_grad
    model(torch.randn(1, 3, 32, 32))[0].square().sum().backward()
    assert model.pos_embeds[0].grad is None
    assert model.pos_embeds[2].grad is not None


def test_init_weights_and_pretrained_prefix(tmp_path):
    model = small_pelk()
    convs = [m for m in model.modules() if isinstance(m, PeripheralConv2d)]
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert 0.015 < weights.std() < 0.025  # TruncNormal std 0.02
    assert all(c.bias.abs().sum() == 0 for c in convs)

    # a classifier checkpoint: backbone weights under 'backbone.'
    torch.manual_seed(1)
    source = PeLK(SMALL_ARCH)
    ckpt = {
        'state_dict': {
            **{
                f'backbone.{k}': v
                for k, v in source.state_dict().items()
            }, 'head.fc.weight': torch.zeros(7, 40)
        }
    }
    path = tmp_path / 'classifier.pth'
    torch.save(ckpt, path)
    loaded = PeLK(
        SMALL_ARCH,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    loaded.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_with_cp_same_gradients():
    x = torch.randn(
        2,
        3,
        32,
        32,
        generator=torch.Generator().manual_seed(0),
        requires_grad=True)
    grads = []
    for with_cp in (False, True):
        model = small_pelk(with_cp=with_cp)
        model.train()
        model(x)[0].square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


@pytest.mark.parametrize('kwargs,name', [
    (dict(arch='huge'), 'arch'),
    (dict(arch=dict(depths=[1], channels=[8])), 'arch'),
    (dict(arch=dict(depths=[1, 1], channels=[8], kernel_sizes=[5, 5])),
     'arch'),
    (dict(arch=dict(depths=[1], channels=[8], kernel_sizes=[4])),
     'kernel_size'),
    (dict(arch=dict(depths=[1], channels=[8], grids=[(2, 0, 2)])), 'grid'),
    (dict(arch=dict(SMALL_ARCH, center_sizes=[3, 3, 3, 7])), 'center_size'),
    (dict(conv_ratio=0), 'conv_ratio'),
    (dict(conv_ratio=0.01), 'conv_ratio'),
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(impl='magic'), 'impl'),
])
def test_constructor_errors(kwargs, name):
    kwargs.setdefault('arch', SMALL_ARCH)
    with pytest.raises(ValueError, match=f'`{name}'):
        PeLK(**kwargs)


# ------------------------------------------------ torch core vs mm adapter
def test_core_and_mm_backbone_same_keys_and_init():
    """``pelk_mm.models.PeLK`` (torch) and ``pelk_mm.PeLK`` (mm): same
    state-dict keys and shapes, the same initial weights for the same seed
    (the core's ``init_weights`` and the default ``init_cfg``), the same
    outputs."""
    from pelk_mm.models import PeLK as CorePeLK
    assert issubclass(PeLK, CorePeLK) and PeLK is not CorePeLK
    kwargs = dict(arch=SMALL_ARCH, out_indices=(0, 3), drop_path_rate=0.1)
    torch.manual_seed(0)
    core = CorePeLK(**kwargs)
    core.init_weights()
    mm = small_pelk(**kwargs)
    assert {
        k: v.shape
        for k, v in core.state_dict().items()
    } == {
        k: v.shape
        for k, v in mm.state_dict().items()
    }
    for key, value in core.state_dict().items():
        assert torch.equal(value, mm.state_dict()[key]), key
    x = torch.randn(2, 3, 32, 32)
    for a, b in zip(core.eval()(x), mm.eval()(x)):
        assert torch.equal(a, b)
    # the mm checkpoint loads into the core strictly, and back
    core.load_state_dict(mm.state_dict())
    mm.load_state_dict(core.state_dict())


def test_core_layers_compute_what_mm_layers_compute():
    """The core's DropPath / LayerNorm2d / trunc_normal_ against mmcv's /
    mmpretrain's / mmengine's."""
    from mmcv.cnn.bricks import DropPath as MMDropPath
    from mmpretrain.models.utils import LayerNorm2d as MMLayerNorm2d

    from pelk_mm.models import DropPath, LayerNorm2d
    x = torch.randn(4, 6, 5, 7)
    ours, theirs = LayerNorm2d(6), MMLayerNorm2d(6, eps=1e-6)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    nn.init.normal_(ours.weight)
    theirs.load_state_dict(ours.state_dict())
    for fmt, inp in (('channel_first', x), ('channel_last',
                                            x.permute(0, 2, 3, 1))):
        assert torch.equal(
            ours(inp, data_format=fmt), theirs(inp, data_format=fmt))
    ours, theirs = DropPath(0.3).train(), MMDropPath(0.3).train()
    torch.manual_seed(5)
    a = ours(x)
    torch.manual_seed(5)
    assert torch.equal(a, theirs(x))
    assert (a == 0).flatten(1).all(1).any()  # some samples dropped
    assert torch.equal(ours.eval()(x), x)
    # trunc_normal_: mmengine's draws from the same generator state
    from mmengine.model.weight_init import trunc_normal_ as mm_trunc_normal_

    from pelk_mm.models.layers import trunc_normal_
    a, b = torch.empty(64, 64), torch.empty(64, 64)
    torch.manual_seed(3)
    trunc_normal_(a, std=.02)
    torch.manual_seed(3)
    mm_trunc_normal_(b, std=.02)
    assert torch.equal(a, b) and 0.015 < float(a.std()) < 0.025


def test_blocks_do_not_store_the_checked_modes():
    """``pos_embed_mode`` / ``deploy_mode`` are checked by the backbone and
    passed down; a block keeps no copy."""
    model = small_pelk(pos_embed_mode='in_image')
    block = model.stages[0][0]
    assert not hasattr(block, 'pos_embed_mode')
    assert block.peripheral_conv.pos_embed_mode == 'in_image'
    model = small_pelk(deploy=True, deploy_mode='dense')
    assert not hasattr(model.stages[0][0], 'deploy_mode')
    assert isinstance(model.stages[0][0].peripheral_conv, nn.Conv2d)


# ----------------------------------------- bad inputs, second round: configs
@pytest.mark.parametrize('kwargs,name,allowed', [
    (dict(drop_path_rate='0.1'), 'drop_path_rate', 'int or float'),
    (dict(conv_ratio='3/8'), 'conv_ratio', 'int or float'),
    (dict(frozen_stages=1.0), 'frozen_stages', 'int'),
    (dict(pos_embed='yes'), 'pos_embed', 'bool'),
    (dict(with_cp=1), 'with_cp', 'bool'),
    (dict(in_channels=3.0), 'in_channels', 'int'),
])
def test_config_values_of_the_wrong_type(kwargs, name, allowed):
    with pytest.raises(TypeError, match=f'`{name}` must be {allowed}, got'):
        PeLK(SMALL_ARCH, **kwargs)


@pytest.mark.parametrize('out_indices', ['0123', (0, 1.0), 2.0, None])
def test_out_indices_of_the_wrong_type(out_indices):
    with pytest.raises(TypeError, match='`out_indices` must be an int or'):
        PeLK(SMALL_ARCH, out_indices=out_indices)


@pytest.mark.parametrize('out_indices,stages', [((0, 0), [0, 0]),
                                                ((3, -1), [3, 3])])
def test_out_indices_duplicates(out_indices, stages):
    with pytest.raises(
            ValueError,
            match=r'`out_indices` names a stage '
            rf'twice: .* is stages {re.escape(str(stages))}'):
        PeLK(SMALL_ARCH, out_indices=out_indices)


def test_unknown_backbone_key_is_named_with_the_allowed_ones():
    with pytest.raises(TypeError) as info:
        PeLK(SMALL_ARCH, drop_path=0.1)  # drop_path_rate
    message = str(info.value)
    assert "does not take the key(s) ['drop_path']" in message
    assert 'drop_path_rate' in message and '_delete_=True' in message


@pytest.mark.parametrize('arch,key', [
    (dict(SMALL_ARCH, mlp_ratio=4), "unknown key\\(s\\) \\['mlp_ratio'\\]"),
    (dict(SMALL_ARCH, channels=[16, 24, 32]), 'channels has 3'),
    (dict(SMALL_ARCH, kernel_sizes=[11, 7, 5]), 'kernel_sizes has 3'),
    (dict(SMALL_ARCH, center_sizes=[3, 3]), 'center_sizes has 2'),
    (dict(SMALL_ARCH, depths=4), 'depths must be a non-empty list of ints'),
    (dict(SMALL_ARCH, channels=[16, 24, 32, 40.5]),
     'channels must be a non-empty list of ints'),
])
def test_arch_dict_keys_and_stage_lists(arch, key):
    with pytest.raises(ValueError, match=f'`arch` .*{key}'):
        PeLK(arch)


def test_norm_cfg_that_is_not_a_layer_norm():
    # e.g. the SyncBN of a ResNet base config merged into PeLK's dict
    with pytest.raises(
            ValueError,
            match='`norm_cfg` must build a channel '
            "LayerNorm \\(type='LN2d'\\)"):
        PeLK(SMALL_ARCH, norm_cfg=dict(type='SyncBN', requires_grad=True))


# -------------------------------------------- bad inputs, second round: data
def test_wrong_channel_count_and_rank():
    model = small_pelk()
    for shape in [(2, 1, 32, 32), (2, 4, 32, 32), (3, 32, 32)]:
        with pytest.raises(
                ValueError,
                match=r'PeLK takes images \(N, in_channels=3, H, W\), got a '
                rf'tensor of shape {re.escape(str(shape))}'):
            model(torch.randn(*shape))


def test_integer_images():
    with pytest.raises(
            TypeError, match='floating-point images, got '
            'torch.uint8'):
        small_pelk()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_empty_batch_gives_empty_outputs():
    model = small_pelk(out_indices=(0, 3)).eval()
    outs = model(torch.randn(0, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(0, 16, 16, 16), (0, 40, 2, 2)]


@pytest.mark.parametrize('layout', ['channels_last', 'transposed', 'strided'])
def test_channels_last_and_non_contiguous_inputs_give_the_same_outputs(layout):
    model = small_pelk(out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if layout == 'channels_last':
        y = x.contiguous(memory_format=torch.channels_last)
    elif layout == 'transposed':
        y = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:
        y = torch.zeros(2, 3, 64, 128)[..., ::2]
        y.copy_(x)
    assert not y.is_contiguous()
    with torch.no_grad():
        for a, b in zip(model(y), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_half_precision_on_cpu():
    """A half model on half CPU inputs: float16 outputs within float16
    round-off of the float32 model's where torch has float16 CPU convs
    (>= 2.2), else a TypeError naming the dtype and the way out."""
    from pelk_mm.models.pelk import cpu_computes
    model = small_pelk(out_indices=(0, 3)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        if not cpu_computes(torch.float16):
            with pytest.raises(
                    TypeError,
                    match='no torch.float16 '
                    'convolution on CPU: run the model in float32'):
                model.half()(x.half())
            return
        outs = model.half()(x.half())
    for out, r in zip(outs, ref):
        assert out.dtype == torch.float16
        torch.testing.assert_close(out.float(), r, rtol=2e-2, atol=2e-2)
