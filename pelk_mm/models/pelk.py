"""PeLK backbone: ConvNeXt frame with partial peripheral convolutions.

`PeLK: Parameter-efficient Large Kernel ConvNets with Peripheral Convolution
<https://arxiv.org/abs/2403.07589>`_ (CVPR 2024). Modelled on mmpretrain's
``ConvNeXt`` (same stem, downsampling, block, ``out_indices``,
``gap_before_final_norm``, ``frozen_stages``, ``with_cp``, ``init_cfg`` and
``get_layer_depth``), with the depthwise 7x7 conv replaced by a partial
peripheral conv of a large kernel and one kernel-wise positional embedding
per stage.
"""
from itertools import chain
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS
from mmpretrain.models.utils import build_norm_layer
from torch import Tensor

from ..ops import PeripheralConv2d, check_grid, pos_embed_bias, sharing_grid
from ..ops.peripheral_conv import check_pos_embed_mode


class PeLKBlock(BaseModule):
    """ConvNeXt block whose token mixer is a partial peripheral conv.

    ``x -> [PeripheralConv2d on the first g channels | identity on the rest]
    -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> layer scale
    -> DropPath -> + x``, with ``g = int(C * conv_ratio)``.

    Args:
        in_channels (int): Number of channels ``C``.
        grid (Sequence[int]): Sharing grid of the peripheral conv; its sum is
            the kernel size ``K``.
        conv_ratio (float): Fraction of the channels that go through the
            peripheral conv (Inception-style partial conv). Defaults to 3/8.
        norm_cfg (dict): Config of the norm layer.
            Defaults to ``dict(type='LN2d', eps=1e-6)``.
        act_cfg (dict): Config of the MLP activation.
            Defaults to ``dict(type='GELU')``.
        mlp_ratio (float): Expansion ratio of the MLP. Defaults to 4.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Initial value of the layer scale
            ``gamma``; 0 disables it. Defaults to 1e-6.
        impl (str): Implementation of the peripheral conv (see
            :class:`pelk_mm.PeripheralConv2d`). Defaults to ``'auto'``.
        pos_embed_mode (str): Where the positional embedding is added,
            ``'literal'`` (every tap) or ``'in_image'`` (taps inside the
            image), see :func:`pelk_mm.peripheral_conv2d`. Defaults to
            ``'literal'``.
        with_cp (bool): Use gradient checkpointing. Defaults to False.
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(self,
                 in_channels: int,
                 grid: Sequence[int],
                 conv_ratio: float = 3 / 8,
                 norm_cfg: dict = dict(type='LN2d', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 mlp_ratio: float = 4.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 impl: str = 'auto',
                 pos_embed_mode: str = 'literal',
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.conv_channels = int(in_channels * conv_ratio)
        self.pos_embed_mode = pos_embed_mode
        self.peripheral_conv = PeripheralConv2d(
            self.conv_channels,
            sum(grid),
            grid=grid,
            bias=True,
            impl=impl,
            pos_embed_mode=pos_embed_mode)
        self.norm = build_norm_layer(norm_cfg, in_channels)
        mid_channels = int(mlp_ratio * in_channels)
        self.pointwise_conv1 = nn.Linear(in_channels, mid_channels)
        self.act = build_activation_layer(act_cfg)
        self.pointwise_conv2 = nn.Linear(mid_channels, in_channels)
        self.gamma = nn.Parameter(
            layer_scale_init_value *
            torch.ones(in_channels)) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0. else nn.Identity()

    def mix_tokens(self, x: Tensor, pos_embed: Optional[Tensor] = None):
        """Partial peripheral conv: convolve the first ``conv_channels``
        channels (Eq. 3 with ``pos_embed``), pass the others through.

        Args:
            x (Tensor): ``(N, C, H, W)``.
            pos_embed (Tensor, optional): The stage's positional embedding
                ``(conv_channels, K, K)``; None once deployed.

        Returns:
            Tensor: ``(N, C, H, W)``.
        """
        x_conv, x_id = x.split(
            [self.conv_channels, x.shape[1] - self.conv_channels], dim=1)
        if pos_embed is None:
            x_conv = self.peripheral_conv(x_conv)
        else:
            x_conv = self.peripheral_conv(x_conv, pos_embed)
        return torch.cat([x_conv, x_id], dim=1)

    def forward(self, x: Tensor, pos_embed: Optional[Tensor] = None):
        """Forward ``(N, C, H, W) -> (N, C, H, W)``."""

        def _inner_forward(x, pos_embed):
            shortcut = x
            x = self.mix_tokens(x, pos_embed)
            x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
            x = self.norm(x, data_format='channel_last')
            x = self.pointwise_conv2(self.act(self.pointwise_conv1(x)))
            x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
            if self.gamma is not None:
                x = x.mul(self.gamma.view(1, -1, 1, 1))
            return shortcut + self.drop_path(x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(
                _inner_forward, x, pos_embed, use_reentrant=False)
        return _inner_forward(x, pos_embed)

    @torch.no_grad()
    def switch_to_deploy(self, pos_embed: Optional[Tensor] = None) -> None:
        """Replace the peripheral conv by a plain depthwise ``nn.Conv2d``.

        The dense kernel is :meth:`PeripheralConv2d.dense_weight` (masked
        zeros included) and the positional embedding is folded into the bias
        (Eq. 3 with zero padding adds ``sum_ij w(i, j) h(i, j)``).

        Args:
            pos_embed (Tensor, optional): The stage's positional embedding.
        """
        src = self.peripheral_conv
        conv = nn.Conv2d(
            src.channels,
            src.channels,
            src.kernel_size,
            padding=src.kernel_size // 2,
            groups=src.channels,
            bias=True).to(src.weight)
        conv.weight.copy_(src.dense_weight())
        bias = src.bias.clone()
        if pos_embed is not None:
            bias += pos_embed_bias(src.weight, src.grid, pos_embed)
        conv.bias.copy_(bias)
        self.peripheral_conv = conv


@MODELS.register_module()
class PeLK(BaseModule):
    """PeLK backbone.

    A ConvNeXt whose depthwise convolutions are partial peripheral
    convolutions of large kernels (Eq. 1-2) with a kernel-wise positional
    embedding (Eq. 3) shared by all blocks of a stage.

    State-dict layout (stable; configs and converters rely on it):

    - ``downsample_layers.0`` is the stem (4x4/4 conv, LN);
      ``downsample_layers.{1,2,3}`` are LN + 2x2/2 conv;
    - ``stages.{i}.{j}.peripheral_conv.{weight,bias}``: compact weights
      ``(g_i, 1, k'_i, k'_i)`` of block ``j`` of stage ``i``, then
      ``norm``, ``pointwise_conv1``, ``pointwise_conv2`` (``nn.Linear``),
      ``gamma``;
    - ``pos_embeds.{i}``: the positional embedding ``h`` of stage ``i``,
      ``(g_i, K_i, K_i)``, once per stage (absent with ``pos_embed=False``
      and after :meth:`switch_to_deploy`);
    - ``norm{i}`` for each ``i`` in ``out_indices``.

    The norms are LayerNorms (no running statistics), so there is no
    ``norm_eval`` switch.

    Args:
        arch (str | dict): One of ``PeLK.arch_settings`` ('tiny', 'small',
            'base', 'tiny-101', 'small-101', 'base-101') or a dict with keys
            ``depths`` and ``channels`` (one int per stage) and either
            ``kernel_sizes`` (odd ints) with optional ``center_sizes`` (an
            int or one per stage, default 5) and ``base`` (default 2), or
            ``grids`` (one explicit sharing grid per stage). Defaults to
            'tiny'.
        in_channels (int): Number of input image channels. Defaults to 3.
        stem_patch_size (int): Patch size of the stem. Defaults to 4.
        conv_ratio (float): Fraction of each stage's channels that go
            through the peripheral conv, ``g = int(C * conv_ratio)``; in
            ``(0, 1]``. Defaults to 3/8.
        pos_embed (bool): Whether to use the kernel-wise positional
            embedding. Defaults to True.
        norm_cfg (dict): Config of the norm layers.
            Defaults to ``dict(type='LN2d', eps=1e-6)``.
        act_cfg (dict): Config of the MLP activation.
            Defaults to ``dict(type='GELU')``.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Init value of the layer scale.
            Defaults to 1e-6.
        out_indices (Sequence[int] | int): Output from which stages.
            Defaults to -1 (the last stage).
        frozen_stages (int): Number of stages (with their downsampling layer
            and positional embedding) to freeze. Defaults to 0.
        gap_before_final_norm (bool): Globally average the feature maps
            before the output norms (classification). Defaults to True.
        impl (str): Implementation of every peripheral conv (see
            :class:`pelk_mm.PeripheralConv2d`). Defaults to ``'auto'``.
        pos_embed_mode (str): Reading of Eq. 3 at the image border:
            ``'literal'`` adds ``h`` at every tap, zero padding included (a
            per-channel constant that deploy folds into the bias);
            ``'in_image'`` adds it only at taps inside the image (a
            position-dependent map that depends on the map size, so
            :meth:`switch_to_deploy` keeps only ``'literal'``). See
            :func:`pelk_mm.peripheral_conv2d`. Defaults to ``'literal'``.
        with_cp (bool): Use gradient checkpointing. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialization config. The
            positional embeddings are drawn at construction from a truncated
            normal (std 0.02); ``Pretrained`` (with ``prefix`` for a
            classifier checkpoint, e.g. ``prefix='backbone.'``) overwrites
            everything.
    """
    arch_settings = {
        'tiny': {
            'depths': [3, 3, 9, 3],
            'channels': [124, 249, 499, 998],
            'kernel_sizes': [51, 49, 47, 13],
            'center_sizes': 5,
        },
        'small': {
            'depths': [3, 3, 27, 3],
            'channels': [124, 249, 499, 998],
            'kernel_sizes': [51, 49, 47, 13],
            'center_sizes': 5,
        },
        'base': {
            'depths': [3, 3, 27, 3],
            'channels': [166, 332, 665, 1331],
            'kernel_sizes': [51, 49, 47, 13],
            'center_sizes': 5,
        },
        'tiny-101': {
            'depths': [3, 3, 9, 3],
            'channels': [124, 249, 499, 998],
            'kernel_sizes': [101, 69, 67, 13],
            'center_sizes': 7,
        },
        'small-101': {
            'depths': [3, 3, 27, 3],
            'channels': [124, 249, 499, 998],
            'kernel_sizes': [101, 69, 67, 13],
            'center_sizes': 7,
        },
        'base-101': {
            'depths': [3, 3, 27, 3],
            'channels': [166, 332, 665, 1331],
            'kernel_sizes': [101, 69, 67, 13],
            'center_sizes': 7,
        },
    }

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 stem_patch_size: int = 4,
                 conv_ratio: float = 3 / 8,
                 pos_embed: bool = True,
                 norm_cfg: dict = dict(type='LN2d', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = 0,
                 gap_before_final_norm: bool = True,
                 impl: str = 'auto',
                 pos_embed_mode: str = 'literal',
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = [
                     dict(
                         type='TruncNormal',
                         layer=['Conv2d', 'Linear', 'PeripheralConv2d'],
                         std=.02,
                         bias=0.),
                     dict(
                         type='Constant', layer=['LayerNorm'], val=1.,
                         bias=0.),
                 ]):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.depths: List[int] = list(arch['depths'])
        self.channels: List[int] = list(arch['channels'])
        self.grids: List[Tuple[int, ...]] = arch['grids']
        self.kernel_sizes: List[int] = [sum(g) for g in self.grids]
        self.num_stages = len(self.depths)

        if not 0 < conv_ratio <= 1:
            raise ValueError(
                f'`conv_ratio` must be in (0, 1], got {conv_ratio!r}')
        self.conv_channels = [int(c * conv_ratio) for c in self.channels]
        if min(self.conv_channels) < 1:
            raise ValueError(
                f'`conv_ratio`={conv_ratio} leaves no channel to convolve '
                f'for channels {self.channels}; use a larger ratio')

        self.out_indices = self._parse_out_indices(out_indices)
        if not 0 <= frozen_stages <= self.num_stages:
            raise ValueError(f'`frozen_stages` must be in [0, '
                             f'{self.num_stages}], got {frozen_stages!r}')
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        self.pos_embed_mode = check_pos_embed_mode(pos_embed_mode)

        # stochastic depth decay rule
        dpr = torch.linspace(
            0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        block_idx = 0

        # 4 downsample layers between stages, including the stem layer.
        self.downsample_layers = ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    self.channels[0],
                    kernel_size=stem_patch_size,
                    stride=stem_patch_size),
                build_norm_layer(norm_cfg, self.channels[0]),
            ))

        self.stages = ModuleList()
        for i in range(self.num_stages):
            channels = self.channels[i]
            if i >= 1:
                self.downsample_layers.append(
                    nn.Sequential(
                        build_norm_layer(norm_cfg, self.channels[i - 1]),
                        nn.Conv2d(
                            self.channels[i - 1],
                            channels,
                            kernel_size=2,
                            stride=2),
                    ))
            self.stages.append(
                ModuleList([
                    PeLKBlock(
                        in_channels=channels,
                        grid=self.grids[i],
                        conv_ratio=conv_ratio,
                        norm_cfg=norm_cfg,
                        act_cfg=act_cfg,
                        drop_path_rate=dpr[block_idx + j],
                        layer_scale_init_value=layer_scale_init_value,
                        impl=impl,
                        pos_embed_mode=pos_embed_mode,
                        with_cp=with_cp) for j in range(self.depths[i])
                ]))
            block_idx += self.depths[i]
            if i in self.out_indices:
                self.add_module(f'norm{i}',
                                build_norm_layer(norm_cfg, channels))

        if pos_embed:
            self.pos_embeds = nn.ParameterList([
                nn.Parameter(torch.empty(g, k, k))
                for g, k in zip(self.conv_channels, self.kernel_sizes)
            ])
            for h in self.pos_embeds:
                trunc_normal_(h, std=.02)
        else:
            self.pos_embeds = None
        self.deploy = False

        self._freeze_stages()

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> Dict[str, list]:
        """Resolve ``arch`` to depths, channels and one grid per stage."""
        if isinstance(arch, str):
            if arch not in cls.arch_settings:
                raise ValueError(f'`arch` must be one of '
                                 f'{list(cls.arch_settings)} or a dict, '
                                 f'got {arch!r}')
            arch = cls.arch_settings[arch]
        if not isinstance(arch, dict):
            raise ValueError('`arch` must be a str or a dict with keys '
                             f'depths, channels, kernel_sizes or grids, '
                             f'got {type(arch).__name__}')
        missing = {'depths', 'channels'} - set(arch)
        if missing or not {'kernel_sizes', 'grids'} & set(arch):
            raise ValueError(
                '`arch` dict needs keys depths, channels and kernel_sizes '
                f'(with optional center_sizes, base) or grids, got '
                f'{sorted(arch)}')
        num_stages = len(arch['depths'])
        if len(arch['channels']) != num_stages:
            raise ValueError('`arch` depths and channels must have the same '
                             f'length, got {arch["depths"]} and '
                             f'{arch["channels"]}')
        if 'grids' in arch:
            grids = [check_grid(g) for g in arch['grids']]
            if 'kernel_sizes' in arch and list(
                    arch['kernel_sizes']) != [sum(g) for g in grids]:
                raise ValueError('`arch` grids must sum to its kernel_sizes, '
                                 f'got {grids} and {arch["kernel_sizes"]}')
        else:
            centers = arch.get('center_sizes', 5)
            if isinstance(centers, int):
                centers = [centers] * num_stages
            grids = [
                sharing_grid(k, c, arch.get('base', 2))
                for k, c in zip(arch['kernel_sizes'], centers)
            ]
        if len(grids) != num_stages:
            raise ValueError(f'`arch` needs one kernel size / grid per stage '
                             f'({num_stages}), got {len(grids)}')
        return dict(
            depths=arch['depths'], channels=arch['channels'], grids=grids)

    def _parse_out_indices(self, out_indices) -> List[int]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(
                    f'`out_indices` must be in [-{self.num_stages}, '
                    f'{self.num_stages - 1}], got {list(out_indices)}')
            parsed.append(index % self.num_stages)
        return parsed

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Forward images ``(N, 3, H, W)``.

        Returns:
            tuple[Tensor]: For each ``i`` in ``out_indices``, stage ``i``'s
            normed features ``(N, C_i, H / 2^(i+2), W / 2^(i+2))``, or
            ``(N, C_i)`` with ``gap_before_final_norm``.
        """
        outs = []
        for i, stage in enumerate(self.stages):
            x = self.downsample_layers[i](x)
            pos_embed = None if self.pos_embeds is None else self.pos_embeds[i]
            for block in stage:
                x = block(x, pos_embed)
            if i in self.out_indices:
                norm_layer = getattr(self, f'norm{i}')
                if self.gap_before_final_norm:
                    gap = x.mean([-2, -1], keepdim=True)
                    outs.append(norm_layer(gap).flatten(1))
                else:
                    outs.append(norm_layer(x))
        return tuple(outs)

    def _freeze_stages(self):
        for i in range(self.frozen_stages):
            modules = [self.downsample_layers[i], self.stages[i]]
            params = [m.parameters() for m in modules]
            if self.pos_embeds is not None:
                params.append([self.pos_embeds[i]])
            for module in modules:
                module.eval()
            for param in chain(*params):
                param.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    @torch.no_grad()
    def switch_to_deploy(self) -> None:
        """Fold every peripheral conv into a plain depthwise ``nn.Conv2d``.

        Each block's compact weights are expanded to the dense ``K x K``
        kernel (whatever they hold, masked zeros included) and the stage's
        positional embedding is folded into the conv bias, so outputs are
        unchanged. Afterwards ``pos_embeds`` is None and
        ``stages.{i}.{j}.peripheral_conv`` holds ``(g, 1, K, K)`` weights.
        Irreversible.
        """
        if self.deploy:
            return
        for i, stage in enumerate(self.stages):
            pos_embed = None if self.pos_embeds is None else self.pos_embeds[i]
            for block in stage:
                block.switch_to_deploy(pos_embed)
        self.pos_embeds = None
        self.deploy = True

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """Get the layer-wise depth of a parameter (as mmpretrain ConvNeXt).

        A stage's positional embedding ``pos_embeds.{i}`` gets the depth of
        the stage's first block, as the stage's downsampling layer does.

        Args:
            param_name (str): The name of the parameter.
            prefix (str): The prefix for the parameter.
                Defaults to an empty string.

        Returns:
            Tuple[int, int]: The layer-wise depth and the num of layers.
        """
        max_layer_id = 12 if self.depths[-2] > 9 else 6

        if not param_name.startswith(prefix):
            # For subsequent module like head
            return max_layer_id + 1, max_layer_id + 2

        param_name = param_name[len(prefix):]
        if param_name.startswith('downsample_layers'):
            stage_id = int(param_name.split('.')[1])
            if stage_id == 0:
                layer_id = 0
            elif stage_id == 1 or stage_id == 2:
                layer_id = stage_id + 1
            else:  # stage_id == 3:
                layer_id = max_layer_id
        elif param_name.startswith('pos_embeds'):
            stage_id = int(param_name.split('.')[1])
            if stage_id == 0 or stage_id == 1 or stage_id == 2:
                layer_id = stage_id + 1
            else:  # stage_id == 3:
                layer_id = max_layer_id
        elif param_name.startswith('stages'):
            stage_id = int(param_name.split('.')[1])
            block_id = int(param_name.split('.')[2])
            if stage_id == 0 or stage_id == 1:
                layer_id = stage_id + 1
            elif stage_id == 2:
                layer_id = 3 + block_id // 3
            else:  # stage_id == 3:
                layer_id = max_layer_id
        # final norm layer
        else:
            layer_id = max_layer_id + 1

        return layer_id, max_layer_id + 2
