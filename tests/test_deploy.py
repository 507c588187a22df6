"""Deploy form: ``PeLK(deploy=True)`` is what ``switch_to_deploy()`` leaves
(structured by default, dense on request), deployed checkpoints load through
``init_cfg`` and only into the form they were made for, and
``tools/model_converters/pelk_deploy.py`` folds whole segmentor / detector
checkpoints after checking their outputs."""
import os.path as osp

import pytest
import torch

from pelk_mm import PeLK, PeripheralConv2d
from pelk_mm.checkpoint import (ARCH_META_KEY, PeLKCheckpointMismatch,
                                load_strictly)
from pelk_mm.mm.builder import build_model
from pelk_mm.models.pelk import PeLKBlock
from pelk_mm.ops.boxsum_conv import BoxSumPeripheralConv2d
from helpers import ROOT, SMALL_ARCH, load_tool

_OUTPUTS = load_tool('deployment/output_comparison.py')
compare_outputs, tensor_outputs = (_OUTPUTS.compare_outputs,
                                   _OUTPUTS.tensor_outputs)

KWARGS = dict(
    arch=SMALL_ARCH, out_indices=(0, 1, 2, 3), gap_before_final_norm=False)


def randomize(model):
    """Non-trivial biases, masked (zero) weights and positional embeddings."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in model.modules():
            if isinstance(conv, PeripheralConv2d):
                conv.bias.normal_(generator=gen)
                conv.weight.mul_(
                    torch.rand(conv.weight.shape, generator=gen) > 0.4)
        for pelk in model.modules():
            if isinstance(pelk, PeLK) and pelk.pos_embeds is not None:
                for h in pelk.pos_embeds:
                    h.normal_(generator=gen)
    return model


def trained_like(**kwargs):
    torch.manual_seed(0)
    model = PeLK(**kwargs)
    model.init_weights()
    return randomize(model).eval()


def structure(model):
    return [(name, type(m)) for name, m in model.named_modules()]


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize('deploy_mode', ['structured', 'dense'])
@pytest.mark.parametrize('pos_embed', [True, False])
def test_deploy_constructor_is_switch_to_deploy(pos_embed, deploy_mode):
    source = trained_like(
        pos_embed=pos_embed, deploy_mode=deploy_mode, **KWARGS)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        expected = source(x)
    compact = tuple(source.stages[0][0].peripheral_conv.weight.shape)
    source.switch_to_deploy()

    built = PeLK(
        deploy=True, pos_embed=pos_embed, deploy_mode=deploy_mode,
        **KWARGS).eval()
    assert built.deploy and built.pos_embeds is None
    assert structure(built) == structure(source)
    assert shapes(built) == shapes(source)
    mixer = {'structured': BoxSumPeripheralConv2d, 'dense': torch.nn.Conv2d}
    assert type(built.stages[0][0].peripheral_conv) is mixer[deploy_mode]
    assert shapes(built)['stages.0.0.peripheral_conv.weight'] == ((
        6, 1, 13, 13) if deploy_mode == 'dense' else compact)
    assert not any(isinstance(m, PeripheralConv2d) for m in built.modules())
    built.load_state_dict(source.state_dict(), strict=True)
    with torch.no_grad():
        outs = built(x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    built.switch_to_deploy()  # already deployed: nothing to do
    assert shapes(built) == shapes(source)


def test_default_deploy_form_is_structured():
    model = trained_like(**KWARGS)
    assert model.deploy_mode == 'structured'
    model.switch_to_deploy()
    assert all(
        type(block.peripheral_conv) is BoxSumPeripheralConv2d
        for stage in model.stages for block in stage)
    record = model.state_dict()._metadata[''][ARCH_META_KEY]
    assert record['deploy'] and record['deploy_mode'] == 'structured'


def test_deploy_mode_is_validated():
    with pytest.raises(ValueError) as error:
        PeLK(deploy_mode='sparse', **KWARGS)
    message = str(error.value)
    assert '`deploy_mode`' in message and "'structured'" in message \
        and "'dense'" in message and "'sparse'" in message


# a grid of ones: the compact weights have the dense kernel's shape, so only
# the arch record tells the two forms apart
ONES = dict(
    depths=[1, 1], channels=[16, 16], kernel_sizes=[5, 3], center_sizes=[5, 3])


@pytest.mark.parametrize('arch', [SMALL_ARCH, ONES])
@pytest.mark.parametrize('saved,loaded', [('structured', 'dense'),
                                          ('dense', 'structured')])
def test_deploy_forms_do_not_cross_load(arch, saved, loaded):
    source = trained_like(arch=arch, deploy_mode=saved)
    source.switch_to_deploy()
    state_dict = source.state_dict()
    target = PeLK(arch=arch, deploy=True, deploy_mode=loaded)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(PeLKCheckpointMismatch) as error:
        target.load_state_dict(state_dict)
    message = str(error.value)
    assert f"deploy_mode: checkpoint '{saved}', config '{loaded}'" in message
    assert f"deploy_mode='{saved}'" in message  # what to set
    assert all(
        torch.equal(target.state_dict()[k], v)
        for k, v in before.items())  # nothing copied
    same = PeLK(arch=arch, deploy=True, deploy_mode=saved)
    same.load_state_dict(state_dict)  # the right form loads


def test_deploy_frozen_stages_and_train_mode():
    model = PeLK(deploy=True, frozen_stages=2, **KWARGS)
    model.train()
    assert not model.stages[0].training and model.stages[2].training
    assert not any(p.requires_grad for p in model.stages[1].parameters())
    model(torch.randn(1, 3, 32, 32))[3].sum().backward()


def test_deployed_backbone_loads_through_init_cfg(tmp_path):
    source = trained_like(**KWARGS)
    source.switch_to_deploy()
    path = str(tmp_path / 'deployed.pth')
    torch.save(
        {
            'state_dict': {
                f'backbone.{k}': v
                for k, v in source.state_dict().items()
            }
        }, path)
    model = PeLK(
        deploy=True,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'),
        **KWARGS)
    model.init_weights()
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_load_strictly_refuses_missing_and_unexpected_keys(tmp_path):
    """The deploy tools' loader wants every key of the model and no other,
    also where PeLK's own check lets a checkpoint through (a missing output
    norm, a key outside the backbone's units)."""
    state = trained_like(**KWARGS).state_dict()
    path = str(tmp_path / 'whole.pth')
    torch.save({'state_dict': state}, path)
    model = PeLK(**KWARGS)
    load_strictly(model, path)
    for name, value in state.items():
        assert torch.equal(model.state_dict()[name], value), name
    without_norm = {k: v for k, v in state.items() if k != 'norm3.weight'}
    extra = dict(state, **{'head.fc.weight': torch.zeros(2, 2)})
    for name, bad, key in [('missing', without_norm, 'norm3.weight'),
                           ('extra', extra, 'head.fc.weight')]:
        torch.save({'state_dict': bad}, str(tmp_path / f'{name}.pth'))
        with pytest.raises(RuntimeError, match=key.replace('.', r'\.')):
            load_strictly(PeLK(**KWARGS), str(tmp_path / f'{name}.pth'))


