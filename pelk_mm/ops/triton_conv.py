"""Fused peripheral convolution in Triton (``impl='triton'``).

Contracts (the kernels are in :mod:`pelk_mm.ops.triton_kernels`):

* **Availability.** The implementation is listed in
  :data:`pelk_mm.ops.PERIPHERAL_CONV_IMPLS` where Triton >= 3.0 is
  installed and CUDA is available
  (:func:`pelk_mm.ops.peripheral_conv.triton_listed`;
  :func:`triton_installed` reads the package metadata; Triton itself is
  imported at the first call, never by ``import pelk_mm.ops``). CUDA
  tensors run compiled kernels; CPU tensors run the same kernels through
  Triton's interpreter (exact, slow: for tests). ``impl='auto'`` considers
  it only on CUDA (:mod:`pelk_mm.ops.impl_tuning`).
* **Algorithm.** The kernel is piecewise constant on the ``k' x k'`` grid:
  per output row, ``K`` row loads give the ``k'`` row-band sums of the
  tile's input window, a ``k' x k'`` mix gives one row per column band, and
  ``K`` shifted reads give the outputs (:func:`~pelk_mm.ops.triton_kernels.
  correlate_kernel`). Every sum is direct (no summed-area table), so the
  round-off is a direct convolution's for any map size or input mean: the
  forward and the input gradient need no mean split.
* **Tiles.** A program owns one map, :data:`BLOCK_W` (fewer on narrow maps:
  the next power of two >= ``W``, at least 16) output columns and up to
  :data:`ROWS` output rows; its scratch slot is ``k'`` (rounded up to a
  power of two, at least 16; twice that for the weight gradient) x
  ``BLOCK_W + K - 1`` (rounded up) values of the accumulation dtype.
* **Dtypes.** float32, bfloat16 and float16 inputs are read as they are and
  accumulated in float32; float64 in float64. Outside autocast the result
  has the input's dtype; under autocast (float32 / half inputs) it has the
  autocast dtype, like an autocast-listed op. Gradients have the dtype of
  the tensor they belong to.
* **Layouts.** The kernels index contiguous NCHW: a channels_last (or any
  non-contiguous) input or output gradient is copied to NCHW first (one
  extra read and write of it); the result is NCHW.
* **Backward.** The input gradient is the same kernel on the output
  gradient with the 180-degree-rotated kernel
  (:func:`~pelk_mm.ops.band_geometry.flip_kernel`). The weight gradient
  splits off the per-map mean ``m`` (``sum dy box(x - m) + m sum dy
  box(1)``, :mod:`pelk_mm.ops.band_geometry`): the kernel sums the centred
  part, each program adding its rows' float32 products into a float64
  accumulator, and the mean term is one float64 ``torch.sum`` over the
  batch of ``m dy``. It is deterministic: every program writes its
  ``k' x k'`` partial sum to its own slot of a float64 buffer (no
  atomics), summed over the maps and tiles by one ``torch.sum`` (fixed
  order, the same result on every run). Only ``x`` and the weight are
  saved for backward.
* **torch.compile.** Where torch has ``torch.library.custom_op`` (>= 2.4)
  the two launches are custom ops (``pelk_mm::triton_correlate``,
  ``pelk_mm::triton_weight_grad``) with shape-only fake implementations,
  so Dynamo traces through the autograd function without a graph break.
"""
import functools
import importlib.metadata
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .autocast_policy import autocast_dtype
from .band_geometry import (band_edges, constant_response_weight_grad,
                            flip_kernel)

#: Output columns per program (maps narrower than this use the next power
#: of two >= W, at least 16).
BLOCK_W = 64
#: Output rows per program (fewer when the map is shorter).
ROWS = 32
#: Oldest Triton whose interpreter and ``tl.dot(input_precision=...)`` the
#: kernels use.
MIN_TRITON = (3, 0)


