"""Peripheral convolution by band sums, in standard ONNX operators.

The structured deploy form of PeLK (``PeLK(deploy=True)``, ``deploy_mode=
'structured'``) computes every peripheral conv with this op. Its ONNX graph
(opset 17 with the TorchScript exporter, 18 with the torch.export-based one)
computes only ``Pad``, ``AveragePool``, ``Concat``, ``Gather``, ``MatMul``,
``Transpose``, ``Add`` and ``Reshape`` (plus constant subgraphs): no custom
operator, no loop, no ``CumSum``, all in TensorRT's ONNX support list.

Notation of :mod:`pelk_mm.ops.band_geometry`: sharing grid ``(s_0, ...,
s_{k'-1})``, band edges ``e_a``, ``K = sum(grid)``, ``P = K // 2``. The
kernel is constant on each block ``(a, b)``, so the zero-padded
cross-correlation factors into band sums along the rows and the columns::

    y(i, j) = sum_b  sum_{v in band b}  Z_b(i, j + v - P)
    Z_b(i, j) = sum_a  w(a, b)  R_a(i, j)
    R_a(i, j) = sum_{u in band a}  x(i + u - P, j)     (x = 0 outside)

Two layouts compute it, chosen from the map size (fixed when traced, so an
export at ``H x W`` holds one of them; :func:`uses_band_matrices`):

- **band matrices**, on maps where ``k' (H + W + k')`` (the multiply-adds per
  output) is at most :data:`BAND_MATRIX_MAX_MACS`: the row and column band
  sums are products with constant 0/1 matrices (:func:`band_sum_matrix`), so
  the op is three ``MatMul`` s and one ``Transpose``: ``R = S_H x``
  (``S_H`` ``(k' H, H)``), ``Z = w^T R`` per channel, and ``y = [Z_0 ...
  Z_{k'-1}] S_W`` (``(H, k' W) x (k' W, W)``). Dense GEMMs beat the memory
  passes of the box means where the kernel spans most of the map (PeLK-T's
  last three stages at 512 x 512: ``benchmarks/results/boxsum_layouts_*``).
- **box means** elsewhere, at ``k'^2`` multiply-adds plus at most ``2 K``
  additions and ``2 k'`` copies per output:

  1. rows: one ``AveragePool`` of height ``s`` per distinct band width ``s``
     of the map padded by ``P`` zero rows above and below, and one
     ``Gather`` of rows that stacks the ``k'`` row-band means ``R_a / s_a``
     ``(N, C, k', H, W)`` (band ``a`` is the pool of its width, ``e_a`` rows
     down);
  2. bands: one ``MatMul`` per channel with the ``k' x k'`` matrix
     ``s_a s_b w(a, b)``: ``Z_b`` (times ``s_b``);
  3. columns: for each distinct width ``s``, the bands of that width are
     shifted to their column offsets ``e_b - P`` (one ``Pad`` each, negative
     pads cropping) and added, and one ``AveragePool`` of width ``s`` sums
     them along the columns (the commuted order ``pool(sum of shifts)``
     needs one pool per width, not per band); the pools of the widths are
     added.

Both add at most ``max(grid)`` nonzero terms per band sum (no prefix sums),
so the float32 result is at least as accurate as the dense convolution's
(``tests/test_boxsum_conv.py``): no mean split or compensation is needed,
unlike the summed-area tables of :mod:`pelk_mm.ops.blocksum_conv`.
"""
import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .band_geometry import band_edges
from .sharing_grid import check_grid, expand_weight

#: Largest ``k' (H + W + k')`` (multiply-adds per output) at which
#: :func:`boxsum_peripheral_conv` uses the band matrices: between a 64 x 64
#: and a 96 x 96 map for K ~ 50. Measured by
#: ``benchmarks/bench_boxsum_layouts.py`` (2 CPU threads, 2026-12-06,
#: ``benchmarks/results/boxsum_layouts_cpu_2026-12-06T0811.md``): in
#: onnxruntime the band matrices take 0.54-0.90x the box means' time on
#: 16 x 16 to 64 x 64 maps (``k' (H + W + k')`` 369-1833), 1.60x at 96 x 96
#: (2665) and 2.40x at 128 x 128 (3497); in PyTorch 0.26-0.57x up to
#: 64 x 64, 1.03-1.06x above. Single onnxruntime timings of the op vary by
#: up to 2x between runs on that machine; PeLK-T's whole backbone at
#: 512 x 512 ran as fast with 1600 (box means on its 64 x 64 maps) as with
#: this bound.
BAND_MATRIX_MAX_MACS = 2000


