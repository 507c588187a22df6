"""mmengine 0.10.7 checkpoints load on torch >= 2.6 once pelk_mm is imported.

The tests drive the real mmengine Runner: a run saves its checkpoint, a second
Runner resumes from it (``resume=True``) and a third one starts from it
(``load_from``). weights_only must stay on: foreign pickled objects are still
refused, through mmengine's loaders and through a plain ``torch.load``.
On torch < 2.6, whose ``torch.load`` defaults to ``weights_only=False``,
mmengine's checkpoints load without the shim and nothing is refused: the
refusal tests skip there, the loading tests run on every torch.
"""
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader, load_checkpoint
from torch.utils.data import Dataset

import pelk_mm  # noqa: F401  (registers the safe globals)
from pelk_mm.engine.compat import TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT
from helpers import build_runner


class ToyDataset(Dataset):
    """16 fixed random samples of a linear regression problem."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 4, generator=gen)
        self.y = self.x @ torch.arange(4.) + 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return dict(inputs=self.x[i], targets=self.y[i])


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, inputs, targets, mode='tensor'):
        pred = self.linear(inputs).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((pred - targets)**2).mean())
        return pred


def make_runner(work_dir, max_iters, **kwargs):
    """AdamW on :class:`ToyDataset` with an lr schedule (whose state mmengine
    pickles), a checkpoint every 2 iterations, a log line every one."""
    return build_runner(
        work_dir,
        ToyModel,
        ToyDataset(),
        max_iters,
        batch_size=4,
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        checkpoint_interval=2,
        log_interval=1,
        param_scheduler=dict(
            type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=4),
        **kwargs)


def load(path):
    return CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


class NotAllowed:
    pass


needs_weights_only_default = pytest.mark.skipif(
    not TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT,
    reason=f'torch {torch.__version__}: torch.load defaults to '
    'weights_only=False (True from torch 2.6), so it refuses nothing')


@needs_weights_only_default
def test_torch_load_alone_refuses_mmengine_checkpoint(tmp_path):
    # its own experiment name: a Runner built in the same second as another
    # one would share its MessageHub (named by the start time)
    make_runner(
        tmp_path / 'run', max_iters=2, experiment_name='refused').train()
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer|getattr'):
        torch.load(tmp_path / 'run' / 'iter_2.pth')


def test_mmengine_checkpoint_loads(tmp_path):
    """Through mmengine's loader, as resume and load_from use it."""
    runner = make_runner(tmp_path / 'run', max_iters=2)
    runner.train()
    ckpt = load(tmp_path / 'run' / 'iter_2.pth')
    assert ckpt['meta']['iter'] == 2
    assert len(ckpt['message_hub']['log_scalars']['train/loss'].data[0]) == 2


def test_resume_continues_like_an_uninterrupted_run(tmp_path):
    make_runner(tmp_path / 'full', max_iters=4).train()
    full = load(tmp_path / 'full' / 'iter_4.pth')

    make_runner(tmp_path / 'part', max_iters=2).train()
    resumed = make_runner(
        tmp_path / 'part',
        max_iters=4,
        resume=True,
        load_from=str(tmp_path / 'part' / 'iter_2.pth'))
    resumed.train()
    assert resumed.iter == 4
    part = load(tmp_path / 'part' / 'iter_4.pth')
    for key, value in full['state_dict'].items():
        torch.testing.assert_close(
            part['state_dict'][key], value, rtol=0, atol=0)
    assert part['optimizer']['state'][0]['step'] == 4


def test_load_from_and_load_checkpoint(tmp_path):
    make_runner(tmp_path / 'src', max_iters=2).train()
    src = tmp_path / 'src' / 'iter_2.pth'
    runner = make_runner(tmp_path / 'dst', max_iters=1, load_from=str(src))
    runner.train()  # load_from happens at the start of training
    model = ToyModel()
    load_checkpoint(model, str(src))
    expected = load(src)['state_dict']['linear.weight']
    torch.testing.assert_close(model.linear.weight.data, expected)


@needs_weights_only_default
def test_weights_only_still_refuses_foreign_objects(tmp_path):
    path = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {}, 'obj': NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
        load(path)
    with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
        torch.load(path)
