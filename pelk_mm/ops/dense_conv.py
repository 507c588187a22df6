"""Reference peripheral convolution: expand the kernel, run ``F.conv2d``."""
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from .sharing_grid import expand_weight


def dense_peripheral_conv(x: Tensor, weight: Tensor,
                          grid: Sequence[int]) -> Tensor:
    """Reference implementation: expand the kernel and run ``F.conv2d``.

    Args:
        x (Tensor): Input of shape ``(N, C, H, W)``.
        weight (Tensor): Compact weights of shape ``(C, 1, k', k')``.
        grid (Sequence[int]): Sharing grid, ``k'`` widths summing to ``K``.

    Returns:
        Tensor: ``(N, C, H, W)``, the depthwise convolution of ``x`` with
        :func:`expand_weight` ``(weight, grid)`` and zero padding ``K // 2``.
    """
    return F.conv2d(
        x,
        expand_weight(weight, grid),
        padding=sum(grid) // 2,
        groups=x.shape[1])