def uses_band_matrices(grid: Sequence[int], height: int, width: int) -> bool:
    """Whether :func:`boxsum_peripheral_conv` computes an ``H x W`` map with
    the band matrices (else with box means)."""
    bands = len(grid)
    return bands * (height + width + bands) <= BAND_MATRIX_MAX_MACS


@functools.lru_cache(maxsize=64)
def band_sum_matrix(grid: Tuple[int, ...],
                    size: int,
                    transpose: bool = False,
                    device: Optional[torch.device] = None,
                    dtype: Optional[torch.dtype] = None) -> Tensor:
    """The band sums along one axis of length ``size`` as a 0/1 matrix,
    ``(k' size, size)`` (cached per device and dtype; built from Python
    numbers, so a traced graph holds it as a constant).

    Row ``b size + i`` is 1 at the positions ``i + u - P`` inside ``[0,
    size)`` for the taps ``u`` of band ``b``: ``S @ x`` stacks ``R_b`` of
    ``x`` ``(size, ...)`` band by band. With ``transpose=True`` each band's
    ``size x size`` block is transposed (``[Z_0 ... Z_{k'-1}] @ S`` sums
    along the columns).
    """
    half = sum(grid) // 2
    edges = band_edges(grid)
    rows = []
    for b in range(len(grid)):
        bounds = [(min(max(i + edges[b] - half, 0),
                       size), min(max(i + edges[b + 1] - half, 0), size))
                  for i in range(size)]
        block = [[float(lo <= t < hi) for t in range(size)]
                 for lo, hi in bounds]
        rows.extend(map(list, zip(*block)) if transpose else block)
    return torch.tensor(rows, dtype=dtype, device=device)


def _band_matrix_conv(x: Tensor, weight: Tensor,
                      grid: Sequence[int]) -> Tensor:
    """The band-matrix layout: three ``MatMul`` s and one ``Transpose``."""
    channels, height, width = (int(s) for s in x.shape[1:])
    grid, bands = tuple(grid), len(grid)
    rows = band_sum_matrix(grid, height, False, x.device, x.dtype)
    cols = band_sum_matrix(grid, width, True, x.device, x.dtype)
    row_sums = torch.matmul(rows, x).reshape(-1, channels, bands,
                                             height * width)  # R_a
    mixed = torch.matmul(weight[:, 0].transpose(-1, -2), row_sums)  # Z_b
    mixed = mixed.reshape(-1, channels, bands, height, width).transpose(2, 3)
    return torch.matmul(
        mixed.reshape(-1, channels, height, bands * width), cols)


def _box_mean(x: Tensor, height: int, width: int) -> Tensor:
    """Mean over every ``height x width`` window (stride 1, no padding)."""
    if height == width == 1:
        return x
    return F.avg_pool2d(x, (height, width), stride=1)


def _row_band_means(x: Tensor, grid: Sequence[int]) -> Tensor:
    """``R_a / s_a`` for every band ``a``: ``(N, C, k', H W)``.

    One pool per distinct width of the zero-padded map ``(N, C, H + 2P,
    W)``, the pools stacked along the rows, and one ``Gather`` of rows
    ``e_a + i`` of band ``a``'s pool.
    """
    channels, height, width = (int(s) for s in x.shape[1:])
    half = sum(grid) // 2
    padded = F.pad(x, (0, 0, half, half))
    widths = sorted(set(grid))
    first_row = {}  # of each width's pool among the stacked rows
    for s in widths:
        first_row[s] = sum(height + 2 * half - w + 1 for w in widths if w < s)
    index = torch.tensor([
        first_row[s] + edge + i for s, edge in zip(grid, band_edges(grid))
        for i in range(height)
    ],
                         device=x.device)
    pools = torch.cat([_box_mean(padded, s, 1) for s in widths], dim=-2)
    return pools.index_select(-2, index).reshape(-1, channels, len(grid),
                                                 height * width)


