"""Loading weights into a model: a backbone's from any checkpoint, a whole
model's strictly.

Both read with :func:`~pelk_mm.checkpoint.reading.read_checkpoint` (weights
only, hash-checked URLs) and load with mmengine's ``load_state_dict``, which
calls PeLK's own check first
(:func:`~pelk_mm.checkpoint.arch_record.check_state_dict`). Unlike stripping
the ``backbone.`` prefix by hand, :func:`backbone_state_dict` keeps the
checkpoint's arch record, so that a PeLK refusing the weights names the arch
they were made for. Any backbone can be loaded; only a PeLK reads the record.
"""
from collections import OrderedDict
from typing import Mapping, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import PretrainedInit
from mmengine.runner import load_state_dict

from .arch_record import (ARCH_META_KEY, PeLKCheckpointMismatch,
                          find_arch_record, sub_state_dict)
from .reading import read_checkpoint

#: Where a backbone's keys sit in a whole-model checkpoint (mm models,
#: optionally saved from a DDP wrapper), tried in this order when no
#: prefix is given.
BACKBONE_PREFIXES = ('backbone.', 'module.backbone.')


def state_dict_of(checkpoint, name: str = 'the checkpoint') -> Mapping:
    """The state dict of a loaded checkpoint (its ``state_dict`` or itself).

    Raises:
        TypeError: ``checkpoint`` is not a dict (e.g. a pickled tensor or
            model), or its ``state_dict`` is not.
    """
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(
        checkpoint, Mapping) else checkpoint
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f'{name} holds a {type(state_dict).__name__}, not a checkpoint: '
            'expected a dict of tensors (a state dict) or a dict with one '
            "under 'state_dict', as torch.save(model.state_dict()) and "
            "mmengine's checkpoints hold.")
    return state_dict


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
        TypeError: ``checkpoint`` is not a dict.
        PeLKCheckpointMismatch: no key starts with ``prefix``.
    """
    state_dict = state_dict_of(checkpoint, name)
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


def _check_some_key_fits(backbone: nn.Module, own: Mapping, whole: Mapping,
                         prefix: str, name: str) -> None:
    """Refuse weights of which no key is the backbone's, naming the prefix
    under which its keys are when there is one."""
    keys = backbone.state_dict().keys()
    if any(k in keys for k in own):
        return
    hint = next((p for p in BACKBONE_PREFIXES if p != prefix and any(
        k.startswith(p) and k[len(p):] in keys for k in whole)), None)
    raise PeLKCheckpointMismatch(
        f'No key of {name} under prefix {prefix!r} is a key of this '
        f'{type(backbone).__name__} (first keys: {list(own)[:3]}); nothing '
        'was loaded.' +
        (f' Its backbone keys are under {hint!r}: set prefix={hint!r}.'
         if hint else ''))


def load_backbone(backbone: nn.Module,
                  checkpoint: str,
                  prefix: Optional[str] = None,
                  strict: bool = True,
                  map_location: str = 'cpu',
                  context: str = 'Checkpoint') -> dict:
    """Load a backbone from a backbone or whole-model checkpoint.

    Args:
        backbone (nn.Module): The backbone to load into.
        checkpoint (str): Path or URL (:func:`read_checkpoint`).
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
        PeLKCheckpointMismatch: no key under ``prefix`` or none of the
            backbone's (the message names the prefix to set when the
            backbone's keys are under another one), or the weights do not
            fit a PeLK (the message names the keys without the prefix).
        RuntimeError: with ``strict``, missing or unexpected keys.
        TypeError, ValueError, OSError: see :func:`read_checkpoint` and
            :func:`state_dict_of`.
    """
    print_log(f'load model from: {checkpoint}', logger='current')
    loaded = read_checkpoint(checkpoint, map_location)
    own, prefix = backbone_state_dict(loaded, prefix, name=checkpoint)
    _check_some_key_fits(backbone, own, state_dict_of(loaded), prefix,
                         checkpoint)
    try:
        load_state_dict(backbone, own, strict=strict, logger='current')
    except PeLKCheckpointMismatch as e:
        raise PeLKCheckpointMismatch(
            f'{context} {checkpoint}, keys under prefix {prefix!r} '
            f'(listed without it):\n{e}') from None
    return loaded


def load_strictly(model: nn.Module, checkpoint: str) -> dict:
    """Load ``checkpoint`` (path or URL) into ``model``, every key and shape.

    Returns:
        dict: The whole checkpoint (``state_dict``, ``meta``, ...).

    Raises:
        RuntimeError: missing or unexpected keys, or a shape mismatch.
        PeLKCheckpointMismatch: the weights do not fit a PeLK of ``model``.
    """
    loaded = read_checkpoint(checkpoint)
    load_state_dict(model, state_dict_of(loaded, checkpoint), strict=True)
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
