"""The deploy forms of a peripheral conv (``deploy_mode``).

:func:`fold_peripheral_conv` is what :meth:`pelk_mm.PeLK.switch_to_deploy`
does to every block; :func:`deployed_conv` is the module it produces and
that ``PeLK(deploy=True)`` builds directly. Both forms compute exactly what
the peripheral conv computes, the positional-embedding term folded into the
bias:

* ``'structured'`` keeps the compact weights ``(C, 1, k', k')`` and computes
  the convolution by band sums in standard ONNX operators
  (:class:`~pelk_mm.ops.boxsum_conv.BoxSumPeripheralConv2d`, fast in
  onnxruntime / TensorRT);
* ``'dense'`` expands them to a plain depthwise ``K x K`` ``nn.Conv2d``
  (for runtimes that need a single conv).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..ops import PeripheralConv2d, pos_embed_bias
from ..ops.boxsum_conv import BoxSumPeripheralConv2d

#: Deploy forms of the token mixer (``deploy_mode``), see the module
#: docstring.
DEPLOY_MODES = ('structured', 'dense')


def check_deploy_mode(deploy_mode: str) -> str:
    """Validate ``deploy_mode`` (one of :data:`DEPLOY_MODES`)."""
    if deploy_mode not in DEPLOY_MODES:
        raise ValueError(f'`deploy_mode` must be one of {DEPLOY_MODES}, '
                         f'got {deploy_mode!r}')
    return deploy_mode


def _dense_conv(channels: int, grid: Sequence[int]) -> nn.Conv2d:
    kernel_size = sum(grid)
    return nn.Conv2d(
        channels,
        channels,
        kernel_size,
        padding=kernel_size // 2,
        groups=channels,
        bias=True)


#: The module of each deploy form, ``(channels, grid) -> module``.
_DEPLOYED_CONVS = dict(structured=BoxSumPeripheralConv2d, dense=_dense_conv)


def deployed_conv(channels: int, grid: Sequence[int],
                  deploy_mode: str) -> nn.Module:
    """The deployed token mixer of ``deploy_mode``, with a bias.

    ``'structured'``: :class:`BoxSumPeripheralConv2d`, compact weights
    ``(channels, 1, k', k')``; ``'dense'``: a depthwise ``K x K``
    ``nn.Conv2d``, weights ``(channels, 1, K, K)``, zero padding ``K // 2``.

    Args:
        channels (int): The number of channels.
        grid (Sequence[int]): The sharing grid, summing to ``K``.
        deploy_mode (str): One of :data:`DEPLOY_MODES`, as
            :func:`check_deploy_mode` returns it.
    """
    return _DEPLOYED_CONVS[deploy_mode](channels, grid)


@torch.no_grad()
def fold_peripheral_conv(conv: PeripheralConv2d,
                         pos_embed: Optional[Tensor] = None,
                         deploy_mode: str = 'structured') -> nn.Module:
    """The :func:`deployed_conv` that computes what ``conv`` computes.

    The structured form copies the compact weights, the dense form
    :meth:`PeripheralConv2d.dense_weight` (masked zeros included); both fold
    the positional embedding into the bias (Eq. 3 with zero padding adds the
    per-channel constant ``sum_ij w(i, j) h(i, j)``, the literal reading).

    Args:
        conv (PeripheralConv2d): The conv to fold (with a bias).
        pos_embed (Tensor, optional): Its positional embedding ``h``
            ``(channels, K, K)``.
        deploy_mode (str): One of :data:`DEPLOY_MODES`, as
            :func:`check_deploy_mode` returns it. Defaults to
            ``'structured'``.

    Returns:
        nn.Module: On ``conv``'s device and dtype.
    """
    folded = deployed_conv(conv.channels, conv.grid,
                           deploy_mode).to(conv.weight)
    folded.weight.copy_(conv.weight if deploy_mode ==
                        'structured' else conv.dense_weight())
    bias = conv.bias.clone()
    if pos_embed is not None:
        bias += pos_embed_bias(conv.weight, conv.grid, pos_embed)
    folded.bias.copy_(bias)
    return folded
