"""Exact peripheral convolution by block sums of prefix sums.

Every block ``(a, b)`` of the sharing grid contributes ``w(a, b)`` times the
sum of the input over a rectangle (notation of
:mod:`pelk_mm.ops.band_geometry`, band edges ``e_p``, clamped edge offsets
``r_p(i) = clamp(i + e_p - P, 0, H)`` and ``c_q(j)`` likewise, which is
exactly the zero padding). With ``R_a(i, j)`` the sum of rows
``[r_a(i), r_{a+1}(i))`` of column ``j`` (a column prefix sum, differenced)
and ``B_a(i, s) = sum_{j < s} R_a(i, j)``::

    y(i, j)   = sum_{a, q} (w(a, q - 1) - w(a, q)) B_a(i, c_q(j))

with ``w(., -1) = w(., k') = 0``. Computed as: a row gather, a prefix sum
along the columns, one batched ``(k' + 1) x k'`` matrix product per channel
mixing the bands, ``k' + 1`` shifted column reads; about ``k'^2 + 4 k'``
operations per output instead of ``K^2``.

Precision (measured against a float64 reference, max abs error relative to
the dense float32 convolution's): a plain float32 summed-area table gave
3-11x the dense error (K = 13, 64x64 maps). Four measures bring float32
within it (``tests/test_fast_conv.py`` forces float32 on the CPU):

* the per-map mean is split off (``y = conv(x - m) + m conv(1)``);
* prefix sums are two-term (:func:`_summands`): an exact sum of the input
  rounded to a coarse power-of-two step plus a sum of the tiny remainders;
* the column prefix sums are tile-local (:func:`_mix_columns`), so they
  grow with ``K``, not with the map width;
* the weight gradient contracts band sums (not prefix sums), summed per
  row first, then across rows (:func:`_weight_grad`).

float64 needs none of the last three and skips them (same formulas, one
prefix sum per axis, one contraction).

The computation runs in :func:`pelk_mm.ops.precision.accumulation_dtype`:
float64 on CPUs and on GPUs with fast FP64 (then well below the dense
error), float32 elsewhere; the result is cast back to the input dtype.

Backward, hand-written (no scatter-adds, which would make autograd's
backward through the gathers non-deterministic on CUDA), saving only ``x``
and the weight (the band sums are recomputed, so the activation memory kept
for backward is the dense path's): the input gradient is the same block sum
with the 180-degree-rotated kernel; the weight gradient is ``dw(a, b) =
sum_ij dy(i, j) box_ab(x)(i, j) = sum_ij R_a(i, j) D_b(i, j)`` with ``D_b``
the sums of ``dy`` over the mirrored column band ``b`` (the same band sums
along the columns, over the reversed grid).
"""
import functools
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .autocast_policy import float32_under_autocast
from .band_geometry import (band_edges, clamped_offsets, constant_response,
                            constant_response_weight_grad, flip_kernel)
from .precision import accumulation_dtype, mean_term_dtype

#: Output columns per tile of the column prefix sums, in kernel sizes
#: (:func:`_mix_columns`).
_TILE_KERNELS = 2


