"""DynamicSparsityHook driven by the real mmengine Runner on a tiny model.

Every test checks, after every iteration, that each pruned weight and its
optimizer moments are exactly zero and that the hook's optimizer-step counter
equals the optimizer's own (AdamW ``state['step']``).
"""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.runner import CheckpointLoader
from torch import nn
from torch.utils.data import Dataset

import pelk_mm  # noqa: F401  (registers the hook; checkpoint compat)
from pelk_mm.sparsity import DynamicSparsityHook, cosine_prune_rate
from pelk_mm.sparsity.hook import step_hooks_run, unknown_state_keys
from helpers import check_records, make_sparsity_runner


def _fused_adamw_on_cpu():
    try:
        torch.optim.AdamW([nn.Parameter(torch.zeros(1))], fused=True)
    except RuntimeError:  # torch < 2.4: fused=True requires CUDA
        return False
    return True


# The AMP tests run mmengine's AmpOptimWrapper on the CPU: they need a CPU
# GradScaler (torch.amp.GradScaler('cpu'), torch >= 2.3) and, for fused=True,
# a CPU fused AdamW (torch >= 2.4). The hook itself has no torch floor.
needs_cpu_grad_scaler = pytest.mark.skipif(
    not hasattr(torch.amp, 'GradScaler'),
    reason=f'torch {torch.__version__} has no CPU GradScaler '
    '(torch.amp.GradScaler, torch >= 2.3)')
needs_cpu_fused_adamw = pytest.mark.skipif(
    not _fused_adamw_on_cpu(),
    reason=f'torch {torch.__version__} has no fused AdamW on the CPU '
    '(torch >= 2.4)')


class TinyDataset(Dataset):
    """32 fixed random 3x8x8 images, 4 classes; ``inf_at`` poisons a sample."""

    def __init__(self, inf_at=None):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 3, 8, 8, generator=gen)
        self.y = torch.randint(0, 4, (32, ), generator=gen)
        if inf_at is not None:
            self.x[inf_at] = float('inf')

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], labels=self.y[i])


class TinyBackbone(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.dwconv = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.norm = nn.LayerNorm(8)
        self.pwconv = nn.Linear(8, 16)

    def forward(self, x):
        x = self.dwconv(self.stem(x)).mean((2, 3))
        return F.gelu(self.pwconv(self.norm(x)))


class TinyClassifier(BaseModel):
    """Parameter names like an mm model: ``backbone.*``, ``head.*``."""

    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.head = nn.Linear(16, 4)

    def forward(self, inputs, labels, mode='tensor'):
        logits = self.head(self.backbone(inputs))
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, labels))
        return logits


def make_runner(work_dir, name, max_iters, hook_cfg, dataset=None, **kwargs):
    """The tiny classifier on :class:`TinyDataset` under the hook."""
    return make_sparsity_runner(work_dir, name, max_iters, hook_cfg,
                                TinyClassifier, dataset or TinyDataset(),
                                **kwargs)


HOOK_CFG = dict(update_interval=2, prune_rate=0.5, sparsity=0.5)


@pytest.mark.parametrize('init,growth,accumulative_counts', [
    ('ERK', 'random', 1),
    ('uniform', 'gradient', 2),
    ('snip', 'random', 2),
])
def test_exact_after_every_step(tmp_path, init, growth, accumulative_counts):
    cfg = dict(HOOK_CFG, init=init, growth=growth)
    runner, hook, checker = make_runner(
        tmp_path,
        f'exact_{init}',
        12,
        cfg,
        optim_wrapper=dict(
            optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.05),
            accumulative_counts=accumulative_counts))
    runner.train()
    counts = check_records(checker.records, cfg)
    numel = sum(m.numel() for m in hook.masks.masks.values())
    assert sum(counts.values()) == round(0.5 * numel)
    assert hook.step == 12 // accumulative_counts
    assert hook.masks.density == round(0.5 * numel) / numel
    # A parameter never masked stays dense; masks really moved.
    assert 'backbone.norm.weight' not in hook.masks.masks
    assert not all(
        torch.equal(checker.records[0]['masks'][n], hook.masks.masks[n])
        for n in hook.masks.masks)
    # Logged at each update: density and the cosine-decayed prune rate.
    hub = runner.message_hub
    total = 12 // accumulative_counts
    update_steps = range(2, total + 1, 2)
    assert list(hub.get_scalar('train/prune_rate').data[0]) == pytest.approx(
        [cosine_prune_rate(s, total, 0.5, 0.005) for s in update_steps])
    assert list(hub.get_scalar('train/sparsity_density').data[0]
                ) == [hook.masks.density] * len(update_steps)


