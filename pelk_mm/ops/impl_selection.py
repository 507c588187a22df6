"""Cost model behind ``impl='auto'`` of the peripheral convolution.

``select_impl`` predicts the run time of every exact implementation from the
shape alone and returns the cheapest; no call is ever timed, so the choice
(and hence the result) is a deterministic function of
``(N, C, H, W, K, k', device type, grad needed)``.

Model, per implementation and per mode (forward only / forward + backward),
with ``M = N C`` maps, ``k'`` bands and FFT sizes ``L = fft_size(n + K // 2)``
(see :mod:`pelk_mm.ops.fft_conv`)::

    dense     t = a * M H W K^2 [K <= 13] + b * M H W K^2 [K > 13] + c
    fft       t = a * M L_H L_W log2(L_H L_W)                       + c
    blocksum  t = a * M H W (k' + 1)^2 + b * M (H + 1) (W + 1) k'    + c

The dense term is split because oneDNN's depthwise convolution is fast only
up to K = 13 (13-17 GMAC/s at 1 thread) and about 2 GMAC/s from K = 15 on;
its backward is slow at every K (at K = 13, 16x16 maps, fwd+bwd is 15x the
forward), so for training FFT already wins at K = 13 from 16x16 maps on.

Calibration (:data:`COST_COEFFICIENTS`): non-negative least squares on the
relative error, fitted to ``benchmarks/bench_peripheral_conv.py --threads 1
--methods dense fft blocksum`` at N = 1, C = 48, K in {13, 31, 51, 101},
maps 8-128 (4 runs, fastest median of each case; this 2-core machine is
shared, and 2-thread timings were dominated by scheduling stalls), torch
2.14.1 CPU, AMD EPYC (Zen 4, AVX-512). Measured medians in ms (fwd+bwd,
dense / fft / blocksum) and the model's pick:

====  ======  ========================  =====================
K     map     dense / fft / blocksum    fastest = model pick
====  ======  ========================  =====================
13    8       0.70 / 1.19 / 1.04        dense
13    16      2.61 / 1.79 / 1.87        fft
13    128     145 / 46.0 / 582          fft
31    8       3.47 / 1.79 / 1.06        blocksum
31    64      318 / 11.7 / 46.1         fft
51    16      39.3 / 4.50 / 2.66        blocksum
51    32      184 / 5.01 / 12.6         fft
101   16      193 / 8.00 / 3.56         blocksum
101   64      8309 / 17.4 / 56.1        fft
====  ======  ========================  =====================

The fft timings above predate moving its weight gradient to float64, which
made its fwd+bwd at 1 x 48 x 128 x 128 about 1.3x (K = 51) to 1.5x (K = 101)
slower; the documented picks still hold (tests/test_fast_conv.py), but near
the fft / blocksum boundary (e.g. K = 101 on 32x32 maps) blocksum can now be
slightly faster than the fft that the model picks. Recalibrate with the
benchmark when the kernels change.

Forward only, dense wins every K = 13 case (0.14 ms at 8x8 to 12.4 ms at
128x128 vs FFT's 0.36 / 36.3 ms). The model's pick was the measured fastest
in all 36 calibration cases (fwd and fwd+bwd, K 13-101, maps 8-64 plus
128 for K <= 31); its absolute predictions are within 0.08-1.4x of the
measured times (poorest for blocksum on big maps, which it never picks). On
PeLK-T's stage 4 (N = 2, C = 374, 16x16, K = 13) it picks dense for
inference (measured 1.4 ms vs FFT 8.0) and FFT for training (11 ms vs dense
54).

CUDA (and every other device type) has NO coefficients of its own yet: until
a device run calibrates it, ``auto`` there uses the CPU coefficients above,
uncalibrated for GPUs (no GPU was available to this project). Its picks on
a GPU are deterministic but not known to be the fastest. To calibrate, one
command on the GPU machine (``benchmarks/device_check.py --out OUT``) runs
``bench_peripheral_conv.py --device cuda`` and
``benchmarks/fit_cost_model.py`` on its JSON, which fits the coefficients
the same way (non-negative least squares on the relative error) and prints
the ``'cuda'`` entry to paste into :data:`COST_COEFFICIENTS`, with every
measured cell's pick against the fastest exact method (the target: within
10 % on every cell).

The blocksum timings above also predate its backward recomputing the band
sums instead of saving them (:mod:`pelk_mm.ops.blocksum_conv`), which made
its CPU forward + backward 1.0-1.8x slower (K 31-101, maps 16-64, one
interleaved comparison on a loaded machine); the CPU coefficients were not
refitted since, so near the fft / blocksum boundary ``auto`` may now pick
blocksum where fft is slightly faster.
"""
import math
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from .fft_conv import fft_size

