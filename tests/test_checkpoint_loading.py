"""Checkpoints record PeLK's arch; a checkpoint that does not fit never loads.

Through the real mmengine paths: ``init_cfg=dict(type='Pretrained')`` with and
without ``prefix``, ``load_checkpoint``, the Runner's ``load_from`` and
``resume``, and ``tools/test.py CONFIG CKPT`` as a subprocess. The archs are
small dicts; the issue's example is a kernel-21 checkpoint loaded into a
kernel-31 PeLK.
"""
import copy
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner import load_checkpoint, save_checkpoint
from mmengine.runner.checkpoint import get_state_dict, weights_to_cpu
from torch.utils.data import Dataset

import pelk_mm  # noqa: F401  (registers PeLK, the hook, checkpoint compat)
from pelk_mm import PeLK
from pelk_mm.checkpoint import (ARCH_META_KEY, PeLKCheckpointMismatch,
                                add_arch_meta)
from pelk_mm.checkpoint.arch_record import infer_arch
from pelk_mm.engine import PeLKArchMetaHook
from pelk_mm.mm.builder import build_model, load_config
from helpers import ARCH21, ROOT, build_runner, load_tool

ARCH31 = dict(ARCH21, kernel_sizes=[31, 13, 13, 7])


class Classifier(BaseModel):
    """A PeLK under ``backbone.`` and a linear head, as mm models name them."""

    def __init__(self, arch=ARCH31, **backbone):
        super().__init__()
        self.backbone = PeLK(arch, **backbone)
        self.head = nn.Linear(arch['channels'][-1], 3)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.backbone(inputs)[-1])
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


