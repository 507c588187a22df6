"""What importing :mod:`pelk_mm` changes in the host's mmengine, and why.

The rule: besides registering its own classes, ``import pelk_mm`` changes
only what mmengine 0.10.7 needs to work as designed on the installed torch,
and nothing that changes the outcome of a load that succeeds without it.

On torch >= 2.6 only (:data:`~pelk_mm.checkpoint.reading.
TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT`), and only the ``CheckpointLoader``
schemes in :data:`PATCHED_SCHEMES` (local paths, ``s3://``, ``petrel://``,
``pavi://``, ``open-mmlab://``, ``openmmlab://``), while their loader is still
mmengine's own function, are wrapped by :func:`patch_mmengine_loaders`:

1. Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, and
   these mmengine loaders call ``torch.load(file, map_location=...)``
   without ``weights_only`` (fixed on mmengine's unreleased main, mmengine
   issue #1655). So ``--resume``, ``load_from`` and ``init_model`` fail on
   mmengine's *own* checkpoints, whose ``message_hub`` holds
   :class:`~mmengine.logging.HistoryBuffer` objects (numpy arrays, bound
   methods). The wrapper loads inside
   ``torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS)``: exactly
   those globals are allowed, ``weights_only`` stays on, any other pickled
   object is still refused, and a plain ``torch.load`` elsewhere is not
   affected. Allowing more globals cannot change a load that succeeds.
2. The same default makes a local file that is truncated or not a
   checkpoint fail with torch's advice to re-run with
   ``weights_only=False``, which no unpickler can help; the wrapper raises
   :class:`~pelk_mm.checkpoint.reading.UnreadableCheckpoint` (a
   ``ValueError``) naming the file instead. Only the exception of a load
   that fails changes (its type: ``ValueError`` instead of ``RuntimeError``
   / ``UnpicklingError`` / ``OSError`` / ``EOFError``).

Nothing else: on torch < 2.6 no loader is replaced; the ``http://`` /
``https://``, ``torchvision://``, ``modelzoo://`` and ``mmcls://`` loaders
(``torch.hub``, which is not weights-only by default) are never replaced, so
a URL checkpoint that loads without pelk-mm loads with it. The hash-checked,
weights-only URL policy is opt-in:
:func:`pelk_mm.checkpoint.use_safe_url_loader` (pelk-mm's ``tools/train.py``
and ``tools/test.py`` call it; what pelk-mm reads itself goes through
:func:`pelk_mm.checkpoint.read_checkpoint`).

mmengine also needs ``pkg_resources`` (setuptools < 81) to resolve ``mmseg::``
/ ``mmdet::`` / ``mmpretrain::`` base configs; :func:`check_pkg_resources`
only warns when it is missing.
"""
import functools
import importlib.util
import pickle
import warnings

import torch
from mmengine.runner import CheckpointLoader
from mmengine.runner import checkpoint as mmengine_checkpoint

from ..checkpoint.reading import (MMENGINE_CHECKPOINT_GLOBALS,
                                  TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT,
                                  is_unreadable, unreadable_error)

#: ``{scheme: name of mmengine's loader}`` of the schemes whose loader calls
#: ``torch.load`` with torch's default ``weights_only``.
PATCHED_SCHEMES = {
    '': 'load_from_local',
    r'(\S+\:)?s3://': 'load_from_ceph',
    r'(\S+\:)?petrel://': 'load_from_ceph',
    'pavi://': 'load_from_pavi',
    'open-mmlab://': 'load_from_openmmlab',
    'openmmlab://': 'load_from_openmmlab',
}


def _weights_only_compatible(loader):
    """Wrap one of mmengine's loaders as the rule says (patches 1 and 2)."""

    @functools.wraps(loader)  # keeps __name__, which mmengine logs
    def load(filename, map_location=None, *args, **kwargs):
        try:
            with torch.serialization.safe_globals(MMENGINE_CHECKPOINT_GLOBALS):
                return loader(filename, map_location, *args, **kwargs)
        except (OSError, EOFError, RuntimeError,
                pickle.UnpicklingError) as error:
            if is_unreadable(filename, error):
                raise unreadable_error(filename) from None
            raise

    return load


def patch_mmengine_loaders() -> None:
    """Apply the rule of this module: on torch >= 2.6, wrap the loaders of
    :data:`PATCHED_SCHEMES` that are still mmengine's own functions.
    Idempotent (a wrapped loader is no longer mmengine's function)."""
    if not TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT:
        return
    for prefix, name in PATCHED_SCHEMES.items():
        loader = CheckpointLoader._schemes.get(prefix)
        if loader is not None and loader is getattr(mmengine_checkpoint, name):
            CheckpointLoader.register_scheme(
                prefix, _weights_only_compatible(loader), force=True)


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
