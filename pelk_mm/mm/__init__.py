"""The OpenMMLab side of PeLK: the registered backbone and config -> model.

:class:`PeLK` (``MODELS`` name ``'PeLK'``) is the torch network
:class:`pelk_mm.models.PeLK` with mmengine's ``init_cfg``, the checkpoint
checks and an error naming keys a base config's backbone left behind;
:mod:`.builder` loads configs and builds their models for the tools, tests
and benchmarks. The checkpoint helpers ``load_backbone``,
``PeLKCheckpointMismatch`` and ``add_arch_meta`` are exported here too.
Needs mmengine, mmcv and mmpretrain.
"""
from ..models.checkpoint_loading import load_backbone
from ..models.checkpoint_meta import PeLKCheckpointMismatch, add_arch_meta
from .backbone import PeLK

__all__ = ['PeLK', 'PeLKCheckpointMismatch', 'add_arch_meta', 'load_backbone']
