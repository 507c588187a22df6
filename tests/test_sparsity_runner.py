"""DynamicSparsityHook on a small real PeLK, through the real mmengine Runner.

The model is a real :class:`pelk_mm.PeLK` (peripheral convolutions with
sharing grids, positional embeddings, partial conv) of a small dict arch under
a linear head. Checked: prune / regrow keeps every layer's density exact,
masks really change at every update (peripheral weights included), pruned
weights and AdamW moments are exactly zero after every iteration; the density
log lines per layer group; ``mode='auto'`` picks ``fixed`` on a sparse
checkpoint (``load_from`` and ``Pretrained``) and ``dynamic`` on dense
weights, and keeps its decision on ``--resume``; ``mode='fixed'`` on dense
weights stops with a message that says what to do.
"""
import glob
import os.path as osp
import re

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader
from torch import nn
from torch.utils.data import Dataset

import pelk_mm  # noqa: F401  (registers the hook)
from pelk_mm import PeLK
from pelk_mm.sparsity import select_parameters
from helpers import check_records, make_sparsity_runner

pytestmark = pytest.mark.slow

ARCH = dict(
    depths=[1, 1, 2, 1],
    channels=[16, 24, 32, 40],
    kernel_sizes=[13, 11, 9, 7],
    center_sizes=3)
# The prune rate decays over 1000 steps: about 0.5 during the 10-step runs.
HOOK_CFG = dict(
    mode='dynamic',
    sparsity=0.4,
    init='snip',
    growth='random',
    update_interval=2,
    prune_rate=0.5,
    decay_steps=1000)


class Images(Dataset):
    """40 fixed random 3x32x32 images, 4 classes."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 3, 32, 32, generator=gen)
        self.y = torch.randint(0, 4, (40, ), generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class PeLKClassifier(BaseModel):
    """``backbone.*`` = a real PeLK, ``head.*`` = a linear classifier."""

    def __init__(self, backbone_init_cfg=None, frozen_stages=0):
        super().__init__()
        kwargs = {} if backbone_init_cfg is None else dict(
            init_cfg=backbone_init_cfg)
        self.backbone = PeLK(
            arch=ARCH,
            layer_scale_init_value=1.0,
            frozen_stages=frozen_stages,
            **kwargs)
        self.head = nn.Linear(40, 4)

    def forward(self, inputs, labels, mode='tensor'):
        logits = self.head(self.backbone(inputs)[-1])
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


def make_runner(work_dir,
                name,
                max_iters,
                hook_cfg,
                backbone_init_cfg=None,
                **kwargs):
    """The PeLK classifier on :class:`Images` under the hook."""
    return make_sparsity_runner(work_dir, name, max_iters, hook_cfg,
                                lambda: PeLKClassifier(backbone_init_cfg),
                                Images(), **kwargs)


def log_text(runner):
    [path] = glob.glob(osp.join(runner.log_dir, '*.log'))
    with open(path) as f:
        return f.read()


def logged_densities(text):
    """``[(when, {group: density}, total)]`` from the hook's density lines."""
    lines = re.findall(
        r'DynamicSparsityHook density \((\w+), optimizer step (\d+)\): '
        r'(.*); total ([0-9.]+)', text)
    return [(mode, int(step), {
        g: float(d)
        for g, d in (part.rsplit(' ', 1) for part in groups.split(', '))
    }, float(total)) for mode, step, groups, total in lines]


@pytest.fixture(scope='module')
def dynamic_run(tmp_path_factory):
    """10 iterations of 40 % dynamic sparsity, an update every 2 steps."""
    work_dir = tmp_path_factory.mktemp('dynamic')
    runner, hook, checker = make_runner(
        work_dir, 'dynamic', 10, HOOK_CFG, checkpoint_interval=5)
    runner.train()
    return work_dir, runner, hook, checker


