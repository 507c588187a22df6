"""Dtype policy of the fast peripheral convolutions.

FFTs and summed-area tables are not safe in 16-bit floats (CPU FFTs do not
even exist for them), so the fast paths always compute in at least float32:
under ``torch.autocast`` they compute in float32 and return the autocast
dtype, like an autocast-listed op would (float64 inputs, which autocast
leaves alone, stay float64); half-precision inputs outside
autocast are computed in float32 and returned in their own dtype; float32 and
float64 inputs are computed in their dtype. The result does not depend on
anything but the inputs, so it stays deterministic.
"""
import functools
from typing import Callable, Sequence

import torch
from torch import Tensor

ConvFn = Callable[[Tensor, Tensor, Sequence[int]], Tensor]


def float32_under_autocast(fn: ConvFn) -> ConvFn:
    """Wrap ``fn(x, weight, grid)`` with the dtype policy above."""

    @functools.wraps(fn)
    def wrapper(x: Tensor, weight: Tensor, grid: Sequence[int]) -> Tensor:
        device_type = x.device.type
        if (torch.is_autocast_enabled(device_type)
                and x.dtype != torch.float64):  # autocast leaves float64
            out_dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, enabled=False):
                out = fn(x.float(), weight.float(), grid)
            return out.to(out_dtype)
        if x.dtype in (torch.float16, torch.bfloat16):
            return fn(x.float(), weight.float(), grid).to(x.dtype)
        return fn(x, weight.to(x.dtype), grid)

    return wrapper
