"""Dtype policy of the fast peripheral convolutions.

FFTs and summed-area tables are not safe in 16-bit floats (CPU FFTs do not
even exist for them), so the fast paths always compute in at least float32:
under ``torch.autocast`` they compute in float32 and return the autocast
dtype, like an autocast-listed op would (float64 inputs, which autocast
leaves alone, stay float64); half-precision inputs outside
autocast are computed in float32 and returned in their own dtype; float32 and
float64 inputs are computed in their dtype. The result does not depend on
anything but the inputs, so it stays deterministic.

The autocast state of the input's device comes from
``torch.is_autocast_enabled(device_type)`` / ``torch.get_autocast_dtype``
where torch has them (>= 2.4, pytorch/pytorch#124359); older torch (2.1-2.3)
only answers per device with its CPU and CUDA functions, so there autocast is
seen on those two devices (the only ones with autocast in those releases
besides XPU/HPU extensions).
"""
import functools
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

ConvFn = Callable[[Tensor, Tensor, Sequence[int]], Tensor]


def _takes_device_type() -> bool:
    """Whether ``torch.is_autocast_enabled`` accepts a device type."""
    try:
        torch.is_autocast_enabled('cpu')
    except TypeError:  # torch < 2.4: takes no arguments
        return False
    return True


#: torch < 2.4: the autocast queries of each device type that has them.
_PER_DEVICE_QUERIES = None if _takes_device_type() else {
    'cpu': (torch.is_autocast_cpu_enabled, torch.get_autocast_cpu_dtype),
    'cuda': (torch.is_autocast_enabled, torch.get_autocast_gpu_dtype),
}


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype on ``device_type``; None outside autocast."""
    if _PER_DEVICE_QUERIES is None:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return None
    is_enabled, get_dtype = _PER_DEVICE_QUERIES.get(device_type,
                                                    (lambda: False, None))
    return get_dtype() if is_enabled() else None


def float32_under_autocast(fn: ConvFn) -> ConvFn:
    """Wrap ``fn(x, weight, grid)`` with the dtype policy above."""

    @functools.wraps(fn)
    def wrapper(x: Tensor, weight: Tensor, grid: Sequence[int]) -> Tensor:
        device_type = x.device.type
        out_dtype = autocast_dtype(device_type)
        if (out_dtype is not None
                and x.dtype != torch.float64):  # autocast leaves float64
            with torch.autocast(device_type, enabled=False):
                out = fn(x.float(), weight.float(), grid)
            return out.to(out_dtype)
        if x.dtype in (torch.float16, torch.bfloat16):
            return fn(x.float(), weight.float(), grid).to(x.dtype)
        return fn(x, weight.to(x.dtype), grid)

    return wrapper
