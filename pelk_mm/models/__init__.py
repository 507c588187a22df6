from .checkpoint_loading import load_backbone
from .checkpoint_meta import PeLKCheckpointMismatch, add_arch_meta
from .pelk import PeLK, PeLKBlock

__all__ = [
    'PeLK', 'PeLKBlock', 'PeLKCheckpointMismatch', 'add_arch_meta',
    'load_backbone'
]
