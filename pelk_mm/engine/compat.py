"""Compatibility of mmengine 0.10.7 with torch >= 2.6 checkpoint loading.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: it only
unpickles tensors, containers, primitive types and the globals allowed by
:func:`torch.serialization.safe_globals`. mmengine 0.10.7 calls
``torch.load(filename, map_location=...)`` without ``weights_only`` (fixed only
on mmengine's unreleased main, mmengine issue #1655), so ``--resume``,
``load_from`` and ``init_model`` fail on mmengine's *own* checkpoints: their
``message_hub`` entry holds :class:`mmengine.logging.HistoryBuffer` objects,
backed by numpy arrays and pickling their statistics as bound methods
(``getattr(buffer, 'mean')``).

The fix is scoped to mmengine's checkpoint loaders and to exactly those
globals: :func:`patch_mmengine_checkpoint_loaders` re-registers every
:class:`~mmengine.runner.CheckpointLoader` scheme so that it loads inside
``torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS)``.
``weights_only`` stays on everywhere: a checkpoint carrying any other pickled
object is still refused, and a plain ``torch.load`` elsewhere in the process
is not affected. Importing :mod:`pelk_mm` applies the patch once.

Checkpoints by URL (``http://`` / ``https://``: ``load_from``,
``tools/test.py CONFIG URL``, ``init_cfg=dict(type='Pretrained',
checkpoint=URL)``): mmengine's loader calls
``torch.hub.load_state_dict_from_url`` with its defaults, ``check_hash=False``
and ``weights_only=False``, so the sha256 prefix in a released file's name
(``name_YYYYMMDD-<sha256[:8]>.pth``) is ignored and the downloaded file may
unpickle anything. :func:`load_from_http` replaces it with the same download
(torch hub cache, rank 0 first under DDP) but ``check_hash=True`` (torch.hub
compares the file's sha256 with the hex digits after the last ``-`` of the
name, when the name has them, and refuses a mismatch with a RuntimeError,
deleting the download) and ``weights_only=True`` with the globals above.

mmengine also needs ``pkg_resources`` (setuptools < 81) to resolve ``mmseg::``
/ ``mmdet::`` / ``mmpretrain::`` base configs; :func:`check_pkg_resources`
turns the bare ``ModuleNotFoundError`` into an actionable message.
"""
import functools
import importlib.util
import io
import os
import pickle
import warnings

import numpy as np
import torch
from mmengine.dist import get_dist_info
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader


def _numpy_globals() -> list:
    """Numpy callables and classes that pickled arrays, dtypes, scalars use."""
    try:  # numpy >= 2 moved the private module
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    dtype_classes = {
        type(np.dtype(name))
        for name in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8',
                     'float16', 'float32', 'float64')
    }
    return [
        multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype,
        *sorted(dtype_classes, key=lambda t: t.__name__)
    ]


#: What an mmengine checkpoint pickles besides tensors and containers.
MMENGINE_CHECKPOINT_GLOBALS = [HistoryBuffer, getattr, *_numpy_globals()]


def _with_mmengine_globals(loader):
    """Wrap one checkpoint loader so it unpickles mmengine's own globals."""
    if getattr(loader, '_pelk_mm_patched', False):
        return loader

    @functools.wraps(loader)  # keeps __name__, which mmengine logs
    def load(filename, map_location=None, *args, **kwargs):
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            return loader(filename, map_location, *args, **kwargs)

    load._pelk_mm_patched = True
    return load


def load_from_http(filename: str,
                   map_location=None,
                   model_dir=None,
                   progress: bool = os.isatty(0)):
    """mmengine's ``http(s)://`` loader, hash-checked, weights only.

    As mmengine's: downloads into the torch hub cache (``model_dir``, default
    ``$TORCH_HOME/hub/checkpoints``), local rank 0 first in distributed runs.
    Unlike it, the sha256 prefix in the file name is checked on download and
    the file is loaded with ``weights_only=True``.

    Raises:
        RuntimeError: the downloaded file's sha256 does not start with the
            hash in its name (``invalid hash value``).
    """

    def load():
        return torch.hub.load_state_dict_from_url(
            filename,
            model_dir=model_dir,
            map_location=map_location,
            progress=progress,
            check_hash=True,
            weights_only=True)

    rank, world_size = get_dist_info()
    if rank == 0:
        checkpoint = load()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load()
    return checkpoint


def _torch_load_defaults_to_weights_only() -> bool:
    """Whether a plain ``torch.load`` refuses a foreign pickled object."""
    buffer = io.BytesIO()
    torch.save(_Foreign(), buffer)
    buffer.seek(0)
    try:
        torch.load(buffer)
    except pickle.UnpicklingError:
        return True
    return False


class _Foreign:
    """A class no weights-only unpickler allows."""


#: torch >= 2.6: ``torch.load`` (so mmengine's loaders) is weights-only by
#: default. Before, mmengine's loaders unpickle anything, as upstream.
TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT = _torch_load_defaults_to_weights_only()


def load_weights_only(filename: str, map_location=None):
    """``torch.load(filename, weights_only=True)`` on every torch.

    mmengine's own globals (:data:`MMENGINE_CHECKPOINT_GLOBALS`) are allowed
    where torch can allow-list them (``safe_globals``, torch >= 2.5); older
    torch refuses mmengine's training checkpoints (their ``message_hub``).

    Raises:
        pickle.UnpicklingError: the file pickles an object not allowed.
    """
    if hasattr(torch.serialization, 'safe_globals'):
        with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    return torch.load(filename, map_location=map_location, weights_only=True)


def patch_mmengine_checkpoint_loaders() -> None:
    """Make every registered mmengine checkpoint scheme load mmengine globals.

    Also replaces the ``http://`` / ``https://`` scheme by
    :func:`load_from_http`. Idempotent. The globals are not registered on
    torch without ``safe_globals`` (< 2.5), where ``torch.load`` does not
    restrict unpickling by default anyway.
    """
    CheckpointLoader.register_scheme(('http://', 'https://'),
                                     load_from_http,
                                     force=True)
    if not hasattr(torch.serialization, 'safe_globals'):
        return
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        CheckpointLoader.register_scheme(
            prefix, _with_mmengine_globals(loader), force=True)


def check_pkg_resources() -> None:
    """Warn early when ``pkg_resources`` is missing (setuptools >= 81).

    mmengine imports it to locate the configs of installed OpenMMLab packages,
    so ``_base_ = ['mmseg::...']`` would otherwise fail deep inside
    ``Config.fromfile`` with a bare ``ModuleNotFoundError``.
    """
    if importlib.util.find_spec('pkg_resources') is None:
        warnings.warn(
            "pkg_resources is not importable (setuptools >= 81 removed it); "
            "mmengine needs it for 'mmseg::' / 'mmdet::' / 'mmpretrain::' "
            "base configs. Install it with: pip install 'setuptools<81'",
            stacklevel=2)