def _column_band_sums(z: Tensor, grid: Sequence[int]) -> Tensor:
    """``sum_b sum_{v in band b} z_b(i, j + v - P)`` for ``z`` ``(N, C, k',
    H, W)`` holding ``s_b Z_b``: ``(N, C, H, W)``.

    Band ``b`` shifted to column offset ``e_b - P`` over ``W + s_b - 1``
    columns (zeros outside the map) is one ``Pad`` of ``z`` (its negative
    pads crop the other bands and the columns out of reach). A band whose
    columns all fall outside the map (only on maps narrower than ``K``)
    adds nothing and is left out.
    """
    channels, _, height, width = (int(s) for s in z.shape[1:])
    num_bands, half = len(grid), sum(grid) // 2
    edges = band_edges(grid)
    out = None
    for s in sorted(set(grid)):
        shifted = [
            F.pad(z, (half - edges[b], edges[b + 1] - 1 - half, 0, 0, -b,
                      b + 1 - num_bands)) for b in range(num_bands)
            if grid[b] == s and edges[b] - half < width and half + 1 -
            edges[b + 1] < width
        ]
        if shifted:
            term = sum(shifted[1:],
                       shifted[0]).reshape(-1, channels, height, width + s - 1)
            term = _box_mean(term, 1, s)
            out = term if out is None else out + term
    return out


def band_mixing_matrix(weight: Tensor, grid: Sequence[int]) -> Tensor:
    """``M[c, b, a] = s_a s_b w_c(a, b)``: ``(C, k', k')``, the weights of
    step 2 (the box means of steps 1 and 3 divide by ``s_a`` and ``s_b``)."""
    sizes = torch.tensor(tuple(grid), dtype=weight.dtype, device=weight.device)
    return (weight[:, 0] * sizes[:, None] * sizes[None, :]).transpose(-1, -2)


def boxsum_peripheral_conv(x: Tensor,
                           weight: Tensor,
                           grid: Sequence[int],
                           band_matrices: Optional[bool] = None) -> Tensor:
    """Peripheral convolution by band sums (exact up to float round-off).

    The graph is built for the spatial size of ``x`` (an export traced at
    ``H x W`` runs at ``H x W``, any batch size).

    Args:
        x (Tensor): Input ``(N, C, H, W)``, any ``H, W >= 1`` (also smaller
            than the kernel).
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid, ``k'`` widths summing to odd
            ``K``.
        band_matrices (bool, optional): The layout: band matrices (True)
            or box means (False). Defaults to :func:`uses_band_matrices`.

    Returns:
        Tensor: ``(N, C, H, W)``, equal to ``F.conv2d(x, expand_weight(
        weight, grid), padding=K // 2, groups=C)``.
    """
    channels, height, width = (int(s) for s in x.shape[1:])
    if band_matrices is None:
        band_matrices = uses_band_matrices(grid, height, width)
    if band_matrices:
        return _band_matrix_conv(x, weight, grid)
    mixed = torch.matmul(
        band_mixing_matrix(weight, grid), _row_band_means(x, grid))
    return _column_band_sums(
        mixed.reshape(-1, channels, len(grid), height, width), grid)


class BoxSumPeripheralConv2d(nn.Module):
    """Deployed peripheral conv of the structured form: compact weights and
    a bias, computed by :func:`boxsum_peripheral_conv`.

    What :meth:`pelk_mm.models.pelk.PeLKBlock.switch_to_deploy` folds a
    :class:`~pelk_mm.PeripheralConv2d` into with ``deploy_mode=
    'structured'``: the same ``weight`` ``(C, 1, k', k')``, the positional
    embedding's constant in ``bias`` ``(C,)``. Stride 1, zero "same"
    padding.

    Args:
        channels (int): Number of channels ``C``.
        grid (Sequence[int]): Sharing grid; its sum is the kernel size.

    Shape:
        - Input: ``(N, C, H, W)``.
        - Output: ``(N, C, H, W)``.
    """

    def __init__(self, channels: int, grid: Sequence[int]):
        super().__init__()
        self.grid: Tuple[int, ...] = check_grid(grid)
        self.channels = channels
        self.kernel_size = sum(self.grid)
        num_bands = len(self.grid)
        self.weight = nn.Parameter(
            torch.empty(channels, 1, num_bands, num_bands))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``U(-1/K, 1/K)``, as :class:`~pelk_mm.PeripheralConv2d`."""
        bound = 1 / math.sqrt(self.kernel_size * self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def dense_weight(self) -> Tensor:
        """The materialised kernel, shape ``(C, 1, K, K)``."""
        return expand_weight(self.weight, self.grid)

    def forward(self, x: Tensor) -> Tensor:
        out = boxsum_peripheral_conv(x, self.weight, self.grid)
        return out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f'{self.channels}, kernel_size={self.kernel_size}, '
                f'grid={self.grid}')
