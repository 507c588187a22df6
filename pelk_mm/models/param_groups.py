"""Where a PeLK parameter sits, and the parameter groups built on it.

:class:`ParamGroupsMixin` is part of :class:`~pelk_mm.PeLK`. Its
:meth:`~ParamGroupsMixin.locate` is the one place that reads the backbone's
parameter / state-dict names (stage and block indices); the checkpoint
checks (:mod:`pelk_mm.checkpoint.arch_record`), the sparsity masks' layer
groups (:func:`pelk_mm.sparsity.masks.layer_group`) and the optimizer
constructor's lr decay (:meth:`~ParamGroupsMixin.get_layer_depth`,
:meth:`~ParamGroupsMixin.get_stage_depth`,
:meth:`~ParamGroupsMixin.no_weight_decay`) all ask it.
"""
from typing import NamedTuple, Optional, Tuple

import torch.nn as nn


class ParamLocation(NamedTuple):
    """What a backbone key names (see :meth:`ParamGroupsMixin.locate`).

    Attributes:
        part (str): ``'stem'``, ``'downsample'``, ``'block'``,
            ``'pos_embed'``, ``'norm'`` (an output norm) or ``''`` (not a
            key of the layout).
        stage (int, optional): The stage it belongs to (the stage a
            downsampling layer leads into).
        block (int, optional): The block within the stage.
        unit (str): The module or parameter whose presence depends on the
            arch, e.g. ``'stages.2.0'``, ``'downsample_layers.1'``,
            ``'pos_embeds.0'``, ``'norm3'``; ``''`` if none.
        rest (str): The name within the unit, e.g.
            ``'peripheral_conv.weight'``.
    """
    part: str
    stage: Optional[int]
    block: Optional[int]
    unit: str
    rest: str


def _index(text: str) -> Optional[int]:
    return int(text) if text.isdigit() else None


