"""Exact peripheral convolution by FFT, with a hand-written backward.

The depthwise "same" correlation of an ``H x W`` map with a ``K x K`` kernel
(``P = K // 2``) equals a circular convolution of length ``L`` for every
output inside the map as soon as ``L >= n + P`` per axis: the taps that wrap
around only ever meet the zero padding. So ``L`` is the next 5-smooth size
>= ``n + P`` (not ``n + K - 1``), and a kernel longer than ``L`` (maps
smaller than the kernel) simply aliases onto itself.

The kernel spectrum comes from the compact weight without materialising the
kernel: with ``E[f, a] = sum_{u in band a} exp(2 pi i f (u - P) / L)`` per
axis, ``G_c = E_H w_c E_W^T`` (a ``(L_H x k') (k' x k') (k' x L_W/2+1)``
product). Then::

    y = irfft2(rfft2(x - m) * G)[:H, :W] + m * conv(1)

with the per-map mean ``m`` split off first (see
:mod:`pelk_mm.ops.band_geometry`) so the FFT round-off scales with the spread
of ``x``, not its mean.

Backward (the transpose of a correlation is a correlation): the input
gradient is the same computation with the conjugate spectrum ``conj(G)``
(the 180-degree-rotated kernel, mean split included); the weight gradient is
the cross-correlation of ``x`` and the output gradient at the kernel's
``K x K`` lags, one inverse FFT per channel of ``sum_n conj(DY) X``, summed
per block, plus the mean term. Its lags run in
:func:`pelk_mm.ops.precision.accumulation_dtype` (float64 on CPUs and GPUs
with fast FP64, float32 elsewhere); on either path the output and both
gradients stay within 2x the dense float32 convolution's error against a
float64 reference (measurements: ``docs/performance.md``, "Precision"). The
mean term, which carries the input's mean, is reduced in float64 everywhere
but MPS (:func:`pelk_mm.ops.precision.mean_term_dtype`).
"""
import functools
import math
from typing import Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .autocast_policy import float32_under_autocast
from .band_geometry import (band_indicator, constant_response,
                            constant_response_weight_grad, flip_kernel)
from .precision import accumulation_dtype, mean_term_dtype


def fft_size(n: int) -> int:
    """Smallest 5-smooth integer (``2^a 3^b 5^c``) that is >= ``n``.

    Comparisons only, so that a symbolic ``n`` (torch.compile's dynamic
    shapes) is specialised by guards and the result is a Python int.
    """
    best = 1
    while best < n:
        best *= 2
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            size = power35
            while size < n:
                size *= 2
            best = min(best, size)
            power35 *= 3
        power5 *= 5
    return best


