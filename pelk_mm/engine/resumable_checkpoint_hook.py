"""mmengine's ``CheckpointHook`` whose checkpoints resume a killed run
exactly: written atomically, with the random states."""
import os
import os.path as osp
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import (all_gather_object, get_rank, get_world_size,
                           is_main_process)
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

TMP_SUFFIX = '.tmp'
RANDOM_STATE_KEY = 'random_state'


def get_random_state() -> dict:
    """The states of python's ``random``, numpy's global generator and
    torch's CPU (and initialised CUDA) generators, in types that
    ``torch.load(weights_only=True)`` reads (no numpy arrays)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=(name, torch.from_numpy(keys.astype(np.int64)), int(pos),
               int(has_gauss), float(cached)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    """Restore what :func:`get_random_state` returned."""
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def replace_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through ``path + '.tmp'`` and
    ``os.replace``: a reader finds the old file or the new one, never a
    truncated one."""
    tmp = path + TMP_SUFFIX
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


class _RestoreBeforeBatch:
    """Stands in for a train loop's ``dataloader_iterator``: calls
    ``restore`` right before batch number ``skip + 1`` is drawn (after the
    ``skip`` batches the loop replays on resume), then gives the loop its
    iterator back."""

    def __init__(self, loop, skip: int, restore):
        self._loop = loop
        self._iterator = loop.dataloader_iterator
        self._left = skip
        self._restore = restore

    def __iter__(self):
        return self

    def __next__(self):
        if self._left == 0:
            self._restore()
            self._loop.dataloader_iterator = self._iterator
        self._left -= 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class ResumableCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose checkpoints let a run killed
    at any moment (SIGKILL, out of memory, a preempted job) resume with
    ``--resume`` to bitwise the weights of an uninterrupted run.

    **Atomic writes.** mmengine 0.10.7's hook, at a periodic save, first
    deletes the checkpoints beyond ``max_keep_ckpts``, then writes the new
    checkpoint in place, then ``work_dir/last_checkpoint`` in place (each
    file opened with truncation). A kill in between leaves
    ``last_checkpoint`` naming a deleted file (with ``max_keep_ckpts=1``
    no checkpoint is left at all), a truncated checkpoint, or an empty
    ``last_checkpoint``. Here, for a local ``out_dir``, the new checkpoint
    is written to ``<name>.tmp`` and renamed (``os.replace``, atomic on
    POSIX), then ``last_checkpoint`` likewise, and only then are outdated
    checkpoints deleted: at every instant ``last_checkpoint`` is absent or
    names a complete checkpoint. A ``.tmp`` left by a kill is overwritten
    when the step is saved again. Atomic against the death of the process,
    not against a power loss (nothing is fsync'ed). Other file backends
    (``s3://``, ...) and best checkpoints (``save_best``) are written as
    mmengine writes them.

    **Random states.** mmengine's resume restores the weights, optimizer,
    schedulers, message hub and the data order (an iteration-based loop
    replays the batches already trained), not the global random generators:
    the data augmentation of a loader without workers, dropout / drop-path
    and anything else drawing from python's ``random``, numpy or torch would
    continue from the states left by building the resumed run (and, e.g.,
    from not drawing the SNIP batch of
    :class:`~pelk_mm.DynamicSparsityHook`). Each save gathers every rank's
    states (:func:`get_random_state`) into ``checkpoint['random_state']``
    (a list indexed by rank); on resume each rank restores its own right
    before the first batch after the checkpoint is drawn: in an
    ``IterBasedTrainLoop`` after the replayed batches, in an
    ``EpochBasedTrainLoop`` at the start of the first epoch. Loader workers
    are seeded by mmengine's ``worker_init_fn`` and replayed, so an
    iteration-based run resumed from such a checkpoint draws the same
    numbers as an uninterrupted one. A checkpoint without the states, or
    saved by another number of processes, resumes as mmengine resumes, with
    a warning.

    ``tools/train.py`` uses this hook in place of ``CheckpointHook``; in a
    config of your own::

        default_hooks = dict(
            checkpoint=dict(type='ResumableCheckpointHook', interval=...))
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._states_to_save: Optional[list] = None
        self._state_to_restore: Optional[dict] = None

    # ------------------------------------------------------------- saving
    def _save_checkpoint_with_step(self, runner, step, meta):
        # every rank is here (runner.save_checkpoint runs on rank 0 only)
        self._states_to_save = all_gather_object(get_random_state())
        if not isinstance(self.file_backend, LocalBackend):
            super()._save_checkpoint_with_step(runner, step, meta)
            return
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename + TMP_SUFFIX,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        os.replace(self.last_ckpt + TMP_SUFFIX, self.last_ckpt)
        replace_text(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in outdated:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._states_to_save is not None:
            checkpoint[RANDOM_STATE_KEY] = self._states_to_save
            self._states_to_save = None

    # ----------------------------------------------------------- resuming
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            return
        states = checkpoint.get(RANDOM_STATE_KEY)
        if states is None or len(states) != get_world_size():
            saved = ('no random states' if states is None else
                     f'the random states of {len(states)} processes')
            runner.logger.warning(
                f'ResumableCheckpointHook: the checkpoint holds {saved} and '
                f'this run has {get_world_size()}: the random states are not '
                'restored, so data augmentation and dropout go on otherwise '
                'than in an uninterrupted run')
            return
        self._state_to_restore = states[get_rank()]

    def before_train(self, runner) -> None:
        super().before_train(runner)
        loop = runner.train_loop
        if (self._state_to_restore is not None
                and hasattr(loop, 'dataloader_iterator')):
            loop.dataloader_iterator = _RestoreBeforeBatch(
                loop, runner.iter, self._restore)

    def before_train_epoch(self, runner) -> None:
        if (self._state_to_restore is not None
                and not hasattr(runner.train_loop, 'dataloader_iterator')):
            self._restore()

    def _restore(self) -> None:
        set_random_state(self._state_to_restore)
        self._state_to_restore = None
