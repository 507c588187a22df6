"""What ``import pelk_mm`` changes in mmengine's checkpoint loading, and the
opt-in URL policy (``pelk_mm.engine.compat``, ``pelk_mm.checkpoint.reading``).

- In a fresh interpreter, every ``CheckpointLoader`` scheme keeps its loader
  object across ``import pelk_mm`` except those the rule names (on torch >=
  2.6 only), which wrap mmengine's own.
- mmengine 0.10.7 checkpoints load on torch >= 2.6 once pelk_mm is imported:
  a Runner run saves its checkpoint, a second Runner resumes from it
  (``resume=True``) and a third one starts from it (``load_from``).
  weights_only stays on: foreign pickled objects are still refused, through
  mmengine's loaders and through a plain ``torch.load``. On torch < 2.6
  mmengine's loaders are left alone and refuse nothing: those refusal tests
  skip there, the loading tests run on every torch.
- A checkpoint by URL whose name torch.hub reads as a hash prefix
  (``resnet-224.pth``) loads with pelk_mm imported, served by ``http.server``
  on 127.0.0.1; with ``use_safe_url_loader()`` (and through pelk-mm's own
  ``read_checkpoint`` / ``Pretrained``) it is refused, and so is a correctly
  hashed file that pickles a foreign object, on every torch.
"""
import functools
import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner import load_checkpoint
from torch.utils.data import Dataset

import pelk_mm  # noqa: F401  (mmengine's loaders on torch >= 2.6)
from pelk_mm import PeLK
from pelk_mm.checkpoint import read_checkpoint, use_safe_url_loader
from pelk_mm.checkpoint.reading import TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT
from pelk_mm.engine.compat import PATCHED_SCHEMES
from helpers import ROOT, TINY_ARCH, build_runner


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


def test_read_checkpoint_reads_mmengine_checkpoints_weights_only(tmp_path):
    """On every torch (a restricted unpickler before torch 2.5)."""
    make_runner(
        tmp_path / 'run', max_iters=2,
        experiment_name='read_weights_only').train()  # its own MessageHub
    ckpt = read_checkpoint(str(tmp_path / 'run' / 'iter_2.pth'))
    assert ckpt['meta']['iter'] == 2
    assert len(ckpt['message_hub']['log_scalars']['train/loss'].data[0]) == 2
    path = tmp_path / 'foreign.pth'
    torch.save({'state_dict': {}, 'obj': NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
        read_checkpoint(str(path))
    assert read_checkpoint(str(path), trust_pickle=True)['obj'].__class__ \
        is NotAllowed


# ------------------------------------------- the host's loaders, by URL
@pytest.mark.slow
def test_import_replaces_only_the_loaders_the_rule_names():
    code = '\n'.join([
        'import json',
        'from mmengine.runner import CheckpointLoader',
        'before = dict(CheckpointLoader._schemes)',
        'import pelk_mm',
        'after = dict(CheckpointLoader._schemes)',
        'assert after.keys() == before.keys()',
        'changed = sorted(k for k in before if after[k] is not before[k])',
        'assert all(after[k].__wrapped__ is before[k] for k in changed)',
        'print(json.dumps([len(before), changed]))',
    ])
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    count, changed = json.loads(proc.stdout.splitlines()[-1])
    assert count == 11  # mmengine 0.10.7's schemes
    assert changed == (
        sorted(PATCHED_SCHEMES) if TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT else [])


class QuietHandler(SimpleHTTPRequestHandler):

    def log_message(self, format, *args):
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """``(directory, URL)``: http.server on 127.0.0.1 (ephemeral port), and
    an empty torch hub cache."""
    root = tmp_path / 'served'
    root.mkdir()
    httpd = ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    for key in ('NO_PROXY', 'no_proxy'):
        monkeypatch.setenv(key, '127.0.0.1,localhost')
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def safe_urls():
    """:func:`use_safe_url_loader` for one test, mmengine's loaders after."""
    saved = CheckpointLoader._schemes.copy()
    use_safe_url_loader()
    yield
    CheckpointLoader._schemes = saved


def save_named(root, stem, obj, hashed):
    """Save ``obj`` as ``<stem>-<sha256[:8]>.pth`` (``hashed``) or as
    ``<stem>-224.pth`` whose sha256 does not start with 224."""
    for pad in range(100):
        tmp = root / 'tmp.pth'
        torch.save(dict(obj, pad=pad), tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        if hashed or not digest.startswith('224'):
            break
    name = f'{stem}-{digest[:8] if hashed else 224}.pth'
    os.replace(tmp, root / name)
    return name


def test_url_named_like_a_hash_loads_as_without_pelk(served):
    root, url = served
    weights = {'w': torch.arange(4.)}
    name = save_named(root, 'resnet', dict(state_dict=weights), hashed=False)
    assert CheckpointLoader._get_checkpoint_loader(f'{url}/{name}') is \
        mmengine_checkpoint.load_from_http  # mmengine's own
    loaded = CheckpointLoader.load_checkpoint(f'{url}/{name}')
    torch.testing.assert_close(loaded['state_dict']['w'], weights['w'])


def test_safe_url_policy_refuses_hash_mismatch_and_objects(
        served, safe_urls, tmp_path):
    root, url = served
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    weights = dict(state_dict={'w': torch.arange(4.)})
    unhashed = save_named(root, 'resnet', weights, hashed=False)
    for load in (CheckpointLoader.load_checkpoint, read_checkpoint):
        with pytest.raises(RuntimeError, match='invalid hash value'):
            load(f'{url}/{unhashed}')
        assert not (cache / unhashed).exists()  # nothing left behind
    foreign = save_named(root, 'foreign', dict(obj=NotAllowed()), True)
    for load in (CheckpointLoader.load_checkpoint, read_checkpoint):
        with pytest.raises(pickle.UnpicklingError, match='NotAllowed'):
            load(f'{url}/{foreign}')
    hashed = save_named(root, 'weights', weights, hashed=True)
    loaded = CheckpointLoader.load_checkpoint(f'{url}/{hashed}')
    torch.testing.assert_close(loaded['state_dict']['w'], torch.arange(4.))


def test_pelk_pretrained_by_url_is_hash_checked(served):
    """What pelk-mm loads itself is checked without the switch."""
    root, url = served
    source = PeLK(TINY_ARCH)
    weights = {k: v for k, v in source.state_dict().items()}
    unhashed = save_named(root, 'pelk', weights, hashed=False)
    hashed = save_named(root, 'pelk', weights, hashed=True)
    with pytest.raises(RuntimeError, match='invalid hash value'):
        PeLK(
            TINY_ARCH,
            init_cfg=dict(type='Pretrained',
                          checkpoint=f'{url}/{unhashed}')).init_weights()
    model = PeLK(
        TINY_ARCH,
        init_cfg=dict(type='Pretrained', checkpoint=f'{url}/{hashed}'))
    model.init_weights()
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key
