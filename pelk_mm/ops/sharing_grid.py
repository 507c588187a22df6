"""Sharing grids of peripheral convolution (PeLK, Eq. 1-2).

A peripheral convolution parameterises a depthwise ``K x K`` kernel with a
small ``k' x k'`` grid of weights ``w_theta``. A *sharing grid*
``S = (s_0, ..., s_{k'-1})`` with ``sum(S) == K`` splits the rows (and, the
same way, the columns) of the kernel into bands: row band ``a`` covers rows
``[s_0 + ... + s_{a-1}, s_0 + ... + s_a)``, and every tap of block ``(a, b)``
uses ``w_theta(a, b)`` (Eq. 1). For example the 3-band grid ``(2, 1, 2)``
parameterises a 5 x 5 kernel with 3 x 3 weights.

The peripheral grid of the paper (Eq. 2) is symmetric around the centre tap:
with centre radius ``r_c = center_size // 2`` and base ``m``, the band at
distance ``|i|`` from the centre is 1 tap wide for ``|i| <= r_c`` and
``m ** (|i| - r_c)`` taps wide beyond, walking outwards until the half kernel
(``(K + 1) // 2`` taps, centre included) is used up; the outermost band takes
whatever remains. ``sharing_grid(31, 5)`` is
``(7, 4, 2, 1, 1, 1, 1, 1, 2, 4, 7)``.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def _check_kernel_size(kernel_size: int, name: str = 'kernel_size') -> int:
    """Validate a kernel size: a positive odd integer ("same" conv)."""
    if (isinstance(kernel_size, bool) or not isinstance(kernel_size, int)
            or kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f'`{name}` must be a positive odd integer '
                         f'(1, 3, 5, ...), got {kernel_size!r}')
    return kernel_size


def sharing_grid(kernel_size: int,
                 center_size: int = 5,
                 base: int = 2) -> Tuple[int, ...]:
    """The peripheral sharing grid of Eq. 2.

    Args:
        kernel_size (int): Side ``K`` of the dense kernel; odd.
        center_size (int): Side of the central block of unshared taps
            (``2 * r_c + 1``); odd and at most ``kernel_size``. Defaults to 5.
        base (int): Growth base ``m`` of the band widths beyond the centre;
            an integer >= 2. Defaults to 2.

    Returns:
        tuple[int, ...]: The full symmetric grid (outermost band first),
        ``k'`` positive widths summing to ``kernel_size``.

    Example:
        >>> sharing_grid(51, center_size=5)
        (9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9)
    """
    _check_kernel_size(kernel_size)
    if (isinstance(center_size, bool) or not isinstance(center_size, int)
            or center_size < 1 or center_size % 2 == 0
            or center_size > kernel_size):
        raise ValueError('`center_size` must be a positive odd integer no '
                         f'larger than kernel_size={kernel_size} '
                         f'(1, 3, ..., {kernel_size}), got {center_size!r}')
    if isinstance(base, bool) or not isinstance(base, int) or base < 2:
        raise ValueError(
            f'`base` must be an integer >= 2 (2, 3, ...), got {base!r}')
    center_radius = center_size // 2
    remaining = (kernel_size + 1) // 2  # half kernel, centre tap included
    half = []  # centre first, walking outwards
    distance = 0
    while remaining > 0:
        width = 1 if distance <= center_radius else base**(
            distance - center_radius)
        width = min(width, remaining)
        half.append(width)
        remaining -= width
        distance += 1
    return tuple(half[:0:-1] + half)


def check_grid(grid: Sequence[int],
               kernel_size: Optional[int] = None) -> Tuple[int, ...]:
    """Validate an explicit sharing grid (e.g. one of the paper's ablations).

    Args:
        grid (Sequence[int]): Band widths, outermost first; any positive
            integers summing to ``kernel_size`` (symmetry is not required).
        kernel_size (int, optional): Side ``K`` of the dense kernel; odd.
            None accepts any grid with an odd sum. Defaults to None.

    Returns:
        tuple[int, ...]: The grid as a tuple of ints.
    """
    if kernel_size is not None:
        _check_kernel_size(kernel_size)
    try:
        widths = tuple(grid)
    except TypeError:
        raise ValueError('`grid` must be a sequence of positive integers '
                         f'summing to kernel_size, got {grid!r}') from None
    if not widths or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1
            for w in widths):
        raise ValueError('`grid` must be a non-empty sequence of positive '
                         f'integers (widths >= 1), got {grid!r}')
    if kernel_size is None:
        _check_kernel_size(sum(widths), name='sum(grid)')
    elif sum(widths) != kernel_size:
        raise ValueError(f'`grid` must sum to kernel_size={kernel_size}, '
                         f'got {widths} (sum {sum(widths)})')
    return widths


def expand_weight(weight: Tensor, grid: Sequence[int]) -> Tensor:
    """Materialise the dense kernel of a peripheral convolution (Eq. 1).

    Args:
        weight (Tensor): Compact weights ``w_theta`` of shape
            ``(C, 1, k', k')`` (depthwise-conv layout).
        grid (Sequence[int]): Sharing grid of ``k'`` band widths.

    Returns:
        Tensor: Dense depthwise kernel of shape ``(C, 1, K, K)`` with
        ``K = sum(grid)``; block ``(a, b)`` repeats ``weight[:, :, a, b]``.
    """
    widths = tuple(grid)
    if weight.dim() != 4 or weight.shape[2:] != (len(widths), len(widths)):
        raise ValueError(
            '`weight` must have shape (C, 1, k\', k\') with '
            f"k'=len(grid)={len(widths)}, got {tuple(weight.shape)}")
    repeats = torch.tensor(widths, device=weight.device)
    dense = weight.repeat_interleave(repeats, dim=2, output_size=sum(widths))
    return dense.repeat_interleave(repeats, dim=3, output_size=sum(widths))
