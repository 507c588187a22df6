"""The OpenMMLab side of PeLK: the registered backbone and config -> model.

:class:`PeLK` (``MODELS`` name ``'PeLK'``) is the torch network
:class:`pelk_mm.models.PeLK` with mmengine's ``init_cfg``, the checkpoint
checks and an error naming keys a base config's backbone left behind;
:mod:`.builder` loads configs and builds their models for the tools, tests
and benchmarks. The checkpoint policy itself is :mod:`pelk_mm.checkpoint`.
Needs mmengine, mmcv and mmpretrain.
"""
from .backbone import PeLK

__all__ = ['PeLK']