class ParamGroupsMixin:
    """The backbone's parameter names, layer depths and weight-decay set.

    Needs ``depths`` (blocks per stage) and ``num_stages`` on the host.
    """

    @staticmethod
    def locate(name: str, prefix: str = '') -> ParamLocation:
        """Where the parameter / state-dict key ``name`` sits in a PeLK.

        The layout (see :class:`~pelk_mm.PeLK`): ``downsample_layers.0.*``
        (the stem), ``downsample_layers.{i}.*``, ``stages.{i}.{j}.*``,
        ``pos_embeds.{i}``, ``norm{i}.*``. Any name is accepted, also one of
        a block or stage this backbone does not have (a checkpoint's).

        Args:
            name (str): The key.
            prefix (str): Where the backbone sits in the model, e.g.
                ``'backbone.'``; names without it are not the backbone's.

        Returns:
            ParamLocation: ``part=''`` for any other name.
        """
        other = ParamLocation('', None, None, '', name)
        if not name.startswith(prefix):
            return other
        parts = name[len(prefix):].split('.')
        stage = _index(parts[1]) if len(parts) > 1 else None
        if parts[0] == 'downsample_layers' and stage is not None:
            return ParamLocation('stem' if stage == 0 else 'downsample', stage,
                                 None, '.'.join(parts[:2]),
                                 '.'.join(parts[2:]))
        if parts[0] == 'pos_embeds' and stage is not None:
            return ParamLocation('pos_embed', stage, None, '.'.join(parts[:2]),
                                 '.'.join(parts[2:]))
        if parts[0] == 'stages' and stage is not None and len(parts) > 2:
            block = _index(parts[2])
            if block is not None:
                return ParamLocation('block', stage, block,
                                     '.'.join(parts[:3]), '.'.join(parts[3:]))
        if parts[0].startswith('norm') and _index(parts[0][4:]) is not None:
            return ParamLocation('norm', _index(parts[0][4:]), None, parts[0],
                                 '.'.join(parts[1:]))
        return other

    def get_layer_depth(self,
                        param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Get the layer-wise depth of a parameter, for layer-wise lr decay.

        Every 3 consecutive blocks of a stage make one layer (BEiT / ConvNeXt
        count 12 layers in a ViT-B-deep network), so stage ``i`` spans
        ``ceil(depths[i] / 3)`` layers and ``num_layers = sum_i
        ceil(depths[i] / 3)``. Depths are numbered in forward order:

        - ``downsample_layers.0`` (the stem): 0;
        - ``stages.{i}.{j}``: ``1 + sum_{k<i} ceil(depths[k] / 3) + j // 3``;
        - ``downsample_layers.{i}`` (``i >= 1``) and ``pos_embeds.{i}``: the
          depth of stage ``i``'s first block (they act right before it);
        - anything else, the output norms ``norm{i}`` and every name without
          ``prefix`` (neck, heads): ``num_layers + 1``.

        The depths never decrease along the forward pass and hold for any
        number of stages. For the 4-stage archs this is mmpretrain ConvNeXt's
        table exactly: ``depths=[3, 3, 9, 3]`` (tiny) gives 6 layers, stage 2
        spanning depths 3-5 and stage 3 depth 6; ``[3, 3, 27, 3]`` (small,
        base) gives 12.

        Args:
            param_name (str): The name of the parameter.
            prefix (str): The prefix for the parameter.
                Defaults to an empty string.

        Returns:
            Tuple[int, int]: The layer-wise depth and ``num_layers + 2`` (the
            number of depths).
        """
        # first_layer[i]: the depth of stage i's first block
        first_layer = [1]
        for depth in self.depths:
            first_layer.append(first_layer[-1] + (depth + 2) // 3)
        num_layers = first_layer[-1] - 1

        where = self.locate(param_name, prefix)
        if where.part == 'stem':
            layer_id = 0
        elif where.part in ('downsample', 'pos_embed'):
            layer_id = first_layer[where.stage]
        elif where.part == 'block':
            layer_id = first_layer[where.stage] + where.block // 3
        else:  # output norms, neck, heads
            layer_id = num_layers + 1
        return layer_id, num_layers + 2

    def get_stage_depth(self,
                        param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Get the stage-wise depth of a parameter, for stage-wise lr decay.

        As ConvNeXt's released segmentation code (which SLaK and PeLK follow)
        and mmseg's ``get_stage_id_for_convnext``: every downsampling layer
        (the stem included) 0, stage ``i`` (its blocks and its positional
        embedding ``pos_embeds.{i}``) ``i + 1``, anything else (the output
        norms, every name without ``prefix``) ``num_stages + 1``.

        Args:
            param_name (str): The name of the parameter.
            prefix (str): The prefix for the parameter.
                Defaults to an empty string.

        Returns:
            Tuple[int, int]: The stage-wise depth and ``num_stages + 2`` (the
            number of depths).
        """
        where = self.locate(param_name, prefix)
        if where.part in ('stem', 'downsample'):
            stage_id = 0
        elif where.part in ('pos_embed', 'block'):
            stage_id = where.stage + 1
        else:
            stage_id = self.num_stages + 1
        return stage_id, self.num_stages + 2

    def no_weight_decay(self) -> set:
        """Names of the parameters that take no weight decay.

        timm's convention: a set of parameter names relative to the backbone,
        read by :class:`PeLKLearningRateDecayOptimizerConstructor`. They are
        the kernel-wise positional embeddings ``pos_embeds.{i}`` (Eq. 3),
        every weight and bias of the norm layers, every bias (peripheral conv,
        pointwise convs, downsampling convs) and the layer scales ``gamma``;
        every other parameter (the compact peripheral weights, the pointwise
        and downsampling weights) decays.

        Returns:
            set[str]: e.g. ``{'pos_embeds.0', 'stages.0.0.gamma',
            'stages.0.0.peripheral_conv.bias', 'norm3.weight', ...}``.
        """
        norm_types = (nn.LayerNorm, nn.GroupNorm,
                      nn.modules.batchnorm._BatchNorm)
        names = set()
        for module_name, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                full = f'{module_name}.{name}' if module_name else name
                where = self.locate(full)
                if (where.part == 'pos_embed' or name == 'bias'
                        or (where.part == 'block' and where.rest == 'gamma')
                        or isinstance(module, norm_types)):
                    names.add(full)
        return names