def _summands(x: Tensor, dim: int, length: int) -> List[Tensor]:
    """``x`` as terms whose prefix sums along ``dim`` (over at most
    ``length`` entries) carry (almost) no round-off.

    float64: ``[x]``, whose prefix sums are accurate enough. Otherwise
    ``[x_hi, x_lo]`` with ``x = x_hi + x_lo`` exactly, ``x_hi`` rounded to a
    power-of-two step coarse enough (``length max|x| <= 2^(m - 1)`` steps,
    ``m`` mantissa bits, ``max`` along ``dim``) that every prefix sum of
    ``x_hi`` is exact, and ``|x_lo| <=`` half a step: differences of the
    ``x_hi`` prefix sums are exact, those of ``x_lo`` carry the round-off of
    tiny numbers, instead of the ``eps * n * |x|`` of a plain float32 prefix
    sum.
    """
    if x.dtype == torch.float64:
        return [x]
    mantissa = -math.log2(torch.finfo(x.dtype).eps)  # 23 for float32
    amax = x.abs().amax(dim, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    step = torch.exp2(torch.ceil(torch.log2(amax * length)) - (mantissa - 1))
    high = torch.round(x / step) * step
    return [high, x - high]


def _band_sums(x: Tensor, grid: Sequence[int], dim: int) -> Tensor:
    """Sums of ``x`` over every band of ``grid`` along ``dim`` (-2: rows,
    -1: columns), zero padded: ``(N, C, k', H, W)`` for rows,
    ``(N, C, H, k', W)`` for columns; entry ``a`` at position ``i`` sums
    ``x`` at ``i + u - P`` for the taps ``u`` of band ``a``: differences of
    prefix sums (of :func:`_summands`) at the clamped band edges."""
    size = x.shape[dim]
    offsets = clamped_offsets(grid, size, x).flatten()  # (k' + 1) * size
    pad = (0, 0, 1, 0) if dim == -2 else (1, 0)
    return functools.reduce(
        torch.add,
        (F.pad(term.cumsum(dim), pad).index_select(dim, offsets).unflatten(
            dim, (len(grid) + 1, size)).diff(dim=dim - 1)
         for term in _summands(x, dim, size)))


def _column_differences(weight: Tensor) -> Tensor:
    """``w(a, q - 1) - w(a, q)`` for ``q = 0..k'``: ``(C, k', k' + 1)``."""
    padded = F.pad(weight[:, 0], (1, 1))
    return padded[..., :-1] - padded[..., 1:]


def _mix_columns(row_sums: Tensor, weight: Tensor,
                 grid: Sequence[int]) -> Tensor:
    """``y(i, j) = sum_{a, q} (w(a, q - 1) - w(a, q)) B_a(i, c_q(j))`` from
    the row-band sums ``R`` ``(N, C, k', H, W)``: ``(N, C, H, W)``.

    Below float64, the column prefix sums ``B`` are tile-local: maps wider
    than ``_TILE_KERNELS * K`` columns are cut into equal tiles of at most
    that many output columns, each reading its own window of the
    zero-padded ``R`` (``K - 1`` columns wider), whose prefix sums start at
    zero (differences of one prefix sum per term of :func:`_summands`, exact
    for the high term). Their magnitude, and so the round-off of the band
    mixing, then grows with ``K`` instead of the map width (float32 at
    K = 13 on 128-wide maps: 3.2x the dense error with one global prefix
    sum, 1.3-1.6x with tiles of at most 2K, for at most 1.5x the mixing
    work). float64 and narrower maps take one prefix sum over the map and
    read it at the clamped band edges.
    """
    n, c, _, height, width = row_sums.shape
    kernel_size, half = sum(grid), sum(grid) // 2
    tiles = 1 if row_sums.dtype == torch.float64 else -(
        -width // (_TILE_KERNELS * kernel_size))
    differences = _column_differences(weight)
    if tiles == 1:
        prefix = functools.reduce(
            torch.add,
            (F.pad(term.cumsum(-1), (1, 0))
             for term in _summands(row_sums, -1, width)))  # B: (.., W + 1)
        mixed = torch.einsum('caq,ncais->ncqis', differences, prefix)
        cols = clamped_offsets(grid, width, row_sums)
        return mixed.gather(
            -1,
            cols.view(1, 1, -1, 1, width).expand(n, c, -1, height,
                                                 width)).sum(2)
    tile = -(-width // tiles)
    padded_width = tiles * tile + kernel_size - 1
    local = []  # window-local B: (N, C, k', H, tiles, T + K) per term
    for term in _summands(row_sums, -1, padded_width):
        padded = F.pad(term, (half, padded_width - half - width))
        windows = F.pad(padded.cumsum(-1),
                        (1, 0)).unfold(-1, tile + kernel_size, tile)
        local.append(windows - windows[..., :1])
    mixed = torch.einsum('caq,ncaitz->ncqitz', differences,
                         functools.reduce(torch.add, local))
    out = functools.reduce(
        torch.add, (mixed[:, :, edge_index, ..., edge:edge + tile]
                    for edge_index, edge in enumerate(band_edges(grid))))
    return out.flatten(-2)[..., :width]


def _correlate(x: Tensor, weight: Tensor, grid: Sequence[int]) -> Tensor:
    """Mean-split block-sum correlation: the output ``(N, C, H, W)``."""
    height, width = x.shape[-2:]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    out = _mix_columns(_band_sums(x - mean, grid, -2), weight, grid)
    return out + mean * constant_response(weight, grid, height, width)


def _weight_grad(x: Tensor, grad_out: Tensor, grid: Tuple[int, ...]) -> Tensor:
    """``dw(a, b) = sum dy(i, j) box_ab(x)(i, j)``, contracted as row-band
    sums of ``x - m`` against column-band sums of ``dy`` (over the mirrored
    grid), plus the mean term ``m corr(1, dy)``: ``(C, 1, k', k')``.

    Below float64 the contraction is split: one partial sum per row
    ``(n, i)`` (``W`` terms), then a pairwise sum over the rows; a single
    float32 reduction over all ``N H W`` terms measured 6-7x the dense
    float32 error at K = 13.
    """
    mean = x.mean(dim=(-2, -1), keepdim=True)
    row_sums = _band_sums(x - mean, grid, -2)  # (N, C, k', H, W)
    col_sums = _band_sums(grad_out, grid[::-1], -1)  # bands mirrored
    if x.dtype == torch.float64:
        grad_w = torch.einsum('ncaij,ncibj->cab', row_sums, col_sums)
    else:  # a partial sum per row (n, i), then a pairwise sum of those
        grad_w = torch.einsum('ncaij,ncibj->ncabi', row_sums, col_sums).sum(
            (0, -1))
    grad_w = grad_w.flip(-1).unsqueeze(1)
    wide = mean_term_dtype(x)
    mean_term = constant_response_weight_grad(
        (mean.to(wide) * grad_out.to(wide)).sum(0), grid)
    return (grad_w + mean_term).to(x.dtype)


class _BlockSumPeripheralConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, grid: Tuple[int,
                                                            ...]) -> Tensor:
        wide = accumulation_dtype(x)
        out = _correlate(x.to(wide), weight.to(wide), grid)
        ctx.grid, ctx.wide_dtype = grid, wide
        ctx.save_for_backward(x, weight)  # no tables: recomputed
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grid, wide = ctx.grid, ctx.wide_dtype
        grad_wide = grad_out.to(wide)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _correlate(grad_wide, *flip_kernel(weight.to(wide), grid))
            grad_x = grad_x.to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x.to(wide), grad_wide, grid)
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w, None


@float32_under_autocast
def blocksum_peripheral_conv(x: Tensor, weight: Tensor,
                             grid: Sequence[int]) -> Tensor:
    """Peripheral convolution by summed-area-table block sums (exact up to
    float round-off).

    Args:
        x (Tensor): Input ``(N, C, H, W)``, any ``H, W >= 1``.
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid, ``k'`` widths summing to odd
            ``K``.

    Returns:
        Tensor: ``(N, C, H, W)``, equal to ``F.conv2d(x, expand_weight(
        weight, grid), padding=K // 2, groups=C)``.
    """
    return _BlockSumPeripheralConv.apply(x, weight, tuple(grid))