@needs_cpu_grad_scaler
@pytest.mark.parametrize(
    'fused', [False, pytest.param(True, marks=needs_cpu_fused_adamw)])
def test_step_skipped_by_loss_scaler(tmp_path, monkeypatch, fused):
    """mmengine's real AmpOptimWrapper with torch's real CPU GradScaler.

    AmpOptimWrapper asserts a GPU and builds ``torch.cuda.amp.GradScaler``;
    both names are patched in its module so that its unchanged code runs on
    CPU with ``torch.amp.GradScaler('cpu')`` and bfloat16 autocast. An inf
    input at iteration 3 makes the scaler skip that step: unfused AdamW is
    then not called at all; fused AdamW is called with ``found_inf`` set.
    """
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler',
                        functools.partial(torch.amp.GradScaler, 'cpu'))
    cfg = dict(HOOK_CFG, init='ERK', growth='gradient')
    runner, hook, checker = make_runner(
        tmp_path,
        f'amp_{fused}',
        8,
        cfg,
        optim_wrapper=dict(
            type='AmpOptimWrapper',
            dtype='bfloat16',
            optimizer=dict(type='AdamW', lr=0.01, fused=fused)),
        dataset=TinyDataset(inf_at=12),  # batch of iteration 3 (0-based)
        shuffle=False)
    runner.train()
    check_records(checker.records, cfg)
    assert [r['hook_step']
            for r in checker.records] == [1, 2, 3, 3, 4, 5, 6, 7]
    assert runner.optim_wrapper.loss_scaler.get_scale() < 2.0**16


@pytest.fixture(scope='module')
def sparse_run(tmp_path_factory):
    """12 uninterrupted iterations with random growth, checkpoint at 6."""
    work_dir = tmp_path_factory.mktemp('sparse_run')
    cfg = dict(HOOK_CFG, init='ERK', growth='random', update_interval=3)
    runner, hook, checker = make_runner(
        work_dir, 'full', 12, cfg, checkpoint_interval=6)
    runner.train()
    check_records(checker.records, cfg)
    return work_dir, cfg, runner, hook


def test_resume_is_bitwise_identical(sparse_run, tmp_path):
    work_dir, cfg, full, full_hook = sparse_run
    runner, hook, checker = make_runner(
        tmp_path,
        'resumed',
        12,
        cfg,
        resume=True,
        load_from=str(work_dir / 'iter_6.pth'))
    runner.train()
    check_records(checker.records, cfg)
    assert checker.records[0]['hook_step'] == 7  # continued, not restarted
    assert hook.step == full_hook.step == 12
    assert torch.equal(hook.generator.get_state(),
                       full_hook.generator.get_state())
    for name, mask in full_hook.masks.masks.items():
        assert torch.equal(hook.masks.masks[name], mask), name
    for (name, p), q in zip(runner.model.named_parameters(),
                            full.model.parameters()):
        assert torch.equal(p, q), name


def test_load_from_keeps_the_checkpoint_masks(sparse_run, tmp_path):
    work_dir = sparse_run[0]
    ckpt = CheckpointLoader.load_checkpoint(str(work_dir / 'iter_12.pth'))
    cfg = dict(HOOK_CFG, init='ERK', update_interval=100)
    runner, hook, checker = make_runner(
        tmp_path, 'load_from', 4, cfg, load_from=str(work_dir / 'iter_12.pth'))
    runner.train()
    check_records(checker.records, cfg)
    assert hook.step == 4  # a new run: the counter starts afresh
    for name, mask in ckpt['sparsity']['masks'].items():
        assert torch.equal(hook.masks.masks[name], mask), name


