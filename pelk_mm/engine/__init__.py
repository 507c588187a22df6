from .arch_meta_hook import PeLKArchMetaHook
from .compat import check_pkg_resources, patch_mmengine_loaders
from .lr_decay_optimizer_constructor import \
    PeLKLearningRateDecayOptimizerConstructor
from .resumable_checkpoint_hook import ResumableCheckpointHook

patch_mmengine_loaders()
check_pkg_resources()

__all__ = [
    'PeLKLearningRateDecayOptimizerConstructor', 'PeLKArchMetaHook',
    'ResumableCheckpointHook'
]
