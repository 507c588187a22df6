"""A training run killed with SIGKILL and resumed with ``--resume`` ends
bitwise equal to an uninterrupted run.

Real processes: ``tools/train.py`` on the tiny demo run of
``tools/analysis_tools/kill_resume_check.py`` (dynamic sparsity, a mask
update and a checkpoint every 2 iterations, ``max_keep_ckpts=1``), killed
once while a checkpoint's bytes are being written and once after an
iteration drawn by a seeded RNG, resumed each time; the last checkpoint's
state dict, masks, optimizer state, schedulers and random states are
compared bitwise with an uninterrupted run's. What makes it hold,
``ResumableCheckpointHook`` (atomic writes, random states), is also checked
on its own, in-process.
"""
import os
import os.path as osp

import pytest
import torch
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from pelk_mm.engine import ResumableCheckpointHook
from pelk_mm.engine.resumable_checkpoint_hook import get_random_state
from helpers import load_tool


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    check = load_tool('analysis_tools/kill_resume_check.py')
    lines = []
    exact = check.check(1, seed=0, work_dir=str(tmp_path), log=lines.append)
    assert lines[0].startswith('repeat 0: killed while saving iter_')
    assert exact == 1, lines


def test_compare_finds_one_changed_bit(tmp_path):
    """The comparison the check relies on sees a single flipped bit."""
    check = load_tool('analysis_tools/kill_resume_check.py')
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
    state = dict(
        meta=dict(iter=4),
        state_dict=dict(w=weight),
        sparsity=dict(masks=dict(w=weight > 0), step=4),
        optimizer=dict(state={0: dict(exp_avg=weight * 2)}),
        param_schedulers=[dict(last_epoch=4)],
        random_state=[get_random_state()])
    flipped = dict(state, state_dict=dict(w=weight.clone()))
    flipped['state_dict']['w'].view(torch.int32)[1, 2] ^= 1
    paths = [str(tmp_path / f'{name}.pth') for name in ('a', 'b', 'c')]
    for path, value in zip(paths, (state, state, flipped)):
        torch.save(value, path)
    assert check.compare(paths[0], paths[1]) == []
    assert check.compare(paths[0], paths[2]) == ['state_dict.w']


class _Model(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, target, mode='loss'):
        inputs = F.dropout(inputs, 0.5, self.training)
        return dict(loss=((self.linear(inputs) - target)**2).mean())


class _Data(Dataset):
    """Draws from the global torch generator for every item, as an
    augmentation in a loader without workers does (and the model's dropout
    between the batches)."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(inputs=torch.rand(4), target=torch.ones(1))


def _runner(work_dir, max_iters, resume=False, hooks=(), **checkpoint):
    """A real Runner training ``_Model`` on ``_Data`` with the hook."""
    torch.manual_seed(0)
    return Runner(
        model=_Model(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_Data(),
            sampler=dict(type='InfiniteSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
            batch_size=2,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(
                type='ResumableCheckpointHook', by_epoch=False, **checkpoint)),
        custom_hooks=list(hooks),
        randomness=dict(seed=0),
        default_scope='mmengine',
        resume=resume)


def test_saves_keep_a_complete_checkpoint(tmp_path, monkeypatch):
    """The new checkpoint and ``last_checkpoint`` are renamed into place
    before the outdated checkpoint is deleted."""
    assert issubclass(ResumableCheckpointHook, CheckpointHook)
    seen = []
    replace = os.replace

    def watch(src, dst):  # the directory as a kill at this moment leaves it
        seen.append((osp.basename(dst), sorted(os.listdir(tmp_path))))
        replace(src, dst)

    monkeypatch.setattr(os, 'replace', watch)
    _runner(tmp_path, 4, interval=2, max_keep_ckpts=1).train()
    assert [name for name, _ in seen] == [
        'iter_2.pth', 'last_checkpoint', 'iter_4.pth', 'last_checkpoint'
    ]
    # renaming iter_4.pth and then last_checkpoint into place: iter_2.pth,
    # which last_checkpoint names until then, is still there
    for _, listing in seen[2:]:
        assert 'iter_2.pth' in listing
    assert 'iter_2.pth' not in os.listdir(tmp_path)
    with open(tmp_path / 'last_checkpoint') as f:
        assert f.read() == str(tmp_path / 'iter_4.pth')


class _Record(Hook):
    """The batch of every iteration."""

    def __init__(self):
        self.draws = []

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        self.draws.append(data_batch['inputs'].clone())


def test_resume_restores_the_random_draws(tmp_path):
    """Resumed at iteration 2 of 4, the batches drawn with the global torch
    generator are those of the uninterrupted run; without the hook's states
    (removed from the checkpoint) they are not: the replayed batches do not
    replay the dropout draws in between."""
    uninterrupted = _Record()
    _runner(tmp_path / 'a', 4, hooks=[uninterrupted], interval=2).train()
    _runner(tmp_path / 'b', 2, interval=2).train()
    saved = torch.load(tmp_path / 'b' / 'iter_2.pth', weights_only=False)
    assert len(saved['random_state']) == 1
    assert set(saved['random_state'][0]) >= {'python', 'numpy', 'torch'}

    resumed = _Record()
    _runner(tmp_path / 'b', 4, True, [resumed], interval=2).train()
    assert len(resumed.draws) == 2
    for expected, drawn in zip(uninterrupted.draws[2:], resumed.draws):
        assert torch.equal(expected, drawn)

    del saved['random_state']
    torch.save(saved, tmp_path / 'b' / 'iter_2.pth')
    with open(tmp_path / 'b' / 'last_checkpoint', 'w') as f:
        f.write(str(tmp_path / 'b' / 'iter_2.pth'))
    without = _Record()
    _runner(tmp_path / 'b', 4, True, [without], interval=2).train()
    assert not torch.equal(uninterrupted.draws[2], without.draws[0])
