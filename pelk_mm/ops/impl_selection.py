"""Cost model behind ``impl='auto'`` on calibrated device types.

Contract: :func:`select_impl` predicts the run time of every exact
implementation from the shape alone and returns the cheapest; nothing is
timed, so the choice (and hence the result) is a deterministic function of
``(N, C, H, W, K, k', device type, backward needed)``. It is used where
:data:`COST_COEFFICIENTS` has an entry for the device type (``'cpu'``), and
everywhere in the deterministic mode of :mod:`pelk_mm.ops.impl_tuning`
(device types without coefficients, e.g. ``'cuda'``, measure instead).

Model, per implementation and per mode (forward only / forward + backward),
with ``M = N C`` maps, ``k'`` bands and FFT sizes ``L = fft_size(n + K // 2)``
(see :mod:`pelk_mm.ops.fft_conv`)::

    dense     t = a * M H W K^2 [K <= 13] + b * M H W K^2 [K > 13] + c
    fft       t = a * M L_H L_W log2(L_H L_W)                       + c
    blocksum  t = a * M H W (k' + 1)^2 + b * M (H + 1) (W + 1) k'    + c

The dense term is split at :data:`DENSE_FAST_MAX_KERNEL` because oneDNN's
depthwise convolution is fast only up to K = 13.

Every implementation is exact for every shape, so the pick changes the run
time, never the result; near a boundary between two implementations the
model may pick the slower one. The ``'cpu'`` coefficients are a
non-negative least-squares fit (``benchmarks/fit_cost_model.py``) of this
model to ``benchmarks/bench_peripheral_conv.py`` timings; the fit, its data
and what changed in the kernels since are recorded in
``benchmarks/results/cost_model_cpu_2026-11-28.md``. To refit, run the
benchmark and ``fit_cost_model.py`` on its JSON.
"""
import math
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor

from .fft_conv import fft_size

#: Largest kernel that oneDNN's depthwise convolution runs at its fast rate
#: (a separate dense coefficient above it).
DENSE_FAST_MAX_KERNEL = 13

#: Coefficients ``(a, b, c)`` in seconds, by device type, then mode
#: (``'fwd'`` or ``'fwd+bwd'``), then implementation.
COST_COEFFICIENTS: Dict[str, Dict[str, Dict[str, Tuple[float, ...]]]] = {
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
    (``benchmarks/fit_cost_model.py`` fits against them).

    Args:
        impl (str): ``'dense'``, ``'fft'`` or ``'blocksum'``.
        maps (int): ``M = N C``.
        height (int): ``H``.
        width (int): ``W``.
        grid (Sequence[int]): Sharing grid (``K = sum(grid)``,
            ``k' = len(grid)``).

    Returns:
        tuple[float, float]: The terms of the table above, each
        non-decreasing in ``M``, ``H``, ``W`` and ``K``.
    """
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


def predicted_seconds(impl: str,
                      shape: Sequence[int],
                      grid: Sequence[int],
                      device_type: str = 'cpu',
                      backward: bool = True) -> float:
    """Model time of one call of ``impl`` on an ``(N, C, H, W)`` input.

    Args:
        impl (str): ``'dense'``, ``'fft'`` or ``'blocksum'``.
        shape (Sequence[int]): ``(N, C, H, W)``.
        grid (Sequence[int]): Sharing grid.
        device_type (str): Key of :data:`COST_COEFFICIENTS`; a type without
            an entry gets the ``'cpu'`` coefficients. Defaults to 'cpu'.
        backward (bool): Forward + backward (else forward only). Defaults
            to True.

    Returns:
        float: ``a * first + b * second + c`` in seconds, with the
        non-negative coefficients of the device type and mode.
    """
    batch, channels, height, width = shape
    # Device types without an entry reach this only in the deterministic
    # mode of impl_tuning: they get the CPU coefficients.
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
        str: ``'dense'``, ``'fft'`` or ``'blocksum'``, whichever has the
        least :func:`predicted_seconds` for ``x``'s shape on its device
        type, forward + backward when autograd will need a backward.
    """
    backward = torch.is_grad_enabled() and (x.requires_grad
                                            or weight.requires_grad)
    shape = tuple(int(size) for size in x.shape)  # specialised if symbolic
    costs = {
        impl: predicted_seconds(impl, shape, grid, x.device.type, backward)
        for impl in ('dense', 'fft', 'blocksum')
    }
    return min(costs, key=costs.get)
