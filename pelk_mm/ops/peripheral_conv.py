"""Peripheral convolution (PeLK, Eq. 1-3): functional op and module.

The operator is a depthwise, stride-1, zero-padded ("same") convolution whose
``K x K`` kernel is generated from compact weights ``(C, 1, k', k')`` by a
sharing grid (see :mod:`pelk_mm.ops.sharing_grid`), optionally with the
kernel-wise positional embedding ``h`` of Eq. 3.

The convolution itself is computed by ONE swappable function picked by name
from :data:`PERIPHERAL_CONV_IMPLS` (``fn(x, weight, grid) -> Tensor``, no bias
and no positional embedding); the bias and the positional-embedding term are
added outside it, so every implementation has them. ``'dense'`` materialises
the kernel and calls ``F.conv2d``; ``'fft'`` and ``'blocksum'`` are exact
fast algorithms, listed in :data:`pelk_mm.ops.impl_tuning.CANDIDATES`;
``'triton'`` runs fused Triton kernels (CUDA, where Triton is installed);
``'auto'`` chooses among them (:func:`pelk_mm.ops.impl_tuning.choose_impl`).

Validation happens once: :func:`peripheral_conv2d` checks its arguments,
:class:`PeripheralConv2d` checks its configuration at construction and the
input in ``forward``; both then call :func:`apply_peripheral_conv`, which
checks nothing.
"""
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .band_geometry import band_edges
from .impl_tuning import CANDIDATES, CUDA_CANDIDATES, choose_impl
from .sharing_grid import check_grid, expand_weight, sharing_grid
from .triton_conv import triton_installed


def auto_peripheral_conv(x: Tensor, weight: Tensor,
                         grid: Sequence[int]) -> Tensor:
    """Run the implementation :func:`~pelk_mm.ops.impl_tuning.choose_impl`
    picks for this call (cost model, or measured once per signature)."""
    impl = choose_impl(x, weight, grid)
    return PERIPHERAL_CONV_IMPLS[impl](x, weight, grid)


def triton_listed() -> bool:
    """Whether ``'triton'`` is in :data:`PERIPHERAL_CONV_IMPLS`: Triton
    >= 3.0 installed (package metadata, no import) and CUDA available. It
    then also runs CPU tensors, through Triton's interpreter (slow)."""
    return triton_installed() and torch.cuda.is_available()


#: Implementations of the bare convolution, by name: ``fn(x, weight, grid)``.
#: ``'dense'`` (expand + ``F.conv2d``, :mod:`pelk_mm.ops.dense_conv`), the
#: exact fast algorithms ``'fft'`` and ``'blocksum'``
#: (:mod:`pelk_mm.ops.fft_conv`, :mod:`pelk_mm.ops.blocksum_conv`), the
#: fused Triton kernels ``'triton'`` (:mod:`pelk_mm.ops.triton_conv`, listed
#: where :func:`triton_listed`), and ``'auto'``, the default of
#: :func:`peripheral_conv2d`, which picks one of them
#: (:mod:`pelk_mm.ops.impl_tuning`).
PERIPHERAL_CONV_IMPLS: Dict[str, Callable[
    [Tensor, Tensor, Sequence[int]], Tensor]] = {
        **CANDIDATES,
        **(CUDA_CANDIDATES if triton_listed() else {}),
        'auto': auto_peripheral_conv,
    }

#: Input dtypes the convolution accepts.
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pos_embed_bias(weight: Tensor, grid: Sequence[int],
                   pos_embed: Tensor) -> Tensor:
    """Per-channel constant that the positional embedding adds (Eq. 3).

    With zero padding, Eq. 3 ``Y(x, y) = sum_ij w(i, j) (X(x+i, y+j) +
    h(i, j))`` is the plain convolution plus ``sum_ij w(i, j) h(i, j)``.
    Since ``w`` is constant on each block ``(a, b)`` of the sharing grid,
    that sum is ``sum_ab w_theta(a, b) * sum_{(i, j) in block(a, b)} h(i, j)``,
    computed here from the compact weight without materialising ``w``: the
    block sums of ``h`` are differences of its 2-D prefix sums at the band
    edges (``O(C K^2)`` additions, then ``C k'^2`` products).

    Args:
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid of ``k'`` widths summing to ``K``.
        pos_embed (Tensor): Positional embedding ``h`` of shape ``(C, K, K)``.

    Returns:
        Tensor: Shape ``(C,)``.
    """
    edges = torch.tensor(band_edges(grid), device=pos_embed.device)
    prefix = F.pad(pos_embed.cumsum(1).cumsum(2), (1, 0, 1, 0))
    corners = prefix[:, edges][:, :, edges]  # (C, k' + 1, k' + 1)
    block_sums = (
        corners[:, 1:, 1:] - corners[:, :-1, 1:] - corners[:, 1:, :-1] +
        corners[:, :-1, :-1])
    return (weight[:, 0] * block_sums).sum(dim=(1, 2))


