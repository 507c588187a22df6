from .arch_meta_hook import PeLKArchMetaHook
from .checkpoint_errors import (UnreadableCheckpoint,
                                patch_checkpoint_read_errors)
from .compat import check_pkg_resources, patch_mmengine_checkpoint_loaders
from .lr_decay_optimizer_constructor import \
    PeLKLearningRateDecayOptimizerConstructor
from .resumable_checkpoint_hook import ResumableCheckpointHook

patch_mmengine_checkpoint_loaders()
patch_checkpoint_read_errors()
check_pkg_resources()

__all__ = [
    'PeLKLearningRateDecayOptimizerConstructor', 'PeLKArchMetaHook',
    'UnreadableCheckpoint', 'ResumableCheckpointHook'
]
