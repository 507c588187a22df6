"""The deploy form of a peripheral conv: one plain depthwise ``nn.Conv2d``.

:func:`fold_peripheral_conv` is what :meth:`pelk_mm.PeLK.switch_to_deploy`
does to every block; :func:`deployed_conv` is the module it produces and
that ``PeLK(deploy=True)`` builds directly.
"""
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..ops import PeripheralConv2d, pos_embed_bias


def deployed_conv(channels: int, kernel_size: int) -> nn.Conv2d:
    """The deployed token mixer: a depthwise ``K x K`` conv with bias.

    Weights ``(channels, 1, K, K)``, zero padding ``K // 2``.
    """
    return nn.Conv2d(
        channels,
        channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=channels,
        bias=True)


@torch.no_grad()
def fold_peripheral_conv(conv: PeripheralConv2d,
                         pos_embed: Optional[Tensor] = None) -> nn.Conv2d:
    """The :func:`deployed_conv` that computes what ``conv`` computes.

    The dense kernel is :meth:`PeripheralConv2d.dense_weight` (masked zeros
    included) and the positional embedding is folded into the bias (Eq. 3
    with zero padding adds the per-channel constant ``sum_ij w(i, j)
    h(i, j)``, the literal reading).

    Args:
        conv (PeripheralConv2d): The conv to fold (with a bias).
        pos_embed (Tensor, optional): Its positional embedding ``h``
            ``(channels, K, K)``.

    Returns:
        nn.Conv2d: On ``conv``'s device and dtype.
    """
    folded = deployed_conv(conv.channels, conv.kernel_size).to(conv.weight)
    folded.weight.copy_(conv.dense_weight())
    bias = conv.bias.clone()
    if pos_embed is not None:
        bias += pos_embed_bias(conv.weight, conv.grid, pos_embed)
    folded.bias.copy_(bias)
    return folded