#: Readings of Eq. 3 at the border (``pos_embed_mode``): ``'literal'`` adds
#: ``h`` at every tap, zero padding included (a per-channel constant,
#: :func:`pos_embed_bias`); ``'in_image'`` adds it only at taps that fall
#: inside the image (a position-dependent map, :func:`pos_embed_map`).
POS_EMBED_MODES = ('literal', 'in_image')


def check_pos_embed_mode(pos_embed_mode: str) -> str:
    """Validate ``pos_embed_mode`` (one of :data:`POS_EMBED_MODES`)."""
    if pos_embed_mode not in POS_EMBED_MODES:
        raise ValueError(f'`pos_embed_mode` must be one of {POS_EMBED_MODES}, '
                         f'got {pos_embed_mode!r}')
    return pos_embed_mode


def _taps_inside(kernel_size: int, size: int, like: Tensor) -> Tensor:
    """0/1 matrix ``(n, K)``: entry ``[x, u]`` is 1 where tap ``u`` of output
    ``x`` reads inside a map of length ``n`` (``0 <= x + u - K // 2 < n``)."""
    position = torch.arange(size, device=like.device)[:, None]
    tap = torch.arange(kernel_size, device=like.device)[None, :]
    read = position + tap - kernel_size // 2
    return ((read >= 0) & (read < size)).to(like.dtype)


def pos_embed_map(weight: Tensor, grid: Sequence[int], pos_embed: Tensor,
                  height: int, width: int) -> Tensor:
    """Term of Eq. 3 when ``h`` is added only at taps inside the image.

    ``T_c(x, y) = sum_{ij : (x+i, y+j) inside} w_c(i, j) h_c(i, j)`` (the
    ``'in_image'`` reading): the window of valid taps of output ``(x, y)`` is
    the rectangle ``rows(x) x cols(y)``, so ``T_c = R (w_c * h_c) Q^T`` with
    the 0/1 matrices ``R[x, u]``, ``Q[y, v]`` of the taps that read inside
    the map, i.e. the response of the all-ones image to the kernel
    ``w * h``. It equals :func:`pos_embed_bias` at every output whose whole
    window is inside the image and differs near the borders (everywhere on
    maps smaller than the kernel). Two matrix products per channel
    (``O(C H K (K + W))``), independent of the batch; unlike box lookups in
    a summed-area table of ``w * h``, whose backward would scatter-add, this
    is deterministic on every device. Computed in at least float32 with
    autocast off (under autocast a matmul would run in 16 bits).

    Args:
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid of ``k'`` widths summing to ``K``.
        pos_embed (Tensor): Positional embedding ``h`` of shape ``(C, K, K)``.
        height (int): Map height ``H``.
        width (int): Map width ``W``.

    Returns:
        Tensor: Shape ``(C, H, W)``, dtype at least float32.
    """
    wide = torch.float64 in (weight.dtype, pos_embed.dtype)
    dtype = torch.float64 if wide else torch.float32  # promoted with float32
    kernel_size = sum(grid)
    with torch.autocast(pos_embed.device.type, enabled=False):
        taps = expand_weight(weight.to(dtype), grid)[:,
                                                     0] * pos_embed.to(dtype)
        rows = _taps_inside(kernel_size, height, taps)
        cols = _taps_inside(kernel_size, width, taps)
        return rows @ taps @ cols.t()