class TinyImages(Dataset):

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(4, 3, 32, 32, generator=gen)
        self.y = torch.randint(0, 3, (4, ), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


def classifier(arch=ARCH31, seed=0, **backbone):
    torch.manual_seed(seed)
    model = Classifier(arch, **backbone)
    model.init_weights()
    return model


def save(model, path, **meta):
    """Save as the Runner does: mmengine's get_state_dict + save_checkpoint."""
    save_checkpoint(
        dict(meta=meta, state_dict=weights_to_cpu(get_state_dict(model))),
        str(path))
    return str(path)


def states(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.fixture
def ckpt21(tmp_path):
    """An mmengine classifier checkpoint of the kernel-21 arch."""
    return save(classifier(ARCH21), tmp_path / 'k21.pth')


# --------------------------------------------------------- the arch record
def test_arch_record_in_every_state_dict(tmp_path):
    model = classifier(ARCH21)
    record = model.backbone.arch_record()
    assert record == dict(
        depths=[1, 1, 1, 1],
        channels=[16, 32, 64, 128],
        kernel_sizes=[21, 13, 13, 7],
        grids=[list(g) for g in model.backbone.grids],
        conv_ratio=3 / 8,
        conv_channels=[6, 12, 24, 48],
        in_channels=3,
        stem_patch_size=4,
        pos_embed=True,
        pos_embed_mode='literal',
        deploy=False,
        deploy_mode=None)
    # torch's state_dict and mmengine's get_state_dict, bare and nested
    assert model.state_dict()._metadata['backbone'][ARCH_META_KEY] == record
    assert get_state_dict(model)._metadata['backbone'][ARCH_META_KEY] == record
    assert model.backbone.state_dict()._metadata[''][ARCH_META_KEY] == record

    # saved as the Runner saves, read back with torch's safe unpickler
    path = save(model, tmp_path / 'c.pth')
    loaded = torch.load(path, weights_only=True)
    assert loaded['state_dict']._metadata['backbone'][ARCH_META_KEY] == record

    model.backbone.switch_to_deploy()
    deployed = model.state_dict()._metadata['backbone'][ARCH_META_KEY]
    assert deployed == dict(record, deploy=True, deploy_mode='structured')


def test_add_arch_meta_and_hook(tmp_path):
    model = classifier(ARCH21)
    record = model.backbone.arch_record()
    ckpt = add_arch_meta(dict(meta=dict(epoch=3)), model)
    assert ckpt['meta'] == dict(epoch=3, pelk_arch={'backbone': record})
    assert add_arch_meta(
        {}, model.backbone,
        prefix='backbone.') == dict(meta=dict(pelk_arch={'backbone': record}))
    assert add_arch_meta({}, nn.Linear(2, 2)) == {}  # no PeLK, no record

    # the hook, in a real Runner run: the saved checkpoint has both copies
    runner = make_runner(
        tmp_path / 'run',
        classifier(ARCH21),
        custom_hooks=[dict(type='PeLKArchMetaHook')])
    runner.train()
    assert any(isinstance(h, PeLKArchMetaHook) for h in runner.hooks)
    saved = torch.load(tmp_path / 'run' / 'iter_1.pth', weights_only=False)
    assert saved['meta'][ARCH_META_KEY] == {'backbone': record}
    assert saved['state_dict']._metadata['backbone'][ARCH_META_KEY] == record


# ------------------------------------------------- kernel 21 into kernel 31
def check_message(message, keys='backbone.', source='its metadata'):
    """The issue's example: what the error must tell the user."""
    # centre 5: the compact weights of K = 21 and K = 31 are both 11 x 11
    assert ('1 shape mismatch(es), checkpoint vs model:\n'
            f'  {keys}pos_embeds.0: (6, 21, 21) vs (6, 31, 31)\n') in message
    assert f'Checkpoint arch ({source}): depths=[1, 1, 1, 1]' in message
    assert 'kernel_sizes: checkpoint [21, 13, 13, 7], config [31, 13, 13, 7]' \
        in message
    assert 'Build the backbone the checkpoint was made for' in message


@pytest.mark.parametrize('prefix', ['backbone.', 'backbone', None])
def test_pretrained_init_cfg_refuses_other_kernel(ckpt21, tmp_path, prefix):
    if prefix is None:  # a bare backbone checkpoint, Pretrained without prefix
        ckpt21 = save(classifier(ARCH21).backbone, tmp_path / 'bare.pth')
    model = Classifier(
        ARCH31,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=ckpt21, prefix=prefix))
    with pytest.raises(PeLKCheckpointMismatch) as error:
        model.init_weights()
    message = str(error.value)
    assert message.startswith(f'Pretrained {ckpt21}, keys under prefix '
                              f"{'backbone.' if prefix else ''!r}")
    check_message(message, keys='')
    assert 'grids=[[' in message  # the checkpoint's exact arch, to set


def test_load_checkpoint_refuses_and_loads_nothing(ckpt21):
    model = classifier(ARCH31)
    before = states(model)
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_checkpoint(model, ckpt21, strict=False)
    check_message(str(error.value))
    assert_unchanged(model, before)
    # torch's own load_state_dict, strict or not
    state = torch.load(ckpt21, weights_only=True)['state_dict']
    for strict in (False, True):
        with pytest.raises(PeLKCheckpointMismatch) as error:
            model.load_state_dict(state, strict=strict)
        check_message(str(error.value))
    assert_unchanged(model, before)


def make_runner(work_dir, model, **kwargs):
    """One AdamW iteration of ``model`` on :class:`TinyImages`, then a
    checkpoint."""
    return build_runner(
        work_dir,
        lambda: model,
        TinyImages(),
        max_iters=1,
        batch_size=2,
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        shuffle=False,
        checkpoint_interval=1,
        **kwargs)


@pytest.mark.parametrize('resume', [False, True])
def test_runner_load_from_and_resume_refuse(ckpt21, tmp_path, resume):
    runner = make_runner(
        tmp_path / 'run', classifier(ARCH31), load_from=ckpt21, resume=resume)
    with pytest.raises(PeLKCheckpointMismatch) as error:
        runner.train()
    check_message(str(error.value))
    assert runner.iter == 0  # refused before the first iteration
    assert not [f for f in os.listdir(tmp_path / 'run') if f.endswith('.pth')]


def test_metadata_less_checkpoint_refused_with_inferred_arch(tmp_path):
    state = classifier(ARCH21).state_dict()
    path = tmp_path / 'plain.pth'
    torch.save({'state_dict': dict(state)}, path)  # a dict: no _metadata
    assert not hasattr(torch.load(path)['state_dict'], '_metadata')
    model = Classifier(
        ARCH31,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    with pytest.raises(PeLKCheckpointMismatch) as error:
        model.init_weights()
    message = str(error.value)
    assert '\n  pos_embeds.0: (6, 21, 21) vs (6, 31, 31)\n' in message
    assert ('Checkpoint arch (inferred from its tensor shapes): '
            'depths=[1, 1, 1, 1], channels=[16, 32, 64, 128], '
            'kernel_sizes=[21, 13, 13, 7]') in message
    assert 'kernel_sizes: checkpoint [21, 13, 13, 7], config [31, 13, 13, 7]' \
        in message
    assert ('arch=dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128], '
            'kernel_sizes=[21, 13, 13, 7])') in message


@pytest.mark.slow
def test_tools_test_refuses(tmp_path):
    """``tools/test.py CONFIG CKPT`` (demo config) stops before testing."""
    from pelk_mm.demo import make_ade20k_demo
    data = make_ade20k_demo(str(tmp_path / 'ade'), 1, 1, size=(32, 32))
    cfg = load_config(
        osp.join(ROOT, 'configs', 'demo', 'upernet_pelk_demo_ade20k.py'))
    cfg.model.backbone.arch.kernel_sizes = [21, 29, 27, 13]
    cfg.model.pop('data_preprocessor')
    model = build_model(cfg)
    ckpt = save(model, tmp_path / 'k21_demo.pth')
    proc = subprocess.run([
        sys.executable, 'tools/test.py',
        'configs/demo/upernet_pelk_demo_ade20k.py', ckpt, '--work-dir',
        str(tmp_path / 'work'), '--cfg-options',
        f'test_dataloader.dataset.data_root={data}',
        'test_dataloader.num_workers=0',
        'test_dataloader.persistent_workers=False'
    ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert 'PeLKCheckpointMismatch' in proc.stderr
    assert 'backbone.pos_embeds.0: (12, 21, 21) vs (12, 31, 31)' in proc.stderr
    assert ('kernel_sizes: checkpoint [21, 29, 27, 13], config '
            '[31, 29, 27, 13]') in proc.stderr
    log = proc.stdout + proc.stderr
    assert 'Iter(test)' not in log and 'aAcc' not in log  # nothing tested


# ------------------------------------------------------------- other cases
def test_same_shapes_other_grid_refused_by_the_record(tmp_path):
    """Without positional embeddings, K = 21 and K = 31 (centre 5) have the
    same 11 x 11 compact weights: only the arch record tells them apart."""
    source = classifier(ARCH21, pos_embed=False)
    model = classifier(ARCH31, pos_embed=False, seed=1)
    assert {
        k: v.shape
        for k, v in source.state_dict().items()
    } == {
        k: v.shape
        for k, v in model.state_dict().items()
    }
    before = states(model)
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_checkpoint(model, save(source, tmp_path / 'k21.pth'))
    message = str(error.value)
    assert 'Every tensor shape fits, but the checkpoint records another ' \
        'arch' in message
    assert 'kernel_sizes: checkpoint [21, 13, 13, 7], config [31, 13, 13, 7]' \
        in message
    assert_unchanged(model, before)
    # a checkpoint without the record cannot be told apart: it loads
    torch.save({'state_dict': dict(source.state_dict())}, tmp_path / 'p.pth')
    load_checkpoint(model, str(tmp_path / 'p.pth'))
    assert torch.equal(model.backbone.stages[0][0].peripheral_conv.weight,
                       source.backbone.stages[0][0].peripheral_conv.weight)


def test_missing_key_refused(tmp_path):
    state = classifier(ARCH31).state_dict()
    del state['backbone.stages.1.0.gamma']
    path = tmp_path / 'missing.pth'
    torch.save({'state_dict': state}, path)
    model = classifier(ARCH31, seed=1)
    before = states(model)
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_checkpoint(model, str(path))
    message = str(error.value)
    assert '1 key(s) missing from the checkpoint:\n' \
        '  backbone.stages.1.0.gamma (32,)' in message
    assert 'shape mismatch' not in message and 'Differences' not in message
    assert 'The archs agree, so the file itself lacks or adds weights' \
        in message
    assert_unchanged(model, before)


def test_pos_embed_and_deploy_checkpoints_refused(tmp_path):
    no_pe = save(classifier(ARCH31, pos_embed=False), tmp_path / 'nope.pth')
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_checkpoint(classifier(ARCH31), no_pe)
    message = str(error.value)
    assert '4 key(s) missing' in message and 'backbone.pos_embeds.3' in message
    assert 'pos_embed: checkpoint False, config True' in message
    assert 'pos_embed=False' in message  # what to set

    # the reverse: positional embeddings the model does not have
    with pytest.raises(PeLKCheckpointMismatch, match='pos_embeds.0'):
        load_checkpoint(
            classifier(ARCH31, pos_embed=False),
            save(classifier(ARCH31), tmp_path / 'pe.pth'))

    deployed = classifier(ARCH31, deploy_mode='dense')
    deployed.backbone.switch_to_deploy()
    path = save(deployed, tmp_path / 'deploy.pth')
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_checkpoint(classifier(ARCH31), path)
    message = str(error.value)
    assert 'peripheral_conv.weight: (6, 1, 31, 31) vs (6, 1, 11, 11)' \
        in message
    assert 'deploy: checkpoint True, config False' in message


def test_deeper_checkpoint_refused(tmp_path):
    deeper = dict(ARCH31, depths=[1, 2, 1, 1])
    path = save(classifier(deeper), tmp_path / 'deeper.pth')
    with pytest.raises(PeLKCheckpointMismatch) as error:
        load_checkpoint(classifier(ARCH31), path)
    message = str(error.value)
    assert 'blocks, stages or positional embeddings this PeLK does not ' \
        'have:\n  backbone.stages.1.1.' in message
    assert 'depths: checkpoint [1, 2, 1, 1], config [1, 1, 1, 1]' in message


def test_matching_checkpoint_loads_heads_and_output_norms_aside(tmp_path):
    """A classifier checkpoint into a downstream backbone: the head is not the
    backbone's business, the missing output norms keep their init."""
    source = classifier(ARCH31, seed=1)
    path = save(source, tmp_path / 'cls.pth')
    backbone = PeLK(
        ARCH31,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key
    for i in range(3):
        norm = getattr(backbone, f'norm{i}')
        assert torch.equal(norm.weight, torch.ones(norm.weight.shape))
        assert torch.equal(norm.bias, torch.zeros(norm.bias.shape))

    # load_checkpoint of the whole model: extra head keys are ignored
    state = source.state_dict()
    state['head.extra'] = torch.zeros(3)
    torch.save({'state_dict': state}, tmp_path / 'extra.pth')
    model = classifier(ARCH31)
    load_checkpoint(model, str(tmp_path / 'extra.pth'))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_metadata_less_matching_checkpoint_loads(tmp_path):
    """Older checkpoints, or another codebase's: plain dicts of tensors."""
    source = classifier(ARCH31, seed=1)
    plain = {
        f'backbone.{k}': v.clone()
        for k, v in source.backbone.state_dict().items()
    }
    path = tmp_path / 'plain.pth'
    torch.save(plain, path)  # no 'state_dict', no 'meta', no _metadata
    model = Classifier(
        ARCH31,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    model.init_weights()
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    loaded = classifier(ARCH31)
    load_checkpoint(loaded, str(path))
    assert torch.equal(loaded.backbone.pos_embeds[0],
                       source.backbone.pos_embeds[0])


def test_prefix_not_in_checkpoint(ckpt21):
    model = PeLK(
        ARCH21,
        init_cfg=dict(type='Pretrained', checkpoint=ckpt21, prefix='encoder.'))
    with pytest.raises(PeLKCheckpointMismatch, match="prefix 'encoder.'"):
        model.init_weights()


def test_infer_arch():
    model = classifier(ARCH21, pos_embed=False).backbone
    assert infer_arch(model.state_dict(), model) == dict(
        depths=[1, 1, 1, 1],
        channels=[16, 32, 64, 128],
        conv_channels=[6, 12, 24, 48],
        peripheral_weight_sizes=[11, 9, 9, 7],
        pos_embed=False)


# ------------------------------------------------------------- the converter
def test_converter_records_arch_and_refuses_other_kernel(ckpt21, tmp_path):
    converter = load_tool('model_converters/cls2backbone.py')
    target = PeLK(ARCH21, out_indices=(0, 1, 2, 3))
    dst = str(tmp_path / 'backbone.pth')
    missing, unexpected = converter.convert(ckpt21, dst, target)
    assert missing == [
        f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')
    ]
    assert unexpected == ['head.weight', 'head.bias']
    written = torch.load(dst, weights_only=True)
    record = target.arch_record()
    assert written['meta'][ARCH_META_KEY] == {'backbone': record}
    assert written['state_dict']._metadata['backbone'][ARCH_META_KEY] == record
    # ... and what it wrote loads into the downstream backbone
    downstream = PeLK(
        ARCH21,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=dst, prefix='backbone.'))
    downstream.init_weights()

    bad = str(tmp_path / 'bad.pth')
    with pytest.raises(ValueError) as error:
        converter.convert(ckpt21, bad, PeLK(ARCH31, out_indices=(0, 1, 2, 3)))
    assert 'pos_embeds.0: (6, 21, 21) vs (6, 31, 31)' in str(error.value)
    assert 'kernel_sizes: checkpoint [21, 13, 13, 7], config [31, 13, 13, 7]' \
        in str(error.value)
    assert not osp.exists(bad)
    # a checkpoint converted for one arch is refused for another, naming it
    with pytest.raises(
            PeLKCheckpointMismatch, match=r'Checkpoint arch \(its metadata\)'):
        PeLK(
            ARCH31,
            out_indices=(0, 1, 2, 3),
            init_cfg=dict(
                type='Pretrained', checkpoint=dst,
                prefix='backbone.')).init_weights()


def test_copy_keeps_hook():
    """EMA and friends deep-copy the model: the copy records its arch too."""
    model = copy.deepcopy(classifier(ARCH21))
    assert ARCH_META_KEY in model.state_dict()._metadata['backbone']


def test_named_arch_suggested_by_name():
    from pelk_mm.checkpoint import check_state_dict
    with torch.device('meta'):
        tiny = PeLK('tiny').arch_record()
    model = PeLK(ARCH31)
    with pytest.raises(PeLKCheckpointMismatch) as error:
        check_state_dict(model, model.state_dict(), checkpoint_record=tiny)
    message = str(error.value)
    assert 'Every tensor shape fits, but the checkpoint records another ' \
        'arch' in message
    assert "Build the backbone the checkpoint was made for (arch='tiny')" \
        in message


# --------------------------------------------- bad inputs (docs/bad_inputs)
def test_another_archs_checkpoint_refused_naming_it(tmp_path):
    other = dict(ARCH31, channels=[16, 24, 32, 40])
    path = save(classifier(other), tmp_path / 'other.pth')
    model = PeLK(
        ARCH31,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    with pytest.raises(PeLKCheckpointMismatch) as error:
        model.init_weights()
    message = str(error.value)
    assert 'channels: checkpoint [16, 24, 32, 40], config [16, 32, 64, 128]' \
        in message
    assert (
        'Build the backbone the checkpoint was made for (arch=dict('
        'depths=[1, 1, 1, 1], channels=[16, 24, 32, 40], grids=') in message


def foreign_state_dict(network):
    """A tiny state dict with the key names of another network's
    checkpoints: SLaK (official repo), ConvNeXt (official repo, as timm's
    and SLaK's scripts save it) or mmpretrain's ConvNeXt."""
    torch.manual_seed(0)
    channels, sd = [16, 32, 64, 128], {}
    sd['downsample_layers.0.0.weight'] = torch.randn(16, 3, 4, 4)
    sd['downsample_layers.0.0.bias'] = torch.randn(16)
    for i, c in enumerate(channels):
        block = f'stages.{i}.0'
        if network == 'slak':
            for branch, k in (('LoRA1', (51, 5)), ('LoRA2', (5, 51)),
                              ('small_conv', (5, 5))):
                sd[f'{block}.dwconv.{branch}.conv.weight'] = torch.randn(
                    c, 1, *k)
                sd[f'{block}.dwconv.{branch}.bn.weight'] = torch.ones(c)
        elif network == 'convnext':
            sd[f'{block}.dwconv.weight'] = torch.randn(c, 1, 7, 7)
        else:
            sd[f'{block}.depthwise_conv.weight'] = torch.randn(c, 1, 7, 7)
        fc1, fc2 = (('pwconv1', 'pwconv2') if network != 'mmpretrain' else
                    ('pointwise_conv1', 'pointwise_conv2'))
        sd[f'{block}.norm.weight'] = torch.ones(c)
        sd[f'{block}.{fc1}.weight'] = torch.randn(4 * c, c)
        sd[f'{block}.{fc2}.weight'] = torch.randn(c, 4 * c)
        sd[f'{block}.gamma'] = torch.ones(c)
    sd['norm.weight'] = torch.ones(128)
    sd['head.weight'] = torch.randn(1000, 128)
    return sd


@pytest.mark.parametrize('network', ['slak', 'convnext', 'mmpretrain'])
def test_slak_or_convnext_checkpoint_refused_as_not_pelk(network, tmp_path):
    sd = foreign_state_dict(network)
    path = str(tmp_path / f'{network}.pth')
    torch.save(sd, path)
    model = PeLK(ARCH31, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(PeLKCheckpointMismatch) as error:
        model.init_weights()
    message = str(error.value)
    mixer = 'depthwise_conv' if network == 'mmpretrain' else 'dwconv'
    assert 'The checkpoint is not a PeLK checkpoint; nothing was loaded' \
        in message
    assert f'(first: stages.0.0.{mixer}.' in message
    assert 'PeLK loads PeLK weights only' in message
    # the converter refuses SLaK's {'model': ...} layout the same way
    torch.save({'model': sd, 'epoch': 299}, path)
    with pytest.raises(ValueError, match='not a PeLK checkpoint'):
        load_tool('model_converters/cls2backbone.py').convert(
            path, str(tmp_path / 'out.pth'),
            PeLK(ARCH31, out_indices=(0, 1, 2, 3)))
    assert not osp.exists(tmp_path / 'out.pth')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_checkpoint_loads_cast_to_float32(dtype, tmp_path):
    """Decided: it loads, each tensor cast to the model's float32 (exact)."""
    source = classifier(ARCH31, seed=1)
    state = {k: v.to(dtype) for k, v in source.state_dict().items()}
    path = str(tmp_path / 'half.pth')
    torch.save({'state_dict': state}, path)
    model = classifier(ARCH31)
    load_checkpoint(model, path)  # load_from, tools/test.py
    backbone = PeLK(
        ARCH31,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()
    for key, value in state.items():
        assert model.state_dict()[key].dtype == torch.float32
        assert torch.equal(model.state_dict()[key], value.float()), key
        if key.startswith('backbone.'):
            assert torch.equal(backbone.state_dict()[key[len('backbone.'):]],
                               value.float()), key


def test_sparse_checkpoint_into_dense_run_keeps_its_zeros_at_load(tmp_path):
    """A sparse (DynamicSparsityHook) checkpoint into a run without the hook:
    the weights, zeros included, load exactly; the masks it carries are the
    hook's business (without it, training may fill the zeros)."""
    source = classifier(ARCH31, seed=1)
    state = source.state_dict()
    weight = 'backbone.stages.0.0.peripheral_conv.weight'
    mask = torch.rand(
        state[weight].shape, generator=torch.Generator().manual_seed(0)) < 0.5
    state[weight] = state[weight] * mask
    torch.save(
        dict(state_dict=state, sparsity=dict(masks={weight: mask})),
        tmp_path / 'sparse.pth')
    model = PeLK(
        ARCH31,
        init_cfg=dict(
            type='Pretrained',
            checkpoint=str(tmp_path / 'sparse.pth'),
            prefix='backbone.'))
    model.init_weights()
    loaded = model.stages[0][0].peripheral_conv.weight
    assert torch.equal(loaded, state[weight])
    assert (loaded[~mask] == 0).all() and (loaded[mask] != 0).any()


def test_other_kernel_same_shapes_without_record_loads_with_warning(tmp_path):
    """The "loads silently and scores 0%" trap: without positional
    embeddings and without the arch record, K = 21 and K = 31 (5x5 centre)
    have the same 11x11 compact weights. pelk-mm's checkpoints carry the
    record (refused: test_same_shapes_other_grid_refused_by_the_record); one
    without it loads with a warning naming the risk."""
    source = classifier(ARCH21, pos_embed=False).backbone
    plain = {k: v.clone() for k, v in source.state_dict().items()}
    torch.save(plain, tmp_path / 'plain21.pth')  # no _metadata: no record
    model = PeLK(
        ARCH31,
        pos_embed=False,
        init_cfg=dict(
            type='Pretrained', checkpoint=str(tmp_path / 'plain21.pth')))
    with pytest.warns(UserWarning, match='has no PeLK arch record') as record:
        model.init_weights()
    assert 'K = 21 and K = 31' in str(record[0].message)


@pytest.mark.parametrize('content', ['tensor', 'list'])
def test_checkpoint_that_is_not_a_dict(content, tmp_path):
    path = str(tmp_path / 'x.pth')
    torch.save(
        torch.zeros(3) if content == 'tensor' else [torch.zeros(3)], path)
    kind = 'Tensor' if content == 'tensor' else 'list'
    with pytest.raises(TypeError, match=f'holds a {kind}, not a checkpoint'):
        PeLK(
            ARCH31, init_cfg=dict(type='Pretrained',
                                  checkpoint=path)).init_weights()


def test_whole_model_checkpoint_without_prefix_names_the_prefix(ckpt21):
    model = PeLK(ARCH21, init_cfg=dict(type='Pretrained', checkpoint=ckpt21))
    with pytest.raises(PeLKCheckpointMismatch) as error:
        model.init_weights()
    assert "Its backbone keys are under 'backbone.': set prefix='backbone.'" \
        in str(error.value)