def test_fixed_mode_keeps_the_zero_pattern(sparse_run, tmp_path):
    work_dir = sparse_run[0]
    ckpt = CheckpointLoader.load_checkpoint(str(work_dir / 'iter_12.pth'))
    cfg = dict(mode='fixed')
    runner, hook, checker = make_runner(
        tmp_path,
        'fixed',
        6,
        cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        load_from=str(work_dir / 'iter_12.pth'))
    runner.train()
    assert not [leak for r in checker.records for leak in r['leaks']]
    assert [r['hook_step'] for r in checker.records] == [1, 2, 3, 4, 5, 6]
    params = dict(runner.model.named_parameters())
    assert set(hook.masks.masks) == set(ckpt['sparsity']['masks'])
    for name in hook.masks.masks:
        before = ckpt['state_dict'][name]
        assert torch.equal(params[name].detach() == 0, before == 0), name
        assert not torch.equal(params[name].detach(), before)  # it trained


def test_bad_arguments_name_the_parameter():
    for kwargs, word in [(dict(mode='static'), 'mode'),
                         (dict(init='random'), 'init'),
                         (dict(growth='momentum'), 'growth'),
                         (dict(update_interval=0), 'update_interval'),
                         (dict(prune_rate=0.001), 'min_prune_rate'),
                         (dict(sparsity=1.0), 'sparsity'),
                         (dict(sparsity=-0.1), r'sparsity .*\[0, 1\)'),
                         (dict(sparsity=40), r'sparsity .*\[0, 1\)'),
                         (dict(sparsity='0.4'), 'sparsity must be a number'),
                         (dict(decay_steps=0), 'decay_steps'),
                         (dict(stop_step=-1), 'stop_step'),
                         (dict(min_zero_fraction=1.0), 'min_zero_fraction')]:
        with pytest.raises(ValueError, match=word):
            DynamicSparsityHook(**kwargs)