def peripheral_conv2d(x: Tensor,
                      weight: Tensor,
                      grid: Sequence[int],
                      bias: Optional[Tensor] = None,
                      pos_embed: Optional[Tensor] = None,
                      impl: str = 'auto',
                      pos_embed_mode: str = 'literal') -> Tensor:
    """Depthwise peripheral convolution with stride 1 and "same" padding.

    Computes Eq. 3 of the paper with zero padding::

        Y_c(x, y) = b_c + sum_{i,j in [-r, r]} w_c(i, j) (X_c(x+i, y+j)
                                                          + h_c(i, j))

    where ``w = expand_weight(weight, grid)`` (Eq. 1) and ``r = K // 2``.
    With ``pos_embed_mode='literal'`` the positional embedding ``h`` is
    added at every tap, also where the tap falls on the zero padding, so its
    contribution is the per-channel constant ``sum_ij w_c(i, j) h_c(i, j)``
    (:func:`pos_embed_bias`, closed form, never a second convolution) and
    the result equals ``F.conv2d(x, w, bias + pos_embed_bias(...),
    padding=r, groups=C)``. With ``'in_image'`` ``h`` is added only at taps
    inside the image: the term is the map :func:`pos_embed_map`
    ``(C, H, W)``, also in closed form.

    Args:
        x (Tensor): Input of shape ``(N, C, H, W)``; any ``H, W >= 1``,
            including maps smaller than the kernel.
        weight (Tensor): Compact weights ``w_theta`` of shape
            ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid, ``k'`` positive widths summing to
            the odd kernel size ``K``.
        bias (Tensor, optional): Shape ``(C,)``. Defaults to None.
        pos_embed (Tensor, optional): Positional embedding ``h`` of shape
            ``(C, K, K)``. Defaults to None.
        impl (str): Name of the convolution implementation in
            :data:`PERIPHERAL_CONV_IMPLS`. Defaults to ``'auto'``.
        pos_embed_mode (str): Where ``h`` is added, one of
            :data:`POS_EMBED_MODES`. Defaults to ``'literal'``.

    Returns:
        Tensor: Output of shape ``(N, C, H, W)``.
    """
    check_impl(impl)
    check_pos_embed_mode(pos_embed_mode)
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError('`weight` must have shape (C, 1, k\', k\'), '
                         f'got {tuple(weight.shape)}')
    grid = check_grid(grid)
    if weight.shape[2:] != (len(grid), len(grid)):
        raise ValueError(f'`weight` must be (C, 1, {len(grid)}, {len(grid)}) '
                         f'for a grid of {len(grid)} bands, got '
                         f'{tuple(weight.shape)}')
    channels = weight.shape[0]
    check_input(x, channels, f'to match the weight\'s {channels} channels')
    check_pos_embed(pos_embed, channels, sum(grid))
    return apply_peripheral_conv(x, weight, grid, bias, pos_embed, impl,
                                 pos_embed_mode)


def check_impl(impl: str) -> str:
    """Validate ``impl`` (a key of :data:`PERIPHERAL_CONV_IMPLS`)."""
    if impl not in PERIPHERAL_CONV_IMPLS:
        raise ValueError(f'`impl` must be one of '
                         f'{sorted(PERIPHERAL_CONV_IMPLS)}, got {impl!r}')
    return impl


def check_input(x: Tensor, channels: int, context: str) -> None:
    """Validate the input: ``(N, channels, H, W)`` of a float dtype in
    :data:`INPUT_DTYPES`; ``context`` ends the shape message."""
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f'`x` must have shape (N, {channels}, H, W) '
                         f'{context}, got {tuple(x.shape)}')
    if x.dtype not in INPUT_DTYPES:
        names = ', '.join(str(dtype) for dtype in INPUT_DTYPES)
        raise ValueError(f'`x` must be a floating-point tensor ({names}), '
                         f'got {x.dtype}')


def check_pos_embed(pos_embed: Optional[Tensor], channels: int,
                    kernel_size: int) -> None:
    """Validate the positional embedding: None or ``(C, K, K)``."""
    if pos_embed is not None and pos_embed.shape != (channels, kernel_size,
                                                     kernel_size):
        raise ValueError(
            f'`pos_embed` must have shape ({channels}, {kernel_size}, '
            f'{kernel_size}), got {tuple(pos_embed.shape)}')


def apply_peripheral_conv(x: Tensor, weight: Tensor, grid: Tuple[int, ...],
                          bias: Optional[Tensor], pos_embed: Optional[Tensor],
                          impl: str, pos_embed_mode: str) -> Tensor:
    """:func:`peripheral_conv2d` on arguments already validated (``grid`` a
    tuple): the convolution, then the positional-embedding term and the
    bias."""
    out = PERIPHERAL_CONV_IMPLS[impl](x, weight, grid)
    if pos_embed is not None and pos_embed_mode == 'in_image':
        out = out + pos_embed_map(weight, grid, pos_embed, *x.shape[-2:]).to(
            out.dtype)
    elif pos_embed is not None:
        pe_bias = pos_embed_bias(weight, grid, pos_embed)
        bias = pe_bias if bias is None else bias + pe_bias
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1).to(out.dtype)
    return out


