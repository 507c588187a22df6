"""Where the fast peripheral convolutions may accumulate in float64.

The FFT weight gradient (:mod:`pelk_mm.ops.fft_conv`) and the summed-area
tables (:mod:`pelk_mm.ops.blocksum_conv`) need more than float32's 24 bits in
places. float64 is the simple answer where it is cheap: on CPUs, and on the
CUDA data-centre parts whose FP64 rate is half their FP32 rate
(:data:`FP64_FULL_RATE_CAPABILITIES`):

=======  ======================  ============
cc       parts                   FP64 : FP32
=======  ======================  ============
6.0      P100                    1 : 2
7.0      V100                    1 : 2
8.0      A100, A30               1 : 2
9.0      H100, H200, GH200       1 : 2
=======  ======================  ============

Every other GPU (6.1 Pascal GeForce / Quadro, 7.5 Turing, 8.6 / 8.7 Ampere
GeForce and workstation, 8.9 Ada and L4 / L40, 10.x / 12.x Blackwell) runs
FP64 at 1/32 or 1/64 of its FP32 rate, and MPS has no float64 at all: there
the fast paths accumulate in float32 with error compensation instead (mean
split, centred gradients, two-term tables; see the two modules), which keeps
their error within 2x of the dense float32 convolution's
(``tests/test_fast_conv.py`` forces that path on the CPU).

Float64 inputs always compute in float64, whatever the device. The choice
depends only on the device, never on timings, so results stay
deterministic. :func:`force_accumulation_dtype` overrides it (for tests and
benchmarks).
"""
import contextlib
from typing import Iterator, Optional

import torch

#: CUDA compute capabilities with a 1/2-rate FP64 unit (see above).
FP64_FULL_RATE_CAPABILITIES = frozenset({(6, 0), (7, 0), (8, 0), (9, 0)})

_forced_dtype: Optional[torch.dtype] = None


def fast_float64(device: torch.device) -> bool:
    """Whether ``device`` runs float64 at (at least) half its float32 rate."""
    if device.type == 'cpu':
        return True
    if device.type == 'cuda':
        return torch.cuda.get_device_capability(
            device) in FP64_FULL_RATE_CAPABILITIES
    return False


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype in which the fast paths accumulate for the input ``x``.

    float64 for float64 inputs; otherwise the forced dtype if any
    (:func:`force_accumulation_dtype`), else float64 on devices where it is
    fast (:func:`fast_float64`) and float32 elsewhere.
    """
    if x.dtype == torch.float64:
        return torch.float64
    if _forced_dtype is not None:
        return _forced_dtype
    return torch.float64 if fast_float64(x.device) else torch.float32


def mean_term_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype of the weight gradient's mean term ``m corr(1, dy)``.

    Its ``O(N C H W)`` reduction carries the whole magnitude of the input's
    mean (float32 measured 3.3x the dense error for inputs of mean 30), and
    being memory-bound it costs about the same in float64 on every device
    that has float64: float64 everywhere but MPS.
    """
    return torch.float32 if x.device.type == 'mps' else torch.float64


@contextlib.contextmanager
def force_accumulation_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make :func:`accumulation_dtype` return ``dtype`` (float32 or float64)
    for non-float64 inputs inside the ``with`` block."""
    global _forced_dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError('`dtype` must be torch.float32 or torch.float64, '
                         f'got {dtype!r}')
    previous, _forced_dtype = _forced_dtype, dtype
    try:
        yield
    finally:
        _forced_dtype = previous