def test_switch_to_deploy_refuses_in_image_pos_embed():
    model = trained_like(**KWARGS)
    model.pos_embed_mode = 'in_image'
    with pytest.raises(ValueError, match="pos_embed_mode='in_image'"):
        model.switch_to_deploy()
    assert not model.deploy and model.pos_embeds is not None  # untouched
    assert isinstance(model.stages[0][0].peripheral_conv, PeripheralConv2d)


def test_deploy_constructor_refuses_in_image_pos_embed():
    with pytest.raises(ValueError, match='pos_embed_mode'):
        PeLK(deploy=True, pos_embed_mode='in_image', **KWARGS)


SEG_CONFIG = """
_base_ = ['{root}/configs/demo/upernet_pelk_demo_ade20k.py']
model = dict(backbone=dict(init_cfg=None))
"""
DET_CONFIG = """
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True, type='PeLK',
        arch=dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128],
                  kernel_sizes=[31, 29, 27, 13]),
        out_indices=(1, 2, 3), gap_before_final_norm=False),
    neck=dict(in_channels=[32, 64, 128]))
"""


def save_trained_like(config, path):
    """A checkpoint as training writes one: whole model, sparse, PE != 0."""
    torch.manual_seed(0)
    model = build_model(config)
    model.init_weights()
    randomize(model)
    torch.save({'state_dict': model.state_dict(), 'meta': {'iter': 2}}, path)
    return model


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['segmentor', 'detector'])
def test_pelk_deploy_tool_whole_checkpoint(kind, tmp_path):
    tool = load_tool('model_converters/pelk_deploy.py')
    config = tmp_path / f'{kind}.py'
    config.write_text(
        (SEG_CONFIG if kind == 'segmentor' else DET_CONFIG).format(root=ROOT))
    src, dst = str(tmp_path / 'trained.pth'), str(tmp_path / 'deployed.pth')
    source = save_trained_like(str(config), src)
    tool.main([str(config), src, dst, '--shape', '64', '64'])

    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['deploy'] is True and ckpt['meta']['iter'] == 2
    assert ckpt['meta']['deploy_mode'] == 'structured'  # the default
    assert ckpt['meta']['pelk_arch']['backbone']['deploy_mode'] == \
        'structured'
    assert not [k for k in ckpt['state_dict'] if 'pos_embeds' in k]
    assert ckpt['meta']['deploy_check']['max_rel_error'] <= 1e-4
    # The deploy form built from the config (an ordinary override) loads it
    # strictly and computes what the trained model computes.
    deployed = build_model(str(config), {'model.backbone.deploy': True})
    load_strictly(deployed, dst)
    x = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, rel = compare_outputs(
            tensor_outputs(deployed, x), tensor_outputs(source, x))
    assert rel <= 1e-4


