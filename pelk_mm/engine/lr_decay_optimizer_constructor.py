"""Layer-wise / stage-wise learning-rate decay for PeLK backbones.

mmseg's and mmdet's ``LearningRateDecayOptimizerConstructor`` only accept
backbones whose class name contains "ConvNeXt". PeLK keeps ConvNeXt's frame
(stem, stages, downsampling layers), so this constructor applies the same two
rules, but asks the backbone for everything that depends on its module names
(no name is parsed here):

- ``layer_wise`` (detection, decay 0.7 in the paper): ``(layer_id, num_ids) =
  backbone.get_layer_depth(name, prefix='backbone.')`` (for PeLK: stem 0, one
  depth per 3 blocks of each stage, anything after the backbone's last block
  ``num_layers + 1``; mmpretrain ConvNeXt's table for the 4-stage archs), and
  ``lr_scale = decay_rate ** (num_ids - 1 - layer_id)``.
- ``stage_wise`` (segmentation, decay 0.9 in the paper), exactly as ConvNeXt's
  released segmentation code (which SLaK and PeLK follow): ``stage_id =
  backbone.get_stage_depth(name, prefix='backbone.')`` (every downsampling
  layer 0, stage ``i`` with its positional embedding ``i + 1``), everything
  else (the backbone's output norms, neck, heads) id ``num_layers + 1``, and
  ``lr_scale = decay_rate ** (num_layers + 1 - id)``, where ``num_layers`` is
  ``paramwise_cfg.num_layers``, by default the layer-wise count above (6 for
  PeLK-T, 12 for S/B), not the number of stages. So with ``num_layers=6`` the
  heads get the base lr and stage 3 gets ``0.9 ** 3`` of it.

Weight decay: the backbone's parameters named (relative to the backbone) in
``backbone.no_weight_decay()`` (timm's convention; PeLK declares its
positional embeddings, norms, biases and layer scales) take none; every other
parameter of the model follows the generic rule of mmseg's ConvNeXt
constructor: none for 1-D parameters (norms, biases, layer scales) and any
``.bias``, the optimizer's ``weight_decay`` for the rest (also the whole
backbone when it has no ``no_weight_decay``). Parameters with
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


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PeLKLearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor
                                                ):
    """Optimizer wrapper constructor with layer-/stage-wise lr decay.

    ``paramwise_cfg`` keys:

    - ``decay_rate`` (float, in (0, 1]): multiplier per layer / stage.
    - ``decay_type`` (str): ``'layer_wise'`` or ``'stage_wise'``.
      Defaults to ``'layer_wise'``.
    - ``num_layers`` (int, optional): the layer count ConvNeXt configs give
      (6 when stage 2 has 9 blocks, 12 when it has 27). Taken from the
      backbone's ``get_layer_depth`` when omitted. For ``'layer_wise'`` a
      value that disagrees with the backbone raises ``ValueError``; for
      ``'stage_wise'`` it only sets the heads' id ``num_layers + 1`` (as in
      mmseg's constructor) and must be at least the number of stages (the
      demo config keeps the recipe's 6 for its 4-layer backbone).

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
                ``get_layer_depth(name, prefix)`` (and ``get_stage_depth`` for
                ``'stage_wise'``), optionally ``no_weight_decay()``.
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
        depth_fn = ('get_layer_depth'
                    if decay_type == 'layer_wise' else 'get_stage_depth')
        for method in ('get_layer_depth', depth_fn):
            if not hasattr(backbone, method):
                raise ValueError(
                    f'{type(self).__name__} with decay_type={decay_type!r} '
                    f'needs model.backbone.{method} (as PeLK has); '
                    f'{type(module).__name__}.backbone is '
                    f'{type(backbone).__name__}')
        num_layers = self._num_layers(backbone, decay_type)
        no_decay_names = (
            backbone.no_weight_decay()
            if hasattr(backbone, 'no_weight_decay') else None)

        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id, num_ids = getattr(backbone, depth_fn)(
                name, prefix='backbone.')
            if decay_type == 'stage_wise':
                if layer_id == num_ids - 1:  # after the backbone's stages
                    layer_id = num_layers + 1
                num_ids = num_layers + 2
            if no_decay_names is not None and name.startswith('backbone.'):
                no_decay = name[len('backbone.'):] in no_decay_names
            else:
                no_decay = param.ndim <= 1 or name.endswith('.bias')
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

    def _num_layers(self, backbone: nn.Module, decay_type: str) -> int:
        """``num_layers``: the config's, checked against the backbone, or the
        backbone's layer count (by ``get_layer_depth``) when omitted."""
        _, num_ids = backbone.get_layer_depth(
            'backbone.stages.0.0', prefix='backbone.')
        num_layers: Optional[int] = self.paramwise_cfg.get('num_layers')
        if num_layers is None:
            return num_ids - 2
        if decay_type == 'layer_wise' and num_layers != num_ids - 2:
            raise ValueError(
                f'paramwise_cfg.num_layers={num_layers} does not match the '
                f'backbone ({type(backbone).__name__} has {num_ids - 2} '
                'layers by get_layer_depth); omit it or set it to '
                f'{num_ids - 2}')
        if decay_type == 'layer_wise':
            return num_layers
        _, num_stage_ids = backbone.get_stage_depth(
            'backbone.stages.0.0', prefix='backbone.')
        if not (isinstance(num_layers, int)
                and num_layers >= num_stage_ids - 2):
            raise ValueError(
                f'paramwise_cfg.num_layers={num_layers!r} must be an int of '
                f'at least the number of stages ({num_stage_ids - 2}) for '
                "decay_type='stage_wise' (the heads come after the last "
                'stage); omit it to use the backbone\'s layer count '
                f'{num_ids - 2}')
        return num_layers
