"""SLaK-T, re-implemented for benchmarking only (no pretrained weights).

SLaK ("More ConvNets in the 2020s: Scaling up Kernels Beyond 51x51 using
Sparsity", Liu et al., ICLR 2023) is not packaged by OpenMMLab; this module
rebuilds its tiny model from the paper and its public repository
(VITA-Group/SLaK, ``models/SLaK.py`` with ``--Decom True --width_factor 1.3
--kernel_size 51 49 47 13 5``) so that :mod:`bench_peers` can time it beside
PeLK-T. It reproduces the compute, not the training recipe: the sparse
training of the kernels (40 % of the weights pruned) does not change the
dense cost and is left out.

Architecture (ConvNeXt-T's macro design):

- stem ``Conv 4x4 / 4`` + LayerNorm, downsampling ``LayerNorm`` +
  ``Conv 2x2 / 2``; depths ``(3, 3, 9, 3)``; widths ``1.3x`` ConvNeXt-T's
  ``(96, 192, 384, 768)``, truncated as SLaK does: ``(124, 249, 499, 998)``;
- block: token mixer ``D(x) = BN(conv_{K x 5}(x)) + BN(conv_{5 x K}(x)) +
  BN(conv_{5 x 5}(x))`` (depthwise, no conv bias, "same" zero padding;
  ``K = 51, 49, 47, 13`` per stage), then LayerNorm, ``Linear(C, 4C)``,
  GELU, ``Linear(4C, C)``, layer scale, residual;
- outputs: the four stage outputs, each through its own LayerNorm (as
  mmpretrain's ConvNeXt with ``gap_before_final_norm=False``).

:meth:`SLaK.switch_to_deploy` merges each token mixer for inference as SLaK
does (its ``merge_kernel``, RepLKNet's structural re-parameterisation): every
BN is folded into its conv and the three kernels are zero-padded to
``K x K`` and added, giving one depthwise ``K x K`` conv with a bias.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

#: SLaK-T: ConvNeXt-T's widths times 1.3 (``int()``, as SLaK's
#: ``width_factor``), its depths, the large kernels and the short side.
SLAK_T = dict(
    widths=tuple(int(c * 1.3) for c in (96, 192, 384, 768)),
    depths=(3, 3, 9, 3),
    kernel_sizes=(51, 49, 47, 13),
    small_kernel=5)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv_bn(channels: int, kernel: Tuple[int, int]) -> nn.Sequential:
    """Depthwise conv without bias, "same" zero padding, then BN."""
    return nn.Sequential(
        nn.Conv2d(
            channels,
            channels,
            kernel,
            padding=(kernel[0] // 2, kernel[1] // 2),
            groups=channels,
            bias=False), nn.BatchNorm2d(channels))


def _fused_kernel(branch: nn.Sequential, size: int) -> Tuple[Tensor, Tensor]:
    """The branch's BN folded into its kernel, zero-padded (centred) to
    ``size x size``: ``(C, 1, size, size)`` and the bias ``(C,)``."""
    conv, bn = branch
    std = (bn.running_var + bn.eps).sqrt()
    kernel = conv.weight * (bn.weight / std).reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * bn.weight / std
    kh, kw = conv.kernel_size
    pad_h, pad_w = (size - kh) // 2, (size - kw) // 2
    return F.pad(kernel, (pad_w, pad_w, pad_h, pad_h)), bias


class DecomposedLargeKernel(nn.Module):
    """SLaK's token mixer: ``K x 5`` + ``5 x K`` stripes and a ``5 x 5``
    branch, each with BN (``Decom=True``); one merged ``K x K`` depthwise
    conv after :meth:`merge`.

    Args:
        channels (int): Number of channels ``C``.
        kernel_size (int): Long side ``K`` (odd).
        small_kernel (int): Short side and the square branch's size.
    """

    def __init__(self, channels: int, kernel_size: int, small_kernel: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stripe_h = _conv_bn(channels, (kernel_size, small_kernel))
        self.stripe_w = _conv_bn(channels, (small_kernel, kernel_size))
        self.small = _conv_bn(channels, (small_kernel, small_kernel))
        self.merged = None

    def forward(self, x: Tensor) -> Tensor:
        if self.merged is not None:
            return self.merged(x)
        return self.stripe_h(x) + self.stripe_w(x) + self.small(x)

    @torch.no_grad()
    def merge(self) -> None:
        """Replace the three branches by one depthwise ``K x K`` conv that
        computes the same in eval mode (BN with running statistics);
        nothing to do once merged."""
        if self.merged is not None:
            return
        size = self.kernel_size
        parts = [
            _fused_kernel(b, size)
            for b in (self.stripe_h, self.stripe_w, self.small)
        ]
        channels = parts[0][0].shape[0]
        merged = nn.Conv2d(
            channels, channels, size, padding=size // 2, groups=channels)
        merged.weight.copy_(sum(k for k, _ in parts))
        merged.bias.copy_(sum(b for _, b in parts))
        self.merged = merged.to(parts[0][0])
        del self.stripe_h, self.stripe_w, self.small


class SLaKBlock(nn.Module):
    """Token mixer, then the ConvNeXt MLP with layer scale, residual."""

    def __init__(self, channels: int, kernel_size: int, small_kernel: int,
                 layer_scale_init: float):
        super().__init__()
        self.large_kernel = DecomposedLargeKernel(channels, kernel_size,
                                                  small_kernel)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels, ), layer_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        y = self.large_kernel(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class SLaK(nn.Module):
    """SLaK backbone returning its four stage outputs (each LayerNormed).

    Args:
        widths (Sequence[int]): Channels per stage.
        depths (Sequence[int]): Blocks per stage.
        kernel_sizes (Sequence[int]): Long kernel side ``K`` per stage.
        small_kernel (int): Short side of the stripes and the square branch.
        layer_scale_init (float): Initial layer scale. Defaults to 1e-6.

    Shape:
        - Input: ``(N, 3, H, W)``.
        - Output: a tuple of four ``(N, widths[i], H / 2^(i+2), W /
          2^(i+2))`` maps.
    """

    def __init__(self,
                 widths: Sequence[int] = SLAK_T['widths'],
                 depths: Sequence[int] = SLAK_T['depths'],
                 kernel_sizes: Sequence[int] = SLAK_T['kernel_sizes'],
                 small_kernel: int = SLAK_T['small_kernel'],
                 layer_scale_init: float = 1e-6):
        super().__init__()
        if not len(widths) == len(depths) == len(kernel_sizes) == 4:
            raise ValueError('`widths`, `depths` and `kernel_sizes` must '
                             'have 4 entries each, got '
                             f'{widths}, {depths}, {kernel_sizes}')
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(3, widths[0], 4, stride=4),
                ChannelsFirstLayerNorm(widths[0], eps=1e-6))
        ] + [
            nn.Sequential(
                ChannelsFirstLayerNorm(widths[i], eps=1e-6),
                nn.Conv2d(widths[i], widths[i + 1], 2, stride=2))
            for i in range(3)
        ])
        self.stages = nn.ModuleList(
            nn.Sequential(*[
                SLaKBlock(widths[i], kernel_sizes[i], small_kernel,
                          layer_scale_init) for _ in range(depths[i])
            ]) for i in range(4))
        self.norms = nn.ModuleList(
            ChannelsFirstLayerNorm(c, eps=1e-6) for c in widths)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        outs = []
        for down, stage, norm in zip(self.downsample_layers, self.stages,
                                     self.norms):
            x = stage(down(x))
            outs.append(norm(x))
        return tuple(outs)

    def switch_to_deploy(self) -> None:
        """Merge every token mixer into one depthwise ``K x K`` conv."""
        for module in self.modules():
            if isinstance(module, DecomposedLargeKernel):
                module.merge()