def test_prune_regrow_exact_on_real_pelk(dynamic_run):
    _, runner, hook, checker = dynamic_run
    # Weights and AdamW moments zero where pruned after every iteration;
    # per-layer counts constant; masks change exactly at update steps.
    counts = check_records(checker.records, HOOK_CFG)
    masks = hook.masks.masks
    covered = select_parameters(runner.model)
    assert list(masks) == list(covered)
    names = set(masks)
    # Real PeLK weights are covered: stem, downsample, compact peripheral
    # weights (C, 1, k', k'), pointwise layers, the head; the positional
    # embeddings, norms, biases and layer scales are not.
    assert 'backbone.downsample_layers.0.0.weight' in names
    assert 'backbone.downsample_layers.3.1.weight' in names
    peripheral = 'backbone.stages.2.1.peripheral_conv.weight'
    assert masks[peripheral].shape == covered[peripheral].shape
    assert covered[peripheral].shape[1] == 1 and covered[peripheral].shape[
        2] < 9  # compact: fewer taps than the 9x9 kernel
    assert 'backbone.stages.0.0.pointwise_conv1.weight' in names
    assert 'head.weight' in names
    assert not [n for n in names if 'pos_embeds' in n or 'gamma' in n]
    total = sum(m.numel() for m in masks.values())
    assert sum(counts.values()) == round(0.6 * total)
    assert hook.masks.density == round(0.6 * total) / total
    # Every update moved weights, in the peripheral convs too.
    records = checker.records
    update_iters = [
        i for i, r in enumerate(records) if r['hook_step'] % 2 == 0
    ]
    assert len(update_iters) == 5
    for i in update_iters:
        before = records[i - 1]['masks'] if i else None
        if before is None:
            continue
        assert not torch.equal(
            before[peripheral],
            records[i]['masks'][peripheral]), records[i]['iter']
    # The final weights: non-zero only where active (the last update, at the
    # last step, regrew weights that are still zero).
    params = dict(runner.model.named_parameters())
    for name, mask in masks.items():
        assert not (params[name].detach()[~mask] != 0).any(), name


def test_density_logged_per_group_at_start_and_every_update(dynamic_run):
    _, runner, hook, _ = dynamic_run
    lines = logged_densities(log_text(runner))
    assert [(mode, step) for mode, step, _, _ in lines
            ] == [('dynamic', s) for s in (0, 2, 4, 6, 8, 10)]
    groups = lines[-1][2]
    assert list(groups) == [
        'stem', 'downsample', 'stage0.peripheral_conv',
        'stage0.pointwise_conv', 'stage1.peripheral_conv',
        'stage1.pointwise_conv', 'stage2.peripheral_conv',
        'stage2.pointwise_conv', 'stage3.peripheral_conv',
        'stage3.pointwise_conv', 'head'
    ]
    # The last line is what the masks hold (recomputed here by name).
    expected = {}
    for name, mask in hook.masks.masks.items():
        match = re.search(r'stages\.(\d)\.\d\.(\w+?)\d?\.weight', name)
        group = (f'stage{match[1]}.{match[2]}'
                 if match else 'stem' if 'downsample_layers.0.' in name else
                 'downsample' if 'downsample_layers' in name else 'head')
        active, numel = expected.get(group, (0, 0))
        expected[group] = (active + int(mask.sum()), numel + mask.numel())
    assert groups == {
        g: pytest.approx(a / n, abs=5e-5)
        for g, (a, n) in expected.items()
    }
    assert lines[-1][3] == pytest.approx(hook.masks.density, abs=5e-5)


def test_auto_picks_dynamic_on_dense_weights(tmp_path):
    cfg = dict(HOOK_CFG, mode='auto', update_interval=3)
    runner, hook, checker = make_runner(tmp_path, 'auto_dense', 6, cfg)
    runner.train()
    check_records(checker.records, cfg)
    assert hook.active_mode == 'dynamic'
    total = sum(m.numel() for m in hook.masks.masks.values())
    assert hook.masks.density == round(0.6 * total) / total
    text = log_text(runner)
    assert ("mode='auto' -> 'dynamic': only 0.00% of the covered weights are "
            'exact zeros (min_zero_fraction=0.1)') in text
    assert 'dynamic sparsity 0.4' in text


def test_auto_picks_fixed_on_a_sparse_checkpoint_load_from(
        dynamic_run, tmp_path):
    work_dir = dynamic_run[0]
    path = str(work_dir / 'iter_5.pth')  # one step after an update
    source = CheckpointLoader.load_checkpoint(path)['state_dict']
    cfg = dict(HOOK_CFG, mode='auto')
    runner, hook, checker = make_runner(
        tmp_path, 'auto_sparse', 6, cfg, load_from=path)
    runner.train()
    assert hook.active_mode == 'fixed'
    assert not [leak for r in checker.records for leak in r['leaks']]
    # The loaded zero pattern is kept, unchanged, while the weights train.
    params = dict(runner.model.named_parameters())
    for name, mask in hook.masks.masks.items():
        assert torch.equal(mask, source[name] != 0), name
        assert torch.equal(params[name].detach() != 0, mask), name
    assert all(
        torch.equal(r['masks'][n], hook.masks.masks[n])
        for r in checker.records for n in hook.masks.masks)
    text = log_text(runner)
    assert re.search(
        r"mode='auto' -> 'fixed': 40\.\d\d% of the covered weights are exact "
        r'zeros \(min_zero_fraction=0\.1\), so the loaded weights are sparse '
        'and their zero pattern is kept', text)


