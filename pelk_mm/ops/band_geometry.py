"""Geometry of a sharing grid on a zero-padded map, and the mean split.

Helpers shared by the fast exact peripheral convolutions
(:mod:`pelk_mm.ops.fft_conv`, :mod:`pelk_mm.ops.blocksum_conv`).

Notation: ``grid = (s_0, ..., s_{k'-1})`` with ``K = sum(grid)`` odd and
``P = K // 2``; band ``a`` covers the kernel taps ``u`` in
``[e_a, e_{a+1})`` with the band edges ``e_0 = 0, e_{a+1} = e_a + s_a``.
The convolution is the depthwise "same" cross-correlation of ``F.conv2d``::

    y_c(i, j) = sum_{a, b} w_c(a, b) sum_{u in band a, v in band b}
                x_c(i + u - P, j + v - P)          (x = 0 outside the map)

It is linear in ``x``, so with the per-map mean ``m = mean(x)``::

    y = conv(x - m) + m * conv(1)

``conv(1)`` (the *constant response*) only counts the taps of each band that
land inside the map: ``conv(1)_c = R w_c T^T`` with ``R[i, a]`` the number of
rows of band ``a`` inside the map for output row ``i`` (:func:`inside_counts`).
Subtracting the mean before a summed-area table or an FFT keeps their
round-off proportional to the spread of ``x`` instead of its magnitude.
"""
from typing import Sequence, Tuple

import torch
from torch import Tensor


def band_edges(grid: Sequence[int]) -> Tuple[int, ...]:
    """Band edges ``(e_0 = 0, e_1, ..., e_{k'} = K)`` of a sharing grid."""
    edges = [0]
    for width in grid:
        edges.append(edges[-1] + width)
    return tuple(edges)


def band_indicator(grid: Sequence[int], like: Tensor) -> Tensor:
    """0/1 matrix ``(k', K)`` whose row ``a`` marks the taps of band ``a``
    (``expand_weight`` is ``A^T w A``, its adjoint ``A dW A^T``)."""
    band_of_tap = torch.tensor(
        [band for band, width in enumerate(grid) for _ in range(width)],
        device=like.device)  # from the Python grid: a constant under compile
    bands = torch.arange(len(grid), device=like.device)[:, None]
    return (band_of_tap[None, :] == bands).to(like.dtype)


def clamped_offsets(grid: Sequence[int], size: int, like: Tensor) -> Tensor:
    """Index of every band edge for every output position, clamped to a map.

    Args:
        grid (Sequence[int]): Sharing grid.
        size (int): Length ``n`` of the map along one axis.
        like (Tensor): Tensor giving the device.

    Returns:
        Tensor: int64 ``(k' + 1, n)``, entry ``[p, i] = clamp(i + e_p - P,
        0, n)``: the row of a zero-padded summed-area table (leading zero row
        included) at which band edge ``p`` of output ``i`` falls.
    """
    edges = torch.tensor(band_edges(grid), device=like.device)
    position = torch.arange(size, device=like.device)
    return (position[None, :] + edges[:, None] - sum(grid) // 2).clamp(0, size)


def inside_counts(grid: Sequence[int], size: int, like: Tensor) -> Tensor:
    """Number of taps of each band that fall inside the map.

    Args:
        grid (Sequence[int]): Sharing grid.
        size (int): Length ``n`` of the map along one axis.
        like (Tensor): Tensor giving the device and dtype.

    Returns:
        Tensor: ``(n, k')``, entry ``[i, a] = #{u in band a :
        0 <= i + u - P < n}``.
    """
    offsets = clamped_offsets(grid, size, like)
    return (offsets[1:] - offsets[:-1]).t().to(like.dtype)


def constant_response(weight: Tensor, grid: Sequence[int], height: int,
                      width: int) -> Tensor:
    """``conv(1)``: the output for an all-ones map, ``R w_c T^T``.

    Args:
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid.
        height (int): Map height ``H``.
        width (int): Map width ``W``.

    Returns:
        Tensor: ``(C, H, W)``.
    """
    rows = inside_counts(grid, height, weight)
    cols = inside_counts(grid, width, weight)
    return rows @ weight[:, 0] @ cols.t()


def constant_response_weight_grad(grad_sum: Tensor,
                                  grid: Sequence[int]) -> Tensor:
    """Adjoint of :func:`constant_response` w.r.t. the weight.

    Args:
        grad_sum (Tensor): ``(C, H, W)``, the output gradient already weighted
            by the per-map mean and summed over the batch.
        grid (Sequence[int]): Sharing grid.

    Returns:
        Tensor: ``(C, 1, k', k')``, ``R^T grad_sum_c T``.
    """
    rows = inside_counts(grid, grad_sum.shape[-2], grad_sum)
    cols = inside_counts(grid, grad_sum.shape[-1], grad_sum)
    return (rows.t() @ grad_sum @ cols).unsqueeze(1)


def flip_kernel(weight: Tensor,
                grid: Sequence[int]) -> Tuple[Tensor, Tuple[int, ...]]:
    """The kernel rotated by 180 degrees: the adjoint of the correlation.

    ``conv(., weight, grid)^T = conv(., *flip_kernel(weight, grid))`` for the
    "same" correlation with odd ``K`` (the input gradient).
    """
    return weight.flip(-2, -1), tuple(reversed(tuple(grid)))
