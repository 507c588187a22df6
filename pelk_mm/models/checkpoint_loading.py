"""Loading a backbone's weights from a backbone or whole-model checkpoint.

:func:`load_backbone` is the one way this project loads backbone weights:
``init_cfg=dict(type='Pretrained')`` (through
:meth:`pelk_mm.PeLK.init_weights`) and the tools (``visualize_erf.py``,
``pytorch2onnx.py --backbone``, ``cls2backbone.py`` through
:func:`backbone_state_dict`) use it. Unlike
stripping the ``backbone.`` prefix by hand, it keeps the checkpoint's arch
record (:mod:`pelk_mm.models.checkpoint_meta`), so that a PeLK refusing the
weights names the arch they were made for. It works for any backbone; only a
PeLK reads the record.
"""
from collections import OrderedDict
from typing import Mapping, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import PretrainedInit
from mmengine.runner import CheckpointLoader, load_state_dict

from .checkpoint_meta import (ARCH_META_KEY, PeLKCheckpointMismatch,
                              find_arch_record, sub_state_dict)

#: Where a backbone's keys sit in a whole-model checkpoint (mm models,
#: optionally saved from a DDP wrapper), tried in this order when no
#: prefix is given.
BACKBONE_PREFIXES = ('backbone.', 'module.backbone.')


def _prefix_of(state_dict: Mapping, prefix: Optional[str]) -> str:
    """The prefix to load from: ``prefix`` with a trailing dot, or found."""
    if prefix:
        return prefix if prefix.endswith('.') else prefix + '.'
    if prefix is None:
        for candidate in BACKBONE_PREFIXES:
            if any(k.startswith(candidate) for k in state_dict):
                return candidate
    # the backbone's own keys, behind a DDP `module.` as mmengine strips it
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return 'module.'
    return ''


def backbone_state_dict(
        checkpoint: Mapping,
        prefix: Optional[str] = None,
        name: str = 'the checkpoint') -> Tuple['OrderedDict', str]:
    """The backbone's weights in a checkpoint, with their arch record.

    Args:
        checkpoint (Mapping): A loaded checkpoint (``state_dict``, ``meta``,
            ...) or a bare state dict.
        prefix (str, optional): Where the backbone's keys start, e.g.
            ``'backbone.'`` (a trailing dot is added). ``''``: the keys are
            the backbone's own (a ``module.`` on every key, from DDP, is
            stripped). None: the first of :data:`BACKBONE_PREFIXES` that a
            key starts with, else as ``''``.
        name (str): How the error names the checkpoint (e.g. its path).

    Returns:
        tuple: the weights without the prefix (an ``OrderedDict`` whose
        ``_metadata`` holds the arch record at ``''`` when the checkpoint has
        one, in its state dict's metadata or in ``meta['pelk_arch']``), and
        the prefix they were under.

    Raises:
        PeLKCheckpointMismatch: no key starts with ``prefix``.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    prefix = _prefix_of(state_dict, prefix)
    own = sub_state_dict(state_dict, prefix)
    if not own:
        raise PeLKCheckpointMismatch(
            f'No key of {name} starts with prefix {prefix!r} '
            f'(first keys: {list(state_dict)[:5]})')
    record = find_arch_record(checkpoint, prefix[:-1])
    if record is not None:
        own._metadata.setdefault('', {})[ARCH_META_KEY] = record
    return own, prefix


def load_backbone(backbone: nn.Module,
                  checkpoint: str,
                  prefix: Optional[str] = None,
                  strict: bool = True,
                  map_location: str = 'cpu',
                  context: str = 'Checkpoint') -> dict:
    """Load a backbone from a backbone or whole-model checkpoint.

    The checkpoint is read with mmengine's ``CheckpointLoader`` (paths and
    URLs; ``weights_only`` with :mod:`pelk_mm` imported) and its backbone
    weights taken by :func:`backbone_state_dict`, arch record included.
    A PeLK checks them before copying anything
    (:func:`~pelk_mm.models.checkpoint_meta.check_state_dict`).

    Args:
        backbone (nn.Module): The backbone to load into.
        checkpoint (str): Path or URL.
        prefix (str, optional): See :func:`backbone_state_dict`.
        strict (bool): Refuse missing and unexpected keys too (mmengine's
            ``load_state_dict``); with False they are logged. Defaults to
            True.
        map_location (str): Where to load the tensors. Defaults to 'cpu'.
        context (str): The first word of a mismatch message, e.g.
            ``'Pretrained'``. Defaults to ``'Checkpoint'``.

    Returns:
        dict: The whole checkpoint as read.

    Raises:
        PeLKCheckpointMismatch: no key under ``prefix``, or the weights do
            not fit a PeLK (the message names the keys without the prefix).
        RuntimeError: with ``strict``, missing or unexpected keys.
    """
    print_log(f'load model from: {checkpoint}', logger='current')
    loaded = CheckpointLoader.load_checkpoint(
        checkpoint, map_location=map_location)
    own, prefix = backbone_state_dict(loaded, prefix, name=checkpoint)
    try:
        load_state_dict(backbone, own, strict=strict, logger='current')
    except PeLKCheckpointMismatch as e:
        raise PeLKCheckpointMismatch(
            f'{context} {checkpoint}, keys under prefix {prefix!r} '
            f'(listed without it):\n{e}') from None
    return loaded


def is_pretrained(init_cfg: Optional[dict]) -> bool:
    """Whether one ``init_cfg`` entry is ``Pretrained``."""
    return bool(init_cfg) and init_cfg['type'] in ('Pretrained',
                                                   PretrainedInit)


def load_pretrained(backbone: nn.Module, init_cfg: dict) -> None:
    """Apply one ``init_cfg=dict(type='Pretrained', checkpoint=...)`` entry.

    With :func:`load_backbone`: the keys under ``prefix`` (optional, e.g.
    ``'backbone.'`` for a classifier checkpoint; without it the keys are the
    backbone's own) are loaded with the checkpoint's arch record; keys
    outside it (heads) are ignored. Unlike mmengine's ``Pretrained`` with
    ``prefix``, which keeps only the tensors, a PeLK refusing the weights can
    name the arch they were made for.

    Args:
        backbone (nn.Module): The backbone to load into.
        init_cfg (dict): ``checkpoint`` (path or URL), optional ``prefix``
            and ``map_location`` (default ``'cpu'``).
    """
    load_backbone(
        backbone,
        init_cfg['checkpoint'],
        prefix=init_cfg.get('prefix') or '',
        strict=False,
        map_location=init_cfg.get('map_location', 'cpu'),
        context='Pretrained')
