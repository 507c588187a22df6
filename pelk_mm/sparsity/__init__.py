"""Sparse training: SLaK-style masks and the mmengine hook applying them."""
from .densities import (densities_to_counts, erk_densities, snip_densities,
                        uniform_densities)
from .hook import DynamicSparsityHook, cosine_prune_rate
from .masks import SparsityMasks, count_parameters, select_parameters

__all__ = [
    'SparsityMasks', 'count_parameters', 'select_parameters',
    'DynamicSparsityHook', 'cosine_prune_rate', 'erk_densities',
    'uniform_densities', 'snip_densities', 'densities_to_counts'
]