@functools.lru_cache(maxsize=512)
def _band_phases(grid: Tuple[int, ...], length: int, onesided: bool,
                 device: torch.device, dtype: torch.dtype) -> Tensor:
    """``E[f, a] = sum_{u in band a} exp(2 pi i f (u - P) / L)``.

    Returns:
        Tensor: Complex ``(F, k')`` with ``F = L // 2 + 1`` if ``onesided``
        else ``L``; computed in float64 from exact integer phases.
    """
    kernel_size = sum(grid)
    freqs = torch.arange(
        length // 2 + 1 if onesided else length, dtype=torch.int64)
    taps = torch.arange(kernel_size, dtype=torch.int64) - kernel_size // 2
    phase = torch.remainder(freqs[:, None] * taps[None, :], length)
    taps_phasor = torch.polar(
        torch.ones((), dtype=torch.float64),
        phase.to(torch.float64) * (2 * math.pi / length))
    bands = band_indicator(grid, taps_phasor)
    return (taps_phasor @ bands.t()).to(device=device, dtype=dtype)


def _is_compiling() -> bool:
    """Whether torch.compile is tracing (``torch.compiler.is_compiling``
    from torch 2.3, ``torch._dynamo.is_compiling`` before)."""
    is_compiling = getattr(torch.compiler, 'is_compiling', None)
    if is_compiling is None:
        import torch._dynamo as dynamo  # torch < 2.3
        is_compiling = dynamo.is_compiling
    return is_compiling()


def _sizes(height: int, width: int, grid: Sequence[int]) -> Tuple[int, int]:
    half = sum(grid) // 2
    return fft_size(height + half), fft_size(width + half)


def _kernel_spectrum(weight: Tensor, grid: Tuple[int, ...],
                     sizes: Tuple[int, int]) -> Tensor:
    """``G_c = E_H w_c E_W^T``: ``(C, L_H, L_W // 2 + 1)`` complex."""
    cdtype = torch.complex128 if weight.dtype == torch.float64 else \
        torch.complex64
    # Traced by torch.compile, the phases are built in the graph (Dynamo
    # ignores lru_cache, with a warning); eager calls reuse the cache.
    phases = _band_phases.__wrapped__ if _is_compiling() else _band_phases
    rows = phases(grid, sizes[0], False, weight.device, cdtype)
    cols = phases(grid, sizes[1], True, weight.device, cdtype)
    return rows @ weight[:, 0].to(cdtype) @ cols.t()


def _correlate(x: Tensor, spectrum: Tensor, sizes: Tuple[int, int],
               weight: Tensor, grid: Sequence[int]) -> Tuple[Tensor, Tensor]:
    """Mean-split FFT correlation of ``x`` with the kernel of ``spectrum``.

    Returns:
        tuple: the output ``(N, C, H, W)`` and the per-map mean ``m``
        ``(N, C, 1, 1)``.
    """
    height, width = x.shape[-2:]
    mean = x.mean(dim=(-2, -1), keepdim=True)
    x_spec = torch.fft.rfft2(x - mean, s=sizes)
    out = torch.fft.irfft2(x_spec * spectrum, s=sizes)[..., :height, :width]
    out = out + mean * constant_response(weight, grid, height, width)
    return out, mean


class _FFTPeripheralConv(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, grid: Tuple[int,
                                                            ...]) -> Tensor:
        sizes = _sizes(x.shape[-2], x.shape[-1], grid)
        spectrum = _kernel_spectrum(weight, grid, sizes)
        out, mean = _correlate(x, spectrum, sizes, weight, grid)
        ctx.grid, ctx.sizes = grid, sizes
        ctx.wide_dtype = accumulation_dtype(x)
        ctx.save_for_backward(x, weight, spectrum, mean)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, weight, spectrum, mean = ctx.saved_tensors
        grid, sizes = ctx.grid, ctx.sizes
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            flipped, flipped_grid = flip_kernel(weight, grid)
            grad_x, _ = _correlate(grad_out, spectrum.conj(), sizes, flipped,
                                   flipped_grid)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad_out, mean, grid, sizes,
                                  ctx.wide_dtype)
        return grad_x, grad_w, None


def _weight_grad(x: Tensor, grad_out: Tensor, mean: Tensor, grid: Tuple[int,
                                                                        ...],
                 sizes: Tuple[int, int], dtype: torch.dtype) -> Tensor:
    """``dL/dw``: the cross-correlation of ``x`` and ``dy``, summed per block.

    Per block, ``dw = corr(x - m, dy) + m corr(1, dy)``. One inverse FFT per
    channel of ``sum_n conj(DY) (X - M)`` gives the cross-correlation at
    every lag (lag ``t`` at index ``t mod L``, exact for ``|t| <= P``); the
    ``K x K`` lags are summed per block, and ``m corr(1, dy)`` is the adjoint
    of the constant response. A block sums up to ``(K / 4)^2`` lags, and in
    float32 the FFT round-off of those sums exceeded the dense convolution's
    error at ``K = 101``, so the path runs in ``dtype``: float64 where it is
    fast (:mod:`pelk_mm.ops.precision`), else float32.
    """
    kernel_size = sum(grid)
    x_spec = torch.fft.rfft2((x - mean).to(dtype), s=sizes)
    grad_spec = torch.fft.rfft2(grad_out.to(dtype), s=sizes)
    lags = torch.fft.irfft2((grad_spec.conj() * x_spec).sum(0), s=sizes)
    taps = torch.arange(kernel_size, device=lags.device) - kernel_size // 2
    dense_grad = lags.index_select(1, taps % sizes[0]).index_select(
        2, taps % sizes[1])  # (C, K, K) lags
    bands = band_indicator(grid, dense_grad)
    grad_w = (bands @ dense_grad @ bands.t()).unsqueeze(1)
    wide = mean_term_dtype(x)
    mean_term = constant_response_weight_grad(
        (mean.to(wide) * grad_out.to(wide)).sum(0), grid)
    return (grad_w + mean_term).to(grad_out.dtype)


@float32_under_autocast
def fft_peripheral_conv(x: Tensor, weight: Tensor,
                        grid: Sequence[int]) -> Tensor:
    """Peripheral convolution by FFT (exact up to float round-off).

    Args:
        x (Tensor): Input ``(N, C, H, W)``, any ``H, W >= 1``.
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid, ``k'`` widths summing to odd
            ``K``.

    Returns:
        Tensor: ``(N, C, H, W)``, equal to ``F.conv2d(x, expand_weight(
        weight, grid), padding=K // 2, groups=C)``.
    """
    return _FFTPeripheralConv.apply(x, weight, tuple(grid))