def triton_installed() -> bool:
    """Whether Triton >= :data:`MIN_TRITON` is installed (metadata only: no
    import)."""
    for name in ('triton', 'pytorch-triton'):
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        major_minor = tuple(int(part) for part in version.split('.')[:2])
        return major_minor >= MIN_TRITON
    return False


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _tiling(height: int, width: int, kernel_size: int,
            bands: int) -> Tuple[int, int, int, int, int, int]:
    """``(block_w, halo_w, bands_p, rows, col_tiles, row_chunks)``."""
    block_w = min(BLOCK_W, max(16, _next_power_of_two(width)))
    halo_w = _next_power_of_two(block_w + kernel_size - 1)
    bands_p = max(16, _next_power_of_two(bands))
    row_chunks = -(-height // ROWS)
    rows = -(-height // row_chunks)
    return block_w, halo_w, bands_p, rows, -(-width // block_w), row_chunks


@functools.lru_cache(maxsize=None)
def _kernels(interpreted: bool):
    """``(correlate, weight_grad)``: compiled, or run by the interpreter."""
    import triton

    from . import triton_kernels
    if interpreted:
        from triton.runtime.interpreter import InterpretedFunction
        wrap = InterpretedFunction
    else:
        wrap = triton.jit
    return (wrap(triton_kernels.correlate_kernel),
            wrap(triton_kernels.weight_grad_kernel))


@functools.lru_cache(maxsize=None)
def _edges(grid: Tuple[int, ...], device: torch.device) -> Tensor:
    """The band edges as an int32 tensor on ``device`` (made once: no
    host-to-device copy per call)."""
    return torch.tensor(band_edges(grid), dtype=torch.int32, device=device)


def _accumulation(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _correlate(x: Tensor, weight: Tensor, grid: Sequence[int],
               out_dtype: torch.dtype) -> Tensor:
    """The bare "same" correlation ``(N, C, H, W)`` in ``out_dtype``."""
    x = x.contiguous()
    n, c, height, width = x.shape
    kernel_size, bands = sum(grid), len(grid)
    block_w, halo_w, bands_p, rows, col_tiles, row_chunks = _tiling(
        height, width, kernel_size, bands)
    wide = _accumulation(x)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    edges = _edges(tuple(grid), x.device)
    launch = (n * c, col_tiles, row_chunks)
    scratch = torch.empty(
        n * c * col_tiles * row_chunks * bands_p * halo_w,
        dtype=wide,
        device=x.device)
    correlate, _ = _kernels(x.device.type != 'cuda')
    correlate[launch](x, weight.to(wide).contiguous(), edges, out, scratch, c,
                      height, width, bands, kernel_size // 2, rows, block_w,
                      halo_w, bands_p, wide == torch.float64)
    return out


def _weight_grad(x: Tensor, grad_out: Tensor, grid: Sequence[int]) -> Tensor:
    """``dw(a, b) = sum_{n, i, j} dy box_ab(x)``: ``(C, 1, k', k')`` in
    float32 (float64 for float64 inputs)."""
    x, grad_out = x.contiguous(), grad_out.contiguous()
    n, c, height, width = x.shape
    kernel_size, bands = sum(grid), len(grid)
    block_w, halo_w, bands_p, rows, col_tiles, row_chunks = _tiling(
        height, width, kernel_size, bands)
    wide = _accumulation(x)
    if x.numel() == 0:
        return torch.zeros(c, 1, bands, bands, dtype=wide, device=x.device)
    edges = _edges(tuple(grid), x.device)
    partial = torch.empty(
        n,
        c,
        col_tiles * row_chunks,
        bands_p,
        bands_p,
        dtype=torch.float64,
        device=x.device)
    scratch = torch.empty(
        partial.shape[:3].numel() * 2 * bands_p * halo_w,
        dtype=wide,
        device=x.device)
    mean = x.mean((-2, -1), dtype=wide)  # (N, C)
    _, weight_grad = _kernels(x.device.type != 'cuda')
    weight_grad[(n * c, col_tiles,
                 row_chunks)](x, mean, grad_out, edges, partial, scratch,
                              height, width, bands, kernel_size // 2, rows,
                              block_w, halo_w, bands_p, wide == torch.float64)
    centred = partial.sum((0, 2))[:, :bands, :bands]
    mean_term = constant_response_weight_grad(
        (mean[..., None, None] * grad_out).sum(0, dtype=torch.float64), grid)
    return (centred.unsqueeze(1) + mean_term).to(wide)


def _launchers():
    """``(correlate, weight_grad)``: custom ops where torch has them."""
    custom_op = getattr(torch.library, 'custom_op', None)
    if custom_op is None:  # torch < 2.4
        return _correlate, _weight_grad

    @custom_op('pelk_mm::triton_correlate', mutates_args=())
    def correlate(x: Tensor, weight: Tensor, grid: List[int],
                  out_dtype: torch.dtype) -> Tensor:
        return _correlate(x, weight, grid, out_dtype)

    @correlate.register_fake
    def _(x, weight, grid, out_dtype):
        return x.new_empty(x.shape, dtype=out_dtype)

    @custom_op('pelk_mm::triton_weight_grad', mutates_args=())
    def weight_grad(x: Tensor, grad_out: Tensor, grid: List[int]) -> Tensor:
        return _weight_grad(x, grad_out, grid)

    @weight_grad.register_fake
    def _(x, grad_out, grid):
        return x.new_empty((x.shape[1], 1, len(grid), len(grid)),
                           dtype=_accumulation(x))

    return correlate, weight_grad


_CORRELATE, _WEIGHT_GRAD = _launchers()


class _TritonPeripheralConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, grid: Tuple[int, ...],
                out_dtype: torch.dtype) -> Tensor:
        ctx.grid = grid
        ctx.save_for_backward(x, weight)
        return _CORRELATE(x, weight, list(grid), out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            flipped, grid = flip_kernel(weight, ctx.grid)
            grad_x = _CORRELATE(grad_out, flipped, list(grid), x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _WEIGHT_GRAD(x, grad_out, list(ctx.grid)).to(weight.dtype)
        return grad_x, grad_w, None, None


def triton_peripheral_conv(x: Tensor, weight: Tensor,
                           grid: Sequence[int]) -> Tensor:
    """Peripheral convolution by the fused Triton kernels (exact up to
    float round-off).

    Args:
        x (Tensor): Input ``(N, C, H, W)``, any ``H, W >= 1``; on CUDA
            (compiled) or the CPU (Triton's interpreter).
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid, ``k'`` widths summing to odd
            ``K``.

    Returns:
        Tensor: ``(N, C, H, W)``, equal to ``F.conv2d(x, expand_weight(
        weight, grid), padding=K // 2, groups=C)``; dtype as described in
        the module docstring.

    Raises:
        ValueError: If ``x`` is on a device other than CUDA or the CPU.
    """
    if x.device.type not in ('cuda', 'cpu'):
        raise ValueError("impl='triton' runs on CUDA and (interpreted) CPU "
                         f'tensors, got a tensor on {x.device.type!r}')
    out_dtype: Optional[torch.dtype] = autocast_dtype(x.device.type)
    if out_dtype is None or x.dtype == torch.float64:
        return _TritonPeripheralConv.apply(x, weight, tuple(grid), x.dtype)
    with torch.autocast(x.device.type, enabled=False):  # inputs as they are
        return _TritonPeripheralConv.apply(x, weight, tuple(grid), out_dtype)
