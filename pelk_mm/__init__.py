"""pelk-mm: PeLK (CVPR 2024) as an OpenMMLab plugin.

Importing this package (directly or through
``custom_imports=dict(imports=['pelk_mm'])``) registers everything it offers in
mmengine's root registries, which the mmseg, mmdet and mmpretrain registries
reach as their parent: the ``PeLK`` backbone, the ``DynamicSparsityHook``, the
optimizer constructors and the demo datasets. It also makes mmengine 0.10.7
load its own checkpoints on torch >= 2.6 (see :mod:`pelk_mm.engine.compat`).
"""
from .datasets import *  # noqa: F401,F403
from .engine import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .ops import *  # noqa: F401,F403
from .sparsity import *  # noqa: F401,F403
from .version import __version__  # noqa: F401