DDP_SCRIPT = '''
import gc
import sys
import torch
import torch.distributed as dist
sys.path.insert(0, {tests_dir!r})
from test_sparsity_hook import HOOK_CFG, make_runner

# mmengine's pytorch launcher calls torch.cuda.set_device, which fails on a
# CPU-only machine; with the process group already up, the Runner skips it.
dist.init_process_group('gloo')
rank = dist.get_rank()
cfg = dict(HOOK_CFG, init='uniform', growth='random')
runner, hook, checker = make_runner(
    {work_dir!r}, 'ddp', 12, cfg, launcher='pytorch',
    cfg=dict(model_wrapper_cfg=dict(
        type='MMDistributedDataParallel', device_ids=None)),
    randomness=dict(seed=0, diff_rank_seed=True))
runner.train()
assert hook.step == 12 and not [l for r in checker.records for l in r['leaks']]
weights = {{n: p.detach() for n, p in runner.model.module.named_parameters()}}
torch.save(dict(masks=hook.masks.state_dict(), weights=weights),
           {work_dir!r} + f'/rank{{rank}}.pt')
# as tools/launch_utils.destroy_process_group: no gloo group left to the
# interpreter's shutdown (SIGABRT at exit, docs/fault_tolerance.md)
del runner, hook, checker
dist.barrier()
gc.collect()
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_ddp_masks_identical_on_both_ranks(tmp_path):
    """2 gloo processes via torch.distributed.run (as tools/dist_train.sh).

    ``diff_rank_seed=True`` gives each rank its own seed, so identical masks
    need the hook's rank-0 broadcast of masks and generator seed.
    """
    script = tmp_path / 'train_ddp.py'
    script.write_text(
        DDP_SCRIPT.format(
            tests_dir=str(Path(__file__).parent), work_dir=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([
        sys.executable, '-m', 'torch.distributed.run', '--standalone',
        '--nproc_per_node=2',
        str(script)
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [
        torch.load(tmp_path / f'rank{r}.pt', weights_only=True) for r in (0, 1)
    ]
    assert ranks[0]['masks'].keys() == ranks[1]['masks'].keys()
    for name in ranks[0]['masks']:
        assert torch.equal(ranks[0]['masks'][name], ranks[1]['masks'][name])
        assert torch.equal(ranks[0]['weights'][name],
                           ranks[1]['weights'][name])


@needs_cpu_grad_scaler
@needs_cpu_fused_adamw
def test_no_host_sync_between_updates(tmp_path, monkeypatch):
    """Before an optimizer step, the hook reads no tensor value on the host
    (``item`` / ``int`` / ``float`` / ``bool``) unless an update may be due,
    also with a fused optimizer under the loss scaler (``found_inf``)."""
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available',
                        lambda: True)
    monkeypatch.setattr(amp_optimizer_wrapper, 'GradScaler',
                        functools.partial(torch.amp.GradScaler, 'cpu'))
    cfg = dict(HOOK_CFG, init='ERK', update_interval=4)
    runner, hook, checker = make_runner(
        tmp_path,
        'no_sync',
        8,
        cfg,
        optim_wrapper=dict(
            type='AmpOptimWrapper',
            dtype='bfloat16',
            optimizer=dict(type='AdamW', lr=0.01, fused=True)))
    reads, inside = [], []
    for name in ('item', '__int__', '__float__', '__bool__', 'tolist'):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _original=original, _name=name):
            if inside:
                reads.append((hook._step, _name))
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, spy)
    pre_hook = hook._before_optimizer_step

    def watched(*args):
        inside.append(True)
        try:
            pre_hook(*args)
        finally:
            inside.pop()

    hook._before_optimizer_step = watched  # registered in before_train
    runner.train()
    check_records(checker.records, cfg)
    assert hook.step == 8
    assert reads and {step for step, _ in reads} <= {4, 8}


class UnhookedSGD(torch.optim.SGD):
    """SGD whose ``step`` runs no step hooks: what torch 2.1's Dynamo leaves
    of every optimizer class once it has run in a process."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group['params']:
                if param.grad is not None:
                    param.add_(param.grad, alpha=-group['lr'])


UnhookedSGD.step.hooked = True  # Optimizer.__init__ wraps it no more


def test_refuses_an_optimizer_whose_step_hooks_no_longer_run():
    """The masks live in a step pre-hook; where the optimizer class no longer
    runs step hooks, the hook stops instead of training silently dense."""
    param = torch.zeros(2, requires_grad=True)
    assert step_hooks_run(torch.optim.SGD([param], lr=0.1))
    assert step_hooks_run(torch.optim.AdamW([param], lr=0.1))
    assert not step_hooks_run(UnhookedSGD([param], lr=0.1))
    hook = DynamicSparsityHook()
    hook._optimizer, hook._first_iter_done = UnhookedSGD([param],
                                                         lr=0.1), False
    with pytest.raises(
            RuntimeError, match='no longer runs optimizer step hooks'):
        hook.after_train_iter(runner=None, batch_idx=0)


# --- bad inputs: the model, frozen parameters, resume, the optimizer -------


def test_any_model_works_one_without_covered_weights_is_refused(tmp_path):
    """The hook needs no PeLK: it masks the weights ``include`` names (the
    tiny classifier here has none). A model whose weights ``include`` does
    not name is refused with its weights' names."""
    cfg = dict(HOOK_CFG, init='uniform')
    runner, hook, checker = make_runner(tmp_path, 'no_pelk', 4, cfg)
    runner.train()
    check_records(checker.records, cfg)
    assert not any(type(m).__name__ == 'PeLK' for m in runner.model.modules())
    assert hook.masks.density == pytest.approx(0.5, abs=0.01)
    runner, _, _ = make_runner(tmp_path, 'nothing', 4,
                               dict(cfg, include=(r'encoder\.', )))
    with pytest.raises(
            ValueError,
            match=r"covers no parameter .*include=.*encoder.*"
            r"'backbone.stem.weight'"):
        runner.train()


class FrozenStemClassifier(TinyClassifier):
    """The tiny classifier with its stem frozen, as ``frozen_stages=1``
    freezes PeLK's stem and first stage."""

    def __init__(self):
        super().__init__()
        self.backbone.stem.requires_grad_(False)


def test_frozen_parameters_stay_dense(tmp_path):
    """A frozen weight is not masked: pruning it would zero weights that
    never train again. It keeps its loaded values; the rest is exact."""
    cfg = dict(HOOK_CFG, init='uniform', update_interval=2)
    runner, hook, checker = make_sparsity_runner(tmp_path, 'frozen', 6, cfg,
                                                 FrozenStemClassifier,
                                                 TinyDataset())
    stem = runner.model.backbone.stem.weight
    before = stem.detach().clone()
    runner.train()
    check_records(checker.records, cfg)
    assert 'backbone.stem.weight' not in hook.masks.masks
    assert 'backbone.dwconv.weight' in hook.masks.masks
    assert torch.equal(stem.detach(), before) and bool((before != 0).all())


@pytest.mark.parametrize('change', [
    dict(sparsity=0.3),
    dict(update_interval=4),
    dict(include=(r'backbone\.', )),
    dict(growth='gradient'),
    dict(prune_rate=0.4),
])
def test_resume_with_changed_settings_is_refused(sparse_run, tmp_path, change):
    """A resume continues the saved run exactly, so a setting that differs
    from the checkpoint's run is named with both values."""
    work_dir, cfg = sparse_run[:2]
    key, value = next(iter(change.items()))
    runner, _, _ = make_runner(
        tmp_path,
        'changed',
        12,
        dict(cfg, **change),
        resume=True,
        load_from=str(work_dir / 'iter_6.pth'))
    with pytest.raises(
            ValueError,
            match=rf'its run used {key}=.*this config has {key}=.*load_from'):
        runner.train()


def test_load_from_masks_of_other_parameters_is_refused(sparse_run, tmp_path):
    """``load_from`` keeps a dynamic run's masks; masks over parameters the
    hook does not cover (another include / exclude, frozen stages, arch) are
    named."""
    work_dir = sparse_run[0]
    runner, _, _ = make_runner(
        tmp_path,
        'other',
        4,
        dict(HOOK_CFG, init='uniform', exclude=(r'head\.', )),
        load_from=str(work_dir / 'iter_12.pth'))
    with pytest.raises(
            ValueError,
            match=r"do not cover .*not covered: \['head.weight'\]"):
        runner.train()


def test_optimizer_state_the_masks_do_not_know_is_refused(tmp_path):
    """Rprop keeps per-weight step sizes: zeroing them would freeze regrown
    weights, keeping them would not start regrown weights afresh. Adagrad's
    ``sum`` is reset like Adam's moments: pruned state stays zero."""
    param = nn.Parameter(torch.zeros(3))
    rprop = torch.optim.Rprop([param])
    assert unknown_state_keys(rprop) == ['prev', 'step_size']
    for optimizer in (torch.optim.AdamW([param]), torch.optim.Adagrad([param]),
                      torch.optim.SGD([param], lr=0.1, momentum=0.9),
                      torch.optim.RMSprop([param], momentum=0.9,
                                          centered=True)):
        assert unknown_state_keys(optimizer) == [], optimizer
    cfg = dict(HOOK_CFG, init='uniform', update_interval=2)
    runner, _, _ = make_runner(
        tmp_path,
        'rprop',
        4,
        cfg,
        optim_wrapper=dict(optimizer=dict(type='Rprop', lr=0.01)))
    with pytest.raises(
            ValueError, match=r"Rprop keeps state \['prev', 'step_size'\]"):
        runner.train()
    runner, hook, checker = make_runner(
        tmp_path,
        'adagrad',
        6,
        cfg,
        optim_wrapper=dict(optimizer=dict(type='Adagrad', lr=0.01)))
    runner.train()
    assert not [leak for r in checker.records for leak in r['leaks']]
    params = dict(runner.model.named_parameters())
    state = runner.optim_wrapper.optimizer.state
    assert hook.step == 6
    for name, mask in hook.masks.masks.items():
        assert not params[name].detach()[~mask].any(), name
        assert not state[params[name]]['sum'][~mask].any(), name
