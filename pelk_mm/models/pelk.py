"""The PeLK network in plain PyTorch: ConvNeXt with partial peripheral
convolutions.

`PeLK: Parameter-efficient Large Kernel ConvNets with Peripheral Convolution
<https://arxiv.org/abs/2403.07589>`_ (CVPR 2024). Modelled on mmpretrain's
``ConvNeXt`` (same stem, downsampling, block, ``out_indices``,
``gap_before_final_norm``, ``frozen_stages``, ``with_cp``), with the
depthwise 7x7 conv replaced by a partial peripheral conv of a large kernel
and one kernel-wise positional embedding per stage. Needs torch alone; the
OpenMMLab backbone (registry, ``init_cfg``, checkpoint checks) is
:class:`pelk_mm.mm.PeLK`, a subclass.
"""
from functools import lru_cache, partial
from itertools import chain
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor

from ..ops import PeripheralConv2d
from ..ops.peripheral_conv import check_pos_embed_mode
from .arch import ARCH_SETTINGS, parse_arch
from .folding import check_deploy_mode, deployed_conv, fold_peripheral_conv
from .layers import DropPath, LayerNorm2d, trunc_normal_
from .param_groups import ParamGroupsMixin

#: Builds a norm layer for ``C`` channels: ``norm_layer(C)``.
NormLayer = Callable[[int], nn.Module]
#: Builds the MLP activation: ``act_layer()``.
ActLayer = Callable[[], nn.Module]


class PeLKBlock(nn.Module):
    """ConvNeXt block whose token mixer is a partial peripheral conv.

    ``x -> [PeripheralConv2d on the first g channels | identity on the rest]
    -> LayerNorm -> Linear(C, 4C) -> GELU -> Linear(4C, C) -> layer scale
    -> DropPath -> + x``, with ``g = int(C * conv_ratio)``.

    Built by :class:`PeLK`, which checks the settings; the block passes them
    on as given.

    Args:
        in_channels (int): Number of channels ``C``.
        grid (Sequence[int]): Sharing grid of the peripheral conv; its sum is
            the kernel size ``K``.
        conv_ratio (float): Fraction of the channels that go through the
            peripheral conv (Inception-style partial conv). Defaults to 3/8.
        norm_layer (callable): ``norm_layer(C)`` builds the norm, a
            :class:`~pelk_mm.models.layers.LayerNorm2d`-like module taking
            ``data_format='channel_last'``. Defaults to
            ``LayerNorm2d(C, eps=1e-6)``.
        act_layer (callable): ``act_layer()`` builds the MLP activation.
            Defaults to ``nn.GELU``.
        mlp_ratio (float): Expansion ratio of the MLP. Defaults to 4.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Initial value of the layer scale
            ``gamma``; 0 disables it. Defaults to 1e-6.
        impl (str): Implementation of the peripheral conv (see
            :class:`pelk_mm.PeripheralConv2d`). Defaults to ``'auto'``.
        pos_embed_mode (str): Where the positional embedding is added, one of
            :data:`pelk_mm.POS_EMBED_MODES` (see
            :func:`pelk_mm.peripheral_conv2d`). Defaults to ``'literal'``.
        with_cp (bool): Use gradient checkpointing. Defaults to False.
        deploy (bool): Build the token mixer in its deployed form, the
            module that :meth:`switch_to_deploy` gives. Defaults to False.
        deploy_mode (str): Which deployed form, one of
            :data:`~.folding.DEPLOY_MODES` (see :func:`deployed_conv`).
            Defaults to ``'structured'``.
    """

    def __init__(self,
                 in_channels: int,
                 grid: Sequence[int],
                 conv_ratio: float = 3 / 8,
                 norm_layer: NormLayer = partial(LayerNorm2d, eps=1e-6),
                 act_layer: ActLayer = nn.GELU,
                 mlp_ratio: float = 4.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 impl: str = 'auto',
                 pos_embed_mode: str = 'literal',
                 with_cp: bool = False,
                 deploy: bool = False,
                 deploy_mode: str = 'structured'):
        super().__init__()
        self.with_cp = with_cp
        self.conv_channels = int(in_channels * conv_ratio)
        self.identity_channels = in_channels - self.conv_channels
        if deploy:
            self.peripheral_conv = deployed_conv(self.conv_channels, grid,
                                                 deploy_mode)
        else:
            self.peripheral_conv = PeripheralConv2d(
                self.conv_channels,
                sum(grid),
                grid=grid,
                bias=True,
                impl=impl,
                pos_embed_mode=pos_embed_mode)
        self.norm = norm_layer(in_channels)
        mid_channels = int(mlp_ratio * in_channels)
        self.pointwise_conv1 = nn.Linear(in_channels, mid_channels)
        self.act = act_layer()
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
        # the block's own sizes, not x.shape's: constants in an export
        x_conv, x_id = x.split([self.conv_channels, self.identity_channels],
                               dim=1)
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

    def switch_to_deploy(self,
                         pos_embed: Optional[Tensor] = None,
                         deploy_mode: str = 'structured') -> None:
        """Replace the peripheral conv by its deployed form, the module of
        :func:`~pelk_mm.models.folding.fold_peripheral_conv`.

        Args:
            pos_embed (Tensor, optional): The stage's positional embedding.
            deploy_mode (str): One of :data:`~.folding.DEPLOY_MODES`.
                Defaults to ``'structured'``.
        """
        self.peripheral_conv = fold_peripheral_conv(self.peripheral_conv,
                                                    pos_embed, deploy_mode)