def test_auto_picks_fixed_on_a_sparse_pretrained_backbone(
        dynamic_run, tmp_path):
    """As the downstream configs load it: ``init_cfg=Pretrained``."""
    source = CheckpointLoader.load_checkpoint(
        str(dynamic_run[0] / 'iter_5.pth'))['state_dict']
    backbone = {k: v for k, v in source.items() if k.startswith('backbone.')}
    path = str(tmp_path / 'backbone.pth')
    torch.save(dict(state_dict=backbone), path)
    cfg = dict(HOOK_CFG, mode='auto')
    runner, hook, _ = make_runner(
        tmp_path,
        'pretrained',
        2,
        cfg,
        backbone_init_cfg=dict(
            type='Pretrained', checkpoint=path, prefix='backbone.'))
    runner.train()
    assert hook.active_mode == 'fixed'
    masks = hook.masks.masks
    for name, value in backbone.items():
        if name in masks:
            assert torch.equal(masks[name], value != 0), name
    assert masks['head.weight'].all()  # the new head is dense, and kept so


def test_fixed_on_dense_weights_stops_with_what_to_do(tmp_path):
    runner, _, _ = make_runner(tmp_path, 'fixed_dense', 2, dict(mode='fixed'))
    with pytest.raises(ValueError) as info:
        runner.train()
    message = str(info.value)
    assert "DynamicSparsityHook(mode='fixed')" in message
    assert 'nothing sparse to keep' in message
    assert 'Load a sparse checkpoint' in message
    assert "mode='dynamic'" in message and "mode='auto'" in message


def test_auto_decision_survives_resume(tmp_path):
    """Resumed weights are 40 % zeros, yet the run stays dynamic."""
    cfg = dict(HOOK_CFG, mode='auto', update_interval=2)
    full, full_hook, _ = make_runner(
        tmp_path, 'full', 8, cfg, checkpoint_interval=4)
    full.train()
    ckpt = CheckpointLoader.load_checkpoint(str(tmp_path / 'iter_4.pth'))
    assert ckpt['sparsity']['mode'] == 'dynamic'
    resumed, hook, checker = make_runner(
        tmp_path / 'resumed',
        'resumed',
        8,
        cfg,
        resume=True,
        load_from=str(tmp_path / 'iter_4.pth'))
    resumed.train()
    check_records(checker.records, cfg)
    assert hook.active_mode == 'dynamic'
    assert hook.step == 8
    for name, mask in full_hook.masks.masks.items():
        assert torch.equal(hook.masks.masks[name], mask), name
    name = 'backbone.stages.0.0.peripheral_conv.weight'
    assert not torch.equal(checker.records[0]['masks'][name],
                           hook.masks.masks[name])  # updated after resume


def test_frozen_stages_stay_dense(tmp_path):
    """``frozen_stages=1`` with dynamic sparsity: the stem and stage 0 are
    not masked and keep dense weights (no exact zero; they never step); every
    trainable weight of the other stages and the head is masked, exactly."""
    runner, hook, checker = make_sparsity_runner(
        tmp_path, 'frozen', 4, HOOK_CFG,
        lambda: PeLKClassifier(frozen_stages=1), Images())
    runner.train()
    check_records(checker.records, HOOK_CFG)
    frozen = {
        n: p
        for n, p in runner.model.named_parameters() if not p.requires_grad
    }
    assert 'backbone.stages.0.0.peripheral_conv.weight' in frozen
    assert 'backbone.downsample_layers.0.0.weight' in frozen
    assert not set(frozen) & set(hook.masks.masks)
    assert set(hook.masks.masks) == set(select_parameters(runner.model))
    assert 'backbone.stages.1.0.peripheral_conv.weight' in hook.masks.masks
    state = runner.optim_wrapper.optimizer.state
    for name, param in frozen.items():
        if param.dim() in (2, 4):
            assert bool((param != 0).all()), name
        assert param not in state, name
