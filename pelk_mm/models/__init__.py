"""The PeLK network in plain PyTorch: needs torch alone, as :mod:`pelk_mm.ops`.

:class:`PeLK` and :class:`PeLKBlock` are the network; :mod:`.arch` its arch
table, :mod:`.folding` its deploy forms, :mod:`.param_groups` where each
parameter sits (layer ids, weight-decay set), :mod:`.layers` the norm and
stochastic depth it uses. The OpenMMLab backbone, registered as ``PeLK``, is
:class:`pelk_mm.mm.PeLK`, a subclass with the same state-dict keys.
"""
from .arch import ARCH_SETTINGS, parse_arch
from .folding import DEPLOY_MODES
from .layers import DropPath, LayerNorm2d
from .pelk import PeLK, PeLKBlock

__all__ = [
    'PeLK', 'PeLKBlock', 'ARCH_SETTINGS', 'DEPLOY_MODES', 'parse_arch',
    'DropPath', 'LayerNorm2d'
]
