"""The small pieces of the PeLK network that torch lacks or draws otherwise.

:class:`DropPath` (stochastic depth) and :class:`LayerNorm2d` (LayerNorm over
the channels of ``(N, C, H, W)`` maps) compute what mmcv's ``DropPath`` and
mmpretrain's ``LayerNorm2d`` (``LN2d``) compute, with the same parameters
(``weight`` and ``bias`` of the norm); :func:`trunc_normal_` draws what
mmengine's (and timm's) ``trunc_normal_`` draws from the same generator
state, on every torch (torch's own changed its sampler in 2.x releases). So
the network needs torch alone.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class DropPath(nn.Module):
    """Drop the whole residual branch of a sample with probability
    ``drop_prob`` while training (stochastic depth), scaling kept samples by
    ``1 / (1 - drop_prob)``; the identity in eval mode.

    Args:
        drop_prob (float): Probability of dropping a sample's branch, in
            ``[0, 1)``.
    """

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        """``(N, ...) -> (N, ...)``: each sample zeroed or rescaled."""
        if self.drop_prob == 0. or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        shape = (x.shape[0], ) + (1, ) * (x.ndim - 1)
        keep = (keep_prob +
                torch.rand(shape, dtype=x.dtype, device=x.device)).floor()
        return x.div(keep_prob) * keep

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a 2d map.

    Args:
        num_channels (int): The number of channels ``C``.
        eps (float): Added to the variance. Defaults to 1e-6.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor, data_format: str = 'channel_first') -> Tensor:
        """Normalise each pixel's ``C`` channels.

        Args:
            x (Tensor): ``(N, C, H, W)`` with ``'channel_first'`` or
                ``(N, H, W, C)`` with ``'channel_last'``.
            data_format (str): ``'channel_first'`` or ``'channel_last'``.

        Returns:
            Tensor: The shape of ``x`` (contiguous for ``'channel_first'``).
        """
        if data_format == 'channel_last':
            return F.layer_norm(x, self.normalized_shape, self.weight,
                                self.bias, self.eps)
        x = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
            self.bias, self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def trunc_normal_(tensor: Tensor,
                  std: float = 1.,
                  mean: float = 0.,
                  a: float = -2.,
                  b: float = 2.) -> Tensor:
    """Fill ``tensor`` in place from ``N(mean, std^2)`` truncated to
    ``[a, b]``, by the inverse CDF of a uniform draw (one ``uniform_`` call,
    as mmengine's and timm's ``trunc_normal_``).

    Args:
        tensor (Tensor): The tensor to fill.
        std (float): Standard deviation before truncation. Defaults to 1.
        mean (float): Mean. Defaults to 0.
        a (float): Lower bound (absolute). Defaults to -2.
        b (float): Upper bound (absolute). Defaults to 2.

    Returns:
        Tensor: ``tensor``.
    """

    def norm_cdf(x):
        return (1. + math.erf(x / math.sqrt(2.))) / 2.

    lower, upper = norm_cdf((a - mean) / std), norm_cdf((b - mean) / std)
    tensor.uniform_(2 * lower - 1, 2 * upper - 1)
    tensor.erfinv_()
    tensor.mul_(std * math.sqrt(2.))
    tensor.add_(mean)
    return tensor.clamp_(min=a, max=b)
