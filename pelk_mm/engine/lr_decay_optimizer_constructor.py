"""Layer-wise / stage-wise learning-rate decay for PeLK backbones.

mmseg's and mmdet's ``LearningRateDecayOptimizerConstructor`` only accept
backbones whose class name contains "ConvNeXt". PeLK keeps ConvNeXt's frame
(stem, 4 stages with the same depths, downsampling layers), so this constructor
applies the same two rules, taking the layer of each parameter from the
backbone's own ``get_layer_depth`` instead of a name table:

- ``layer_wise`` (detection, decay 0.7 in the paper): ``(layer_id, num_ids) =
  backbone.get_layer_depth(name, prefix='backbone.')`` as mmpretrain's ConvNeXt
  defines it (stem 0, stage 0 -> 1, stage 1 -> 2, every 3 blocks of stage 2 one
  layer, stage 3 and the last downsampling ``num_layers``, anything after the
  backbone ``num_layers + 1``), and ``lr_scale = decay_rate ** (num_ids - 1 -
  layer_id)``.
- ``stage_wise`` (segmentation, decay 0.9 in the paper), exactly as ConvNeXt's
  released segmentation code (which SLaK and PeLK follow): every downsampling
  layer (stem included) gets id 0, stage ``i`` (its blocks and its positional
  embedding) id ``i + 1``, everything else (the backbone's output norms, neck,
  heads) id ``num_layers + 1``, and ``lr_scale = decay_rate ** (num_layers + 1 -
  id)``. So with ``num_layers=6`` the heads get the base lr and stage 3 gets
  ``0.9 ** 3`` of it.

Weight decay is not applied (as in mmseg's ConvNeXt constructor) to 1-D
parameters (norms, biases, layer scales), to any ``.bias`` and to the
kernel-wise positional embeddings (``pos_embed`` in the name, Eq. 3); every
other parameter gets the optimizer's ``weight_decay``. Parameters with
``requires_grad=False`` (frozen stages) are left out.

Example::

    optim_wrapper = dict(
        type='OptimWrapper',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        constructor='PeLKLearningRateDecayOptimizerConstructor',
        paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise',
                           num_layers=6))
"""
from typing import List, Optional

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

DECAY_TYPES = ('layer_wise', 'stage_wise')


def _stage_id(name: str, num_layers: int) -> int:
    """Stage-wise id of a parameter name (``backbone.`` prefixed)."""
    if not name.startswith('backbone.'):
        return num_layers + 1
    parts = name.split('.')
    if parts[1] == 'downsample_layers':
        return 0
    if parts[1] in ('stages', 'pos_embeds'):
        return int(parts[2]) + 1
    return num_layers + 1


def _skip_weight_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim <= 1 or name.endswith('.bias') or 'pos_embed' in name


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PeLKLearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with layer-/stage-wise lr decay.

    ``paramwise_cfg`` keys:

    - ``decay_rate`` (float, in (0, 1]): multiplier per layer / stage.
    - ``decay_type`` (str): ``'layer_wise'`` or ``'stage_wise'``.
      Defaults to ``'layer_wise'``.
    - ``num_layers`` (int, optional): the layer count ConvNeXt configs give
      (6 when stage 2 has 9 blocks, 12 when it has 27). Taken from the
      backbone's ``get_layer_depth`` when omitted; a value that disagrees with
      the backbone raises ``ValueError``.

    Each parameter group holds the parameters that share an id and a weight
    decay, as ``layer_{id}_decay`` / ``layer_{id}_no_decay``, with the keys
    ``params``, ``param_names``, ``lr``, ``lr_scale``, ``weight_decay`` and
    ``group_name``.
    """

    def add_params(self, params: List[dict], module: nn.Module,
                   **kwargs) -> None:
        """Fill ``params`` with the decayed groups of ``module``.

        Args:
            params (list[dict]): Param groups, extended in place.
            module (nn.Module): The whole model; must have a ``backbone`` with
                ``get_layer_depth(name, prefix)``.
        """
        decay_rate = self.paramwise_cfg.get('decay_rate')
        decay_type = self.paramwise_cfg.get('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'paramwise_cfg.decay_type must be one of '
                             f'{DECAY_TYPES}, got {decay_type!r}')
        if not isinstance(decay_rate, (int, float)) or not 0 < decay_rate <= 1:
            raise ValueError('paramwise_cfg.decay_rate must be a number in '
                             f'(0, 1], got {decay_rate!r}')
        backbone = getattr(module, 'backbone', None)
        if not hasattr(backbone, 'get_layer_depth'):
            raise ValueError(
                f'{type(self).__name__} needs model.backbone.get_layer_depth '
                f'(as PeLK and mmpretrain ConvNeXt have); '
                f'{type(module).__name__}.backbone is '
                f'{type(backbone).__name__}')
        num_layers = self._num_layers(backbone)

        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if decay_type == 'layer_wise':
                layer_id, num_ids = backbone.get_layer_depth(
                    name, prefix='backbone.')
            else:
                layer_id = _stage_id(name, num_layers)
                num_ids = num_layers + 2
            no_decay = _skip_weight_decay(name, param)
            group_name = (f'layer_{layer_id}_'
                          f'{"no_decay" if no_decay else "decay"}')
            if group_name not in groups:
                scale = decay_rate**(num_ids - 1 - layer_id)
                groups[group_name] = dict(
                    params=[],
                    param_names=[],
                    lr=self.base_lr * scale,
                    lr_scale=scale,
                    group_name=group_name)
                weight_decay = 0. if no_decay else self.base_wd
                if weight_decay is not None:
                    groups[group_name]['weight_decay'] = weight_decay
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)

        for group in sorted(groups.values(), key=lambda g: g['lr_scale']):
            print_log(
                f'{group["group_name"]}: lr_scale={group["lr_scale"]:.4g} '
                f'weight_decay={group.get("weight_decay")} '
                f'({len(group["params"])} tensors)',
                logger='current')
        params.extend(groups.values())

    def _num_layers(self, backbone: nn.Module) -> int:
        """The backbone's ``num_layers``, checked against the config's."""
        _, num_ids = backbone.get_layer_depth('backbone.stages.0.0',
                                              prefix='backbone.')
        num_layers: Optional[int] = self.paramwise_cfg.get('num_layers')
        if num_layers is not None and num_layers != num_ids - 2:
            raise ValueError(
                f'paramwise_cfg.num_layers={num_layers} does not match the '
                f'backbone ({type(backbone).__name__} has {num_ids - 2} '
                'layers by get_layer_depth); omit it or set it to '
                f'{num_ids - 2}')
        return num_ids - 2