class PeLK(ParamGroupsMixin, nn.Module):
    """The PeLK network (backbone), in plain PyTorch.

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
      ``(g_i, K_i, K_i)``, once per stage (absent with ``pos_embed=False``,
      after :meth:`switch_to_deploy` and with ``deploy=True``);
    - once deployed, ``stages.{i}.{j}.peripheral_conv.{weight,bias}`` hold
      the compact weights with ``deploy_mode='structured'`` and the dense
      ``(g_i, 1, K_i, K_i)`` kernels with ``'dense'``, the bias with the
      positional embedding's term in both;
    - ``norm{i}`` for each ``i`` in ``out_indices``.

    The norms are LayerNorms (no running statistics), so there is no
    ``norm_eval`` switch. Parameter names map to stages and blocks through
    :meth:`locate` (see :mod:`pelk_mm.models.param_groups`). The weights are
    those of the layers' constructors (positional embeddings zero) until
    :meth:`init_weights`.

    Args:
        arch (str | dict): A key of ``PeLK.arch_settings`` ('tiny',
            'small', 'base', 'tiny-101', 'small-101', 'base-101') or a dict
            of depths, channels and kernel sizes or grids, see
            :func:`pelk_mm.models.arch.parse_arch`. Defaults to 'tiny'.
        in_channels (int): Number of input image channels. Defaults to 3.
        stem_patch_size (int): Patch size of the stem. Defaults to 4.
        conv_ratio (float): Fraction of each stage's channels that go
            through the peripheral conv, ``g = int(C * conv_ratio)``; in
            ``(0, 1]``. Defaults to 3/8.
        pos_embed (bool): Whether to use the kernel-wise positional
            embedding. Defaults to True.
        norm_layer (callable): ``norm_layer(C)`` builds every norm layer.
            Defaults to ``LayerNorm2d(C, eps=1e-6)``
            (:class:`~pelk_mm.models.layers.LayerNorm2d`).
        act_layer (callable): ``act_layer()`` builds the MLP activation.
            Defaults to ``nn.GELU``.
        drop_path_rate (float): Stochastic depth rate of the last block, in
            ``[0, 1)``; it rises linearly from 0 at the first block.
            Defaults to 0.
        layer_scale_init_value (float): Init value of the layer scale.
            Defaults to 1e-6.
        out_indices (Sequence[int] | int): Output from which stages, each
            in ``[-num_stages, num_stages)``, no stage twice.
            Defaults to -1 (the last stage).
        frozen_stages (int): Number of stages (with their downsampling layer
            and positional embedding) to freeze. Defaults to 0.
        gap_before_final_norm (bool, optional): Globally average the feature
            maps before the output norms (classification). None pools only
            when ``out_indices`` is the last stage alone (classification),
            so multi-scale outputs are feature maps; True / False force it.
            Defaults to None.
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
        deploy (bool): Build the deployed form directly, with exactly the
            modules and state-dict keys that :meth:`switch_to_deploy` leaves
            (the token mixers of ``deploy_mode``, the positional-embedding
            term in their bias, no ``pos_embeds``), so that a deployed
            checkpoint loads. Only for the literal positional-embedding
            reading. Defaults to False.
        deploy_mode (str): The deployed form that ``deploy=True`` builds and
            :meth:`switch_to_deploy` folds into, one of
            :data:`~.folding.DEPLOY_MODES`: ``'structured'`` keeps the compact
            weights and runs them by band sums in standard ONNX operators
            (:class:`~pelk_mm.ops.boxsum_conv.BoxSumPeripheralConv2d`: what
            onnxruntime and TensorRT run fast); ``'dense'`` expands them to
            depthwise ``K x K`` ``nn.Conv2d`` kernels (for runtimes that
            need a single conv). Recorded in the checkpoint's arch record: a
            checkpoint of one form does not load into the other.
            Defaults to ``'structured'``.

    Raises:
        ValueError: a setting outside its allowed values (the message names
            it and them).
        TypeError: a setting of the wrong type.

    Inputs must be at least :attr:`min_input_size` pixels high and wide
    (``stem_patch_size * 2 ** (num_stages - 1)``, 32 for the 4-stage archs),
    so that every downsampling layer has a 2x2 map to reduce.
    """
    arch_settings = ARCH_SETTINGS

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 stem_patch_size: int = 4,
                 conv_ratio: float = 3 / 8,
                 pos_embed: bool = True,
                 norm_layer: NormLayer = partial(LayerNorm2d, eps=1e-6),
                 act_layer: ActLayer = nn.GELU,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = 0,
                 gap_before_final_norm: Optional[bool] = None,
                 impl: str = 'auto',
                 pos_embed_mode: str = 'literal',
                 with_cp: bool = False,
                 deploy: bool = False,
                 deploy_mode: str = 'structured'):
        super().__init__()
        _check_types(
            in_channels=in_channels,
            stem_patch_size=stem_patch_size,
            frozen_stages=frozen_stages,
            conv_ratio=conv_ratio,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
            pos_embed=pos_embed,
            with_cp=with_cp,
            deploy=deploy)
        arch = parse_arch(arch)
        self.depths: List[int] = list(arch['depths'])
        self.channels: List[int] = list(arch['channels'])
        self.grids: List[Tuple[int, ...]] = arch['grids']
        self.kernel_sizes: List[int] = [sum(g) for g in self.grids]
        self.num_stages = len(self.depths)

        if not 0 < conv_ratio <= 1:
            raise ValueError(
                f'`conv_ratio` must be in (0, 1], got {conv_ratio!r}')
        self.conv_ratio = conv_ratio
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
        if gap_before_final_norm is None:
            gap_before_final_norm = self.out_indices == [self.num_stages - 1]
        self.gap_before_final_norm = gap_before_final_norm
        self.pos_embed_mode = check_pos_embed_mode(pos_embed_mode)
        self.deploy_mode = check_deploy_mode(deploy_mode)
        if not 0 <= drop_path_rate < 1:
            raise ValueError('`drop_path_rate` must be in [0, 1), got '
                             f'{drop_path_rate!r}')
        #: The smallest input side: the stem's patch, then one halving per
        #: later stage down to a 1x1 map.
        self.min_input_size = stem_patch_size * 2**(self.num_stages - 1)

        # stochastic depth decay rule
        dpr = torch.linspace(
            0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        block_idx = 0

        # 4 downsample layers between stages, including the stem layer.
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    self.channels[0],
                    kernel_size=stem_patch_size,
                    stride=stem_patch_size),
                norm_layer(self.channels[0]),
            ))

        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            channels = self.channels[i]
            if i >= 1:
                self.downsample_layers.append(
                    nn.Sequential(
                        norm_layer(self.channels[i - 1]),
                        nn.Conv2d(
                            self.channels[i - 1],
                            channels,
                            kernel_size=2,
                            stride=2),
                    ))
            self.stages.append(
                nn.ModuleList([
                    PeLKBlock(
                        in_channels=channels,
                        grid=self.grids[i],
                        conv_ratio=conv_ratio,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                        drop_path_rate=dpr[block_idx + j],
                        layer_scale_init_value=layer_scale_init_value,
                        impl=impl,
                        pos_embed_mode=self.pos_embed_mode,
                        with_cp=with_cp,
                        deploy=deploy,
                        deploy_mode=self.deploy_mode)
                    for j in range(self.depths[i])
                ]))
            block_idx += self.depths[i]
            if i in self.out_indices:
                self.add_module(f'norm{i}', norm_layer(channels))

        self.with_pos_embed = pos_embed
        if pos_embed and not deploy:  # drawn in init_weights
            self.pos_embeds = nn.ParameterList([
                nn.Parameter(torch.zeros(g, k, k))
                for g, k in zip(self.conv_channels, self.kernel_sizes)
            ])
        else:
            self.pos_embeds = None
        self.deploy = deploy
        if deploy:
            self._check_deployable(pos_embed)

        self._freeze_stages()

    def _parse_out_indices(self, out_indices) -> List[int]:
        """``out_indices`` as a list of stage indices in ``[0, num_stages)``.

        Raises:
            TypeError: not an int or a sequence of ints.
            ValueError: an index out of range, or a stage named twice.
        """
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool)
                for i in out_indices):
            raise TypeError('`out_indices` must be an int or a list / tuple '
                            f'of ints, got {out_indices!r}')
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(
                    f'`out_indices` must be in [-{self.num_stages}, '
                    f'{self.num_stages - 1}], got {list(out_indices)}')
            parsed.append(index % self.num_stages)
        if len(set(parsed)) != len(parsed):
            raise ValueError(
                f'`out_indices` names a stage twice: {list(out_indices)} is '
                f'stages {parsed}; give each stage in [0, '
                f'{self.num_stages - 1}] at most once')
        return parsed

    def init_weights(self) -> None:
        """Draw the initial weights of the paper (ConvNeXt's and SLaK's).

        Trunc-normal std 0.02 for the weights of ``nn.Conv2d``,
        ``nn.Linear`` and the compact ``PeripheralConv2d`` weights (SLaK's
        dense kernels get std 0.02 per tap, which the compact weights
        reproduce tap for tap), their biases 0, LayerNorms 1 / 0, in
        :meth:`nn.Module.apply` order; then the positional embeddings
        (:meth:`init_pos_embeds`). With the same seed this gives the weights
        of :class:`pelk_mm.mm.PeLK`'s default ``init_cfg``.
        """
        self.apply(_init_layer)
        self.init_pos_embeds()

    def init_pos_embeds(self) -> None:
        """Draw the positional embeddings: trunc-normal std 0.02."""
        if self.pos_embeds is not None:
            for h in self.pos_embeds:
                trunc_normal_(h, std=.02)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Forward images ``(N, in_channels, H, W)``.

        Returns:
            tuple[Tensor]: For each ``i`` in ``out_indices``, stage ``i``'s
            normed features ``(N, C_i, H / 2^(i+2), W / 2^(i+2))``, or
            ``(N, C_i)`` with ``gap_before_final_norm``.

        Raises:
            TypeError: ``x`` is not floating-point, or of a dtype this
                torch cannot convolve on CPU (float16 before torch 2.2).
            ValueError: ``x`` is not 4-d with ``in_channels`` channels, or
                ``H`` or ``W`` is below :attr:`min_input_size`.
        """
        # (a traced export, e.g. ONNX, fixes the input shape itself)
        if not torch.jit.is_tracing():
            self._check_input(x)
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

    def _check_input(self, x: Tensor) -> None:
        stem = self.downsample_layers[0][0]
        if not x.is_floating_point():
            raise TypeError(
                f'PeLK takes floating-point images, got {x.dtype}: convert '
                'and normalise them first (an mm data_preprocessor does)')
        if (x.device.type == 'cpu'
                and x.dtype in (torch.float16, torch.bfloat16)
                and not cpu_computes(x.dtype)):
            raise TypeError(
                f'this torch ({torch.__version__}) has no {x.dtype} '
                'convolution on CPU: run the model in float32 on CPU '
                '(model.float(), x.float()), or in half precision on a GPU')
        if x.dim() != 4 or x.shape[1] != stem.in_channels:
            raise ValueError(
                f'PeLK takes images (N, in_channels={stem.in_channels}, H, W)'
                f', got a tensor of shape {tuple(x.shape)}')
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f'PeLK needs inputs of at least {self.min_input_size}x'
                f'{self.min_input_size} pixels (stem patch '
                f'{stem.kernel_size[0]}, then {self.num_stages - 1} '
                f'halvings), got {tuple(x.shape[-2:])}')

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
        """Fold every peripheral conv into the deployed form of
        ``deploy_mode``.

        The stage's positional embedding is folded into each conv bias, so
        outputs are unchanged; ``'structured'`` keeps each block's compact
        weights (computed by band sums), ``'dense'`` expands them to the
        dense ``K x K`` kernel of a depthwise ``nn.Conv2d`` (whatever they
        hold, masked zeros included). Afterwards ``pos_embeds`` is None and
        the modules and state dict are those that ``PeLK(...,
        deploy=True)`` builds. Irreversible.

        Raises:
            ValueError: with ``pos_embed_mode='in_image'``, whose term
                cannot be folded into a bias.
        """
        if self.deploy:
            return
        self._check_deployable(self.pos_embeds is not None)
        for i, stage in enumerate(self.stages):
            pos_embed = None if self.pos_embeds is None else self.pos_embeds[i]
            for block in stage:
                block.switch_to_deploy(pos_embed, self.deploy_mode)
        self.pos_embeds = None
        self.deploy = True

    def _check_deployable(self, pos_embed: bool) -> None:
        """Refuse to deploy a positional embedding that a bias cannot hold.

        The literal reading of Eq. 3 adds the per-channel constant
        ``sum_ij w(i, j) h(i, j)``, which folds into the conv bias; with
        ``pos_embed_mode='in_image'`` the term depends on the position and the
        map size, so no fixed depthwise conv reproduces it.
        """
        mode = self.pos_embed_mode
        if pos_embed and mode != 'literal':
            raise ValueError(
                f"deploy supports only pos_embed_mode='literal', got "
                f'pos_embed_mode={mode!r}: its positional-embedding term '
                'depends on the position in the map and on the map size, so '
                'it cannot be folded into a conv bias')


@lru_cache(maxsize=None)
def cpu_computes(dtype: torch.dtype) -> bool:
    """Whether this torch has CPU kernels for a conv and a LayerNorm in
    ``dtype`` (float16 has them from torch 2.2 on)."""
    try:
        F.conv2d(
            torch.zeros(1, 1, 2, 2, dtype=dtype),
            torch.zeros(1, 1, 1, 1, dtype=dtype))
        F.layer_norm(torch.zeros(1, 2, dtype=dtype), (2, ))
    except RuntimeError:
        return False
    return True


def _init_layer(module: nn.Module) -> None:
    """One layer's part of :meth:`PeLK.init_weights`."""
    if isinstance(module, (nn.Conv2d, nn.Linear, PeripheralConv2d)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_TYPES = dict(
    in_channels=(int, ),
    stem_patch_size=(int, ),
    frozen_stages=(int, ),
    conv_ratio=(int, float),
    drop_path_rate=(int, float),
    layer_scale_init_value=(int, float),
    pos_embed=(bool, ),
    with_cp=(bool, ),
    deploy=(bool, ))


def _check_types(**settings) -> None:
    """Refuse a setting of another type than :data:`_TYPES` allows (a bool
    is not a number here, a float not an int).

    Raises:
        TypeError: naming the setting, its allowed and its given type.
    """
    for name, value in settings.items():
        allowed = _TYPES[name]
        is_bool = isinstance(value, bool)
        if not isinstance(value, allowed) or (is_bool and bool not in allowed):
            raise TypeError(
                f'`{name}` must be {" or ".join(t.__name__ for t in allowed)}'
                f', got {type(value).__name__} {value!r}')
