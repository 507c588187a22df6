"""What several test files share.

Test files import it as ``from helpers import ...``: pytest's default
(``prepend``) import mode puts ``tests/`` on ``sys.path``, as the folder has
no ``__init__.py``. Nothing here is a test.

* :data:`ROOT`: the repository root.
* Small archs: :data:`SMALL_ARCH`, :data:`TINY_ARCH`, :data:`ARCH21`.
* :func:`load_tool`: a script under ``tools/`` as a module.
* :func:`build_runner`: a real mmengine ``Runner`` on an in-memory dataset.
* :class:`StepChecker`, :func:`check_records`, :func:`make_sparsity_runner`:
  ``DynamicSparsityHook`` runs checked after every iteration.
"""
import importlib.util
import os.path as osp

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from pelk_mm.ops import expand_weight
from pelk_mm.sparsity.masks import MOMENT_KEYS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: A reduced arch that keeps every feature (4 stages, > 1 block per stage,
#: real sharing grids, kernels larger than the later feature maps) but runs
#: in milliseconds.
SMALL_ARCH = dict(
    depths=[2, 1, 3, 1],
    channels=[16, 24, 32, 40],
    kernel_sizes=[13, 11, 9, 5],
    center_sizes=3)

#: :data:`SMALL_ARCH` with one block per stage.
TINY_ARCH = dict(SMALL_ARCH, depths=[1, 1, 1, 1])

#: One block per stage, a kernel-21 first stage (5x5 centre): the
#: checkpoint of the loading tests; ``dict(ARCH21, kernel_sizes=[31, ...])``
#: has the same compact shapes without positional embeddings.
ARCH21 = dict(
    depths=[1, 1, 1, 1],
    channels=[16, 32, 64, 128],
    kernel_sizes=[21, 13, 13, 7])


def load_tool(path):
    """The script ``tools/<path>`` (e.g. ``'model_converters/x.py'``) as a
    module, without running its ``__main__`` block."""
    name = 'pelk_tool_' + osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_runner(work_dir,
                 build_model,
                 dataset,
                 max_iters,
                 batch_size,
                 optim_wrapper,
                 shuffle=True,
                 checkpoint_interval=1000,
                 log_interval=None,
                 **kwargs):
    """A real mmengine ``Runner`` training by iterations on ``dataset``.

    ``build_model()`` is called after ``torch.manual_seed(0)``, since the
    model is built before the Runner seeds (``randomness``, default seed 0).
    The loader uses ``default_collate`` and no worker processes; a checkpoint
    is saved every ``checkpoint_interval`` iterations; ``log_interval`` adds
    a ``LoggerHook``. ``kwargs`` go to the Runner.
    """
    from mmengine.runner import Runner
    torch.manual_seed(0)
    model = build_model()
    default_hooks = dict(
        checkpoint=dict(
            type='CheckpointHook',
            by_epoch=False,
            interval=checkpoint_interval))
    if log_interval is not None:
        default_hooks['logger'] = dict(
            type='LoggerHook', interval=log_interval)
    kwargs.setdefault('randomness', dict(seed=0))
    kwargs.setdefault('default_scope', 'mmengine')
    return Runner(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=dataset,
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
            collate_fn=dict(type='default_collate'),
            batch_size=batch_size,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=optim_wrapper,
        default_hooks=default_hooks,
        **kwargs)


class StepChecker(Hook):
    """Records, after every iteration, what the sparsity tests assert on:
    weights and optimizer moments that leak through a mask, the hook's and
    the optimizer's step counters, and the masks.

    The moments checked are the element-wise buffers the masks zero
    (:data:`~pelk_mm.sparsity.masks.MOMENT_KEYS`: Adam / AdamW / AMSGrad,
    SGD momentum) plus any other optimizer state of the parameter's shape,
    so a buffer missing from that list is a leak too."""

    priority = 'LOWEST'

    def __init__(self, sparsity_hook):
        self.sparsity_hook = sparsity_hook
        self.records = []

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None):
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        params = dict(model.named_parameters())
        optimizer = runner.optim_wrapper.optimizer
        masks = self.sparsity_hook.masks.masks
        leaks = []
        for name, mask in masks.items():
            p = params[name]
            state = optimizer.state.get(p, {})
            moments = [(k, t) for k, t in state.items()
                       if k in MOMENT_KEYS or (
                           torch.is_tensor(t) and t.shape == p.shape)]
            for what, t in [('weight', p)] + moments:
                if (t.detach()[~mask] != 0).any():
                    leaks.append((runner.iter, name, what))
        steps = {
            int(s['step'])
            for s in optimizer.state.values() if 'step' in s
        }
        steps = steps or {0}  # no optimizer step taken yet
        self.records.append(
            dict(
                iter=runner.iter,
                hook_step=self.sparsity_hook.step,
                optim_steps=steps,
                leaks=leaks,
                counts={
                    n: int(m.sum())
                    for n, m in masks.items()
                },
                masks={
                    n: m.clone()
                    for n, m in masks.items()
                }))


def check_records(records, hook_cfg):
    """Exactness after every iteration; masks change only at update steps.

    Returns the per-layer kept counts, equal at every iteration."""
    interval = hook_cfg['update_interval']
    assert not [leak for r in records for leak in r['leaks']]
    first = records[0]['counts']
    prev = None
    for r in records:
        assert r['optim_steps'] == {r['hook_step']}
        assert r['counts'] == first  # every layer keeps its exact density
        if prev is not None:
            changed = any(not torch.equal(r['masks'][n], prev['masks'][n])
                          for n in r['masks'])
            stepped_to_update = (
                r['hook_step'] != prev['hook_step']
                and r['hook_step'] % interval == 0)
            assert changed == stepped_to_update, r['iter']
        prev = r
    return first


def make_sparsity_runner(work_dir,
                         name,
                         max_iters,
                         hook_cfg,
                         build_model,
                         dataset,
                         optim_wrapper=None,
                         **kwargs):
    """:func:`build_runner` with a ``DynamicSparsityHook(**hook_cfg)`` and a
    :class:`StepChecker` on it: batches of 4, AdamW (lr 0.01, weight decay
    0.05) unless ``optim_wrapper`` is given. Returns (runner, hook, checker).
    """
    from pelk_mm.sparsity import DynamicSparsityHook
    hook = DynamicSparsityHook(**hook_cfg)
    checker = StepChecker(hook)
    runner = build_runner(
        work_dir,
        build_model,
        dataset,
        max_iters,
        batch_size=4,
        optim_wrapper=optim_wrapper
        or dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.05)),
        experiment_name=name,
        log_interval=100,
        custom_hooks=[hook, checker],
        **kwargs)
    return runner, hook, checker


def dense_reference(x, weight, grid):
    """The peripheral conv of ``x`` (N, C, H, W) with compact ``weight``
    (C, k', k') on ``grid``, by ``F.conv2d`` with the expanded kernel."""
    return F.conv2d(
        x,
        expand_weight(weight, grid),
        padding=sum(grid) // 2,
        groups=x.shape[1])


def conv_and_grads(fn, x, weight, grid, grad_out):
    """``fn(x, weight, grid)`` and the gradients of ``x`` and ``weight`` for
    ``grad_out``: a tuple (out, grad_x, grad_weight)."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    out = fn(x, weight, grid)
    return (out, ) + torch.autograd.grad(out, (x, weight), grad_out)