class PeripheralConv2d(nn.Module):
    """Depthwise peripheral convolution (stride 1, "same" padding).

    Stores the compact weights ``(channels, 1, k', k')`` of a
    ``kernel_size x kernel_size`` depthwise kernel shared by blocks of the
    sharing grid: the peripheral grid of Eq. 2 from ``center_size`` and
    ``base``, or an explicit ``grid``.

    Args:
        channels (int): Number of input (= output) channels ``C``.
        kernel_size (int): Side ``K`` of the equivalent dense kernel; odd.
        center_size (int): Side of the central block of unshared taps; odd,
            at most ``kernel_size``. Ignored when ``grid`` is given.
            Defaults to 5.
        base (int): Growth base of the band widths (>= 2). Ignored when
            ``grid`` is given. Defaults to 2.
        grid (Sequence[int], optional): Explicit sharing grid (positive
            widths summing to ``kernel_size``), e.g. the paper's ablation
            grids. Defaults to None.
        bias (bool): Whether to add a learnable per-channel bias.
            Defaults to False.
        impl (str): Implementation of the convolution, a key of
            :data:`PERIPHERAL_CONV_IMPLS`. Defaults to ``'auto'``.
        pos_embed_mode (str): Where the positional embedding is added, one
            of :data:`POS_EMBED_MODES` (see :func:`peripheral_conv2d`).
            Defaults to ``'literal'``.

    Shape:
        - Input: ``(N, C, H, W)``; positional embedding ``(C, K, K)``.
        - Output: ``(N, C, H, W)``.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 center_size: int = 5,
                 base: int = 2,
                 grid: Optional[Sequence[int]] = None,
                 bias: bool = False,
                 impl: str = 'auto',
                 pos_embed_mode: str = 'literal'):
        super().__init__()
        if (isinstance(channels, bool) or not isinstance(channels, int)
                or channels < 1):
            raise ValueError(
                f'`channels` must be a positive integer, got {channels!r}')
        check_impl(impl)
        if grid is None:
            grid = sharing_grid(kernel_size, center_size, base)
        self.grid: Tuple[int, ...] = check_grid(grid, kernel_size)
        self.channels = channels
        self.kernel_size = kernel_size
        self.impl = impl
        self.pos_embed_mode = check_pos_embed_mode(pos_embed_mode)
        num_bands = len(self.grid)
        self.weight = nn.Parameter(
            torch.empty(channels, 1, num_bands, num_bands))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise like an ``nn.Conv2d`` depthwise ``K x K`` kernel.

        Every dense tap is a copy of a compact weight, so the fan-in is that
        of the dense kernel, ``K * K``: weights and bias are drawn from
        ``U(-1/K, 1/K)`` (PyTorch's default ``kaiming_uniform_(a=sqrt(5))``
        for that fan-in).
        """
        bound = 1 / math.sqrt(self.kernel_size * self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def dense_weight(self) -> Tensor:
        """The materialised kernel, shape ``(C, 1, K, K)``."""
        return expand_weight(self.weight, self.grid)

    def forward(self, x: Tensor, pos_embed: Optional[Tensor] = None) -> Tensor:
        """Apply the peripheral convolution (Eq. 3, see
        :func:`peripheral_conv2d`).

        Args:
            x (Tensor): Input of shape ``(N, C, H, W)``.
            pos_embed (Tensor, optional): Positional embedding ``(C, K, K)``.

        Returns:
            Tensor: Output of shape ``(N, C, H, W)``.
        """
        check_input(x, self.channels,
                    f'for PeripheralConv2d(channels={self.channels})')
        check_pos_embed(pos_embed, self.channels, self.kernel_size)
        return apply_peripheral_conv(x, self.weight, self.grid, self.bias,
                                     pos_embed, self.impl, self.pos_embed_mode)

    def extra_repr(self) -> str:
        s = (f'{self.channels}, kernel_size={self.kernel_size}, '
             f'grid={self.grid}, impl={self.impl!r}')
        if self.bias is None:
            s += ', bias=False'
        if self.pos_embed_mode != 'literal':
            s += f', pos_embed_mode={self.pos_embed_mode!r}'
        return s