@pytest.mark.slow
def test_pelk_deploy_tool_refuses_a_wrong_fold(tmp_path, monkeypatch, capsys):
    """The output check gates the write: a fold that forgets the positional
    embedding is caught and nothing is written."""
    tool = load_tool('model_converters/pelk_deploy.py')
    config = tmp_path / 'segmentor.py'
    config.write_text(SEG_CONFIG.format(root=ROOT))
    src, dst = str(tmp_path / 'trained.pth'), str(tmp_path / 'deployed.pth')
    save_trained_like(str(config), src)
    fold = PeLKBlock.switch_to_deploy
    monkeypatch.setattr(
        PeLKBlock,
        'switch_to_deploy',
        lambda self, pos_embed=None, deploy_mode='structured': fold(
            self, None, deploy_mode))
    with pytest.raises(SystemExit) as exc:
        tool.main([str(config), src, dst, '--shape', '64', '64'])
    assert exc.value.code == 1
    assert 'deployed outputs differ' in capsys.readouterr().err
    assert not osp.exists(dst)


@pytest.mark.slow
def test_pelk_deploy_tool_refuses_a_deploy_config(tmp_path, capsys):
    tool = load_tool('model_converters/pelk_deploy.py')
    config = tmp_path / 'segmentor.py'
    config.write_text(SEG_CONFIG.format(root=ROOT))
    src = str(tmp_path / 'trained.pth')
    save_trained_like(str(config), src)
    with pytest.raises(SystemExit, match='1'):
        tool.main([
            str(config), src,
            str(tmp_path / 'out.pth'), '--cfg-options',
            'model.backbone.deploy=True'
        ])
    assert 'already deploy=True' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'out.pth')
