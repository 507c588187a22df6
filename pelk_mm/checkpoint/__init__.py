"""Checkpoints of PeLK: reading, the arch record, strict loading, conversion.

- :mod:`.reading`: :func:`read_checkpoint`, the one way pelk-mm reads a
  checkpoint (weights only, hash-checked URLs, :class:`UnreadableCheckpoint`),
  and :func:`use_safe_url_loader`, the switch that gives mmengine's URL
  loader the same policy;
- :mod:`.arch_record`: the record every PeLK state dict carries
  (:data:`ARCH_FIELDS`) and the check of incoming weights
  (:class:`PeLKCheckpointMismatch`);
- :mod:`.loading`: :func:`load_backbone` (a backbone from a backbone or
  whole-model checkpoint, ``init_cfg=dict(type='Pretrained')``) and
  :func:`load_strictly` (a whole model, every key);
- :mod:`.conversion`: classification to downstream backbone checkpoints
  (``tools/model_converters/cls2backbone.py``).

What importing :mod:`pelk_mm` changes in mmengine's checkpoint loading is
in :mod:`pelk_mm.engine.compat`.
"""
from .arch_record import (ARCH_FIELDS, ARCH_META_KEY, ArchRecordMixin,
                          PeLKCheckpointMismatch, add_arch_meta,
                          check_state_dict, find_arch_record)
from .conversion import to_backbone_checkpoint
from .loading import load_backbone, load_strictly
from .reading import UnreadableCheckpoint, read_checkpoint, use_safe_url_loader

__all__ = [
    'ARCH_FIELDS', 'ARCH_META_KEY', 'ArchRecordMixin',
    'PeLKCheckpointMismatch', 'UnreadableCheckpoint', 'add_arch_meta',
    'check_state_dict', 'find_arch_record', 'load_backbone', 'load_strictly',
    'read_checkpoint', 'to_backbone_checkpoint', 'use_safe_url_loader'
]
