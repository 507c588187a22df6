"""pelk-mm: PeLK (CVPR 2024) as an OpenMMLab plugin.

The operator (:mod:`pelk_mm.ops`: ``PeripheralConv2d``, ``sharing_grid``, ...)
needs nothing but torch and is always exported, so ``import pelk_mm`` and
``import pelk_mm.ops`` work in a plain PyTorch environment; so does the
network, :class:`pelk_mm.models.PeLK` (``import pelk_mm.models``).

When mmengine is installed, importing this package (directly or through
``custom_imports=dict(imports=['pelk_mm'])``) also registers everything it
offers in mmengine's root registries, which the mmseg, mmdet and mmpretrain
registries reach as their parent: the ``PeLK`` backbone
(:class:`pelk_mm.mm.PeLK`, which ``pelk_mm.PeLK`` names), the hooks
``DynamicSparsityHook`` and ``PeLKArchMetaHook`` and the optimizer wrapper
constructor ``PeLKLearningRateDecayOptimizerConstructor``. On torch >= 2.6
only, it also makes mmengine 0.10.7 load its own checkpoints; that is all it
changes in mmengine's checkpoint loaders (the rule and its reasons:
:mod:`pelk_mm.engine.compat`). The checkpoint code is in
:mod:`pelk_mm.checkpoint`. That side needs mmcv and
mmpretrain too: if mmengine is there and they are not, the import fails with
their ``ImportError``. The demo data generators (:mod:`pelk_mm.demo`) are
imported only on demand.
"""
import importlib.util

from .ops import *  # noqa: F401,F403
from .version import __version__  # noqa: F401

if importlib.util.find_spec('mmengine') is not None:
    from .checkpoint import *  # noqa: F401,F403
    from .engine import *  # noqa: F401,F403
    from .mm import *  # noqa: F401,F403
    from .models.pelk import PeLKBlock  # noqa: F401
    from .sparsity import *  # noqa: F401,F403
