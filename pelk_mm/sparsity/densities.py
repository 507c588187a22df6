"""Per-layer density allocation for sparse training (SLaK / RigL).

All functions are pure: they map layer shapes (or saliency scores) to a number
of active weights per layer. The counts always sum to exactly
``round(density * total)`` weights, and each layer's count is within one
weight of its real-valued target (largest-remainder rounding), so the total
density equals the requested one to the weight.
"""
import math
from typing import Dict, Mapping, Sequence

import torch

from .selection import bottom_k

Shapes = Mapping[str, Sequence[int]]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def _check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise ValueError(f'density must be in (0, 1], got {density} '
                         '(density = 1 - sparsity)')


def uniform_densities(shapes: Shapes, density: float) -> Dict[str, float]:
    """Every layer gets the same density."""
    _check_density(density)
    return {name: density for name in shapes}


def erk_densities(shapes: Shapes,
                  density: float,
                  power_scale: float = 1.0) -> Dict[str, float]:
    """Erdős-Rényi-Kernel densities, as SLaK and RigL compute them.

    Each layer's density is ``eps * (sum(shape) / prod(shape)) ** power_scale``
    with one global ``eps`` chosen so that the total number of active weights
    is ``density * total``. Layers whose density would exceed 1 are made dense
    (the one with the largest raw score first) and ``eps`` is recomputed.

    Args:
        shapes: ``{name: shape}`` of the masked weights, e.g. ``(C_out, C_in,
            k, k)`` for a convolution or ``(out, in)`` for a linear layer.
        density: Target total density ``1 - sparsity``, in (0, 1].
        power_scale: Exponent of the raw score (SLaK's ``erk_power_scale``).

    Returns:
        ``{name: density}`` with every value in (0, 1].
    """
    _check_density(density)
    dense = set()
    while True:
        # Active weights left for the sparse layers once the dense ones are
        # full: density * total - sum(dense sizes).
        budget = density * sum(_numel(s) for s in shapes.values())
        divisor = 0.0
        raw = {}
        for name, shape in shapes.items():
            if name in dense:
                budget -= _numel(shape)
            else:
                raw[name] = (sum(shape) / _numel(shape))**power_scale
                divisor += raw[name] * _numel(shape)
        if not raw:
            break
        eps = budget / divisor
        max_raw = max(raw.values())
        if max_raw * eps <= 1.0:
            break
        dense.update(name for name, r in raw.items() if r == max_raw)
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def densities_to_counts(shapes: Shapes, densities: Mapping[str, float],
                        density: float) -> Dict[str, int]:
    """Round per-layer densities to active-weight counts with an exact total.

    The total is ``round(density * sum(numel))``. Each layer first gets
    ``floor(d * numel)`` weights; the weights still missing go one each to the
    layers with the largest fractional remainders (ties by layer order).

    Args:
        shapes: ``{name: shape}``.
        densities: ``{name: density in [0, 1]}`` for the same names, adding
            up to ``density`` overall (as the functions of this module return).
        density: Target total density in (0, 1].

    Returns:
        ``{name: number of active weights}``.
    """
    _check_density(density)
    sizes = {name: _numel(shape) for name, shape in shapes.items()}
    total = round(density * sum(sizes.values()))
    targets = {name: densities[name] * sizes[name] for name in sizes}
    counts = {
        name: min(math.floor(t), sizes[name])
        for name, t in targets.items()
    }
    missing = total - sum(counts.values())
    order = sorted(targets, key=lambda n: targets[n] - counts[n], reverse=True)
    for name in order[:max(missing, 0)]:
        counts[name] += 1
    if not 0 <= missing <= len(order) or any(counts[n] > sizes[n]
                                             for n in sizes):
        raise ValueError(
            f'densities add up to {sum(targets.values())} active weights, '
            f'which cannot be rounded to the total {total} one weight per '
            'layer')
    return counts


def snip_densities(scores: Mapping[str, torch.Tensor],
                   density: float) -> Dict[str, float]:
    """Per-layer densities from SNIP saliency (SLaK's ``snip`` init).

    The ``round(density * total)`` entries with the largest saliency
    ``|w * dL/dw|`` over all layers are kept; a layer's density is the fraction
    of its entries among them. (SLaK then draws the masks at random at these
    densities; see :meth:`SparsityMasks.init`.) A layer may end up with density
    0, as in SLaK.

    Args:
        scores: ``{name: saliency tensor}``, any shapes.
        density: Target total density in (0, 1].

    Returns:
        ``{name: density in [0, 1]}``.
    """
    _check_density(density)
    flat = torch.cat(
        [s.detach().flatten().float().cpu() for s in scores.values()])
    kept = bottom_k(flat.neg_(), round(density * flat.numel()))
    densities = {}
    start = 0
    for name, s in scores.items():
        densities[name] = kept[start:start +
                               s.numel()].sum().item() / s.numel()
        start += s.numel()
    return densities