#: Largest kernel that oneDNN's depthwise convolution runs fast (measured on
#: this CPU: 13-17 GMAC/s up to K = 13, about 2 GMAC/s from K = 15 on).
DENSE_FAST_MAX_KERNEL = 13

#: Coefficients ``(a, b, c)`` in seconds, by device type, then mode
#: (``'fwd'`` or ``'fwd+bwd'``), then implementation.
COST_COEFFICIENTS: Dict[str, Dict[str, Dict[str, Tuple[float, float,
                                                        float]]]] = {
    'cpu': {
        'fwd': {
            'dense': (3.83e-11, 5.68e-10, 1.11e-4),
            'fft': (7.59e-10, 0.0, 2.79e-4),
            'blocksum': (4.91e-11, 4.66e-9, 1.01e-4),
        },
        'fwd+bwd': {
            'dense': (1.20e-9, 1.49e-9, 5.02e-5),
            'fft': (2.33e-9, 0.0, 1.08e-3),
            'blocksum': (0.0, 1.65e-8, 2.91e-4),
        },
    },
}


def work_terms(impl: str, maps: int, height: int, width: int,
               grid: Sequence[int]) -> Tuple[float, float]:
    """The two work terms of the model that ``a`` and ``b`` multiply
    (``benchmarks/fit_cost_model.py`` fits against them)."""
    kernel_size, bands = sum(grid), len(grid)
    if impl == 'dense':
        work = maps * height * width * kernel_size**2
        fast = kernel_size <= DENSE_FAST_MAX_KERNEL
        return (work, 0.0) if fast else (0.0, work)
    if impl == 'fft':
        size_h = fft_size(height + kernel_size // 2)
        size_w = fft_size(width + kernel_size // 2)
        return maps * size_h * size_w * math.log2(size_h * size_w), 0.0
    return (maps * height * width * (bands + 1)**2,
            maps * (height + 1) * (width + 1) * bands)


def predicted_seconds(impl: str, shape: Sequence[int], grid: Sequence[int],
                      device_type: str = 'cpu', backward: bool = True
                      ) -> float:
    """Model time of one call of ``impl`` on an ``(N, C, H, W)`` input."""
    batch, channels, height, width = shape
    # Device types without an entry (CUDA until calibrated): CPU coefficients.
    coeffs = COST_COEFFICIENTS.get(device_type, COST_COEFFICIENTS['cpu'])
    a, b, c = coeffs['fwd+bwd' if backward else 'fwd'][impl]
    first, second = work_terms(impl, batch * channels, height, width, grid)
    return a * first + b * second + c


def select_impl(x: Tensor, weight: Tensor, grid: Sequence[int]) -> str:
    """Name of the implementation the cost model predicts to be fastest.

    Args:
        x (Tensor): Input ``(N, C, H, W)``.
        weight (Tensor): Compact weights ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid.

    Returns:
        str: ``'dense'``, ``'fft'`` or ``'blocksum'``.
    """
    backward = torch.is_grad_enabled() and (x.requires_grad
                                            or weight.requires_grad)
    costs = {
        impl: predicted_seconds(impl, x.shape, grid, x.device.type, backward)
        for impl in ('dense', 'fft', 'blocksum')
    }
    return min(costs, key=costs.get)
