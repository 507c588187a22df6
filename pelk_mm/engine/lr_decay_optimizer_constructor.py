"""Layer-wise / stage-wise learning-rate decay for PeLK backbones, on top of
every ``paramwise_cfg`` key of mmengine's default constructor.

mmseg's and mmdet's ``LearningRateDecayOptimizerConstructor`` only accept
backbones whose class name contains "ConvNeXt" and ignore mmengine's
``paramwise_cfg`` keys. PeLK keeps ConvNeXt's frame (stem, stages,
downsampling layers), so this constructor applies the same two decay rules,
asks the backbone for everything that depends on its module names (no name is
parsed here), and lets mmengine's ``DefaultOptimWrapperConstructor`` compute
the per-parameter multipliers of ``custom_keys``, ``bias_lr_mult``, ...
(the decay rules and their derivation: ``docs/backbone.md``).
"""
import math
from numbers import Real
from typing import Dict, List, Optional, Union

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from ..ops import PeripheralConv2d

DECAY_TYPES = ('layer_wise', 'stage_wise')
#: ``paramwise_cfg`` keys of this constructor's own lr decay.
DECAY_KEYS = ('decay_rate', 'decay_type', 'num_layers')
#: ``paramwise_cfg`` keys of mmengine 0.10's
#: ``DefaultOptimWrapperConstructor``, all honoured.
MMENGINE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult',
                 'norm_decay_mult', 'dwconv_decay_mult', 'flat_decay_mult',
                 'dcn_offset_lr_mult', 'bypass_duplicate')
MULT_KEYS = tuple(k for k in MMENGINE_KEYS if k.endswith('_mult'))


def _is_number(value) -> bool:
    return (isinstance(value, Real) and not isinstance(value, bool)
            and math.isfinite(value))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PeLKLearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor
                                                ):
    """Optimizer wrapper constructor with layer-/stage-wise lr decay and
    mmengine's parameter-wise options.

    Every parameter first gets what mmengine's
    ``DefaultOptimWrapperConstructor`` gives it for the same
    ``paramwise_cfg`` (its ``lr`` and, where one of its rules sets it, its
    ``weight_decay``; the longest matching ``custom_keys`` entry wins and is
    matched against the names of the whole model, e.g. ``'decode_head'``);
    then:

    - ``lr = mmengine's lr * lr_scale`` with the decay of the parameter's id
      ``i`` out of ``n``: ``lr_scale = decay_rate ** (n - 1 - i)``.
      ``'layer_wise'``: ``(i, n) = backbone.get_layer_depth(name,
      'backbone.')``. ``'stage_wise'``: ``i =
      backbone.get_stage_depth(name, 'backbone.')[0]``, except that what
      comes after the backbone's stages (output norms, neck, heads) gets
      ``num_layers + 1``, and ``n = num_layers + 2``.
    - ``weight_decay``: mmengine's where one of its rules sets one (a
      ``custom_keys`` entry, ``norm_decay_mult``, ``bias_decay_mult``,
      ``dwconv_decay_mult``, ``flat_decay_mult``: ``optimizer.weight_decay
      * mult``); otherwise 0 for the backbone's ``no_weight_decay()`` names
      (timm's convention; for other modules, or a backbone without it:
      1-D parameters and ``.bias``) and ``optimizer.weight_decay`` for the
      rest. ``dwconv_decay_mult`` also covers :class:`PeripheralConv2d`
      (depthwise by construction, not an ``nn.Conv2d``), with mmengine's
      order (norm, bias, depthwise, flat).

    Parameters with ``requires_grad=False`` (frozen stages) are left out. A
    parameter reached twice (a shared module) raises ``ValueError`` unless
    ``bypass_duplicate=True``, which keeps its first occurrence.

    Args:
        optim_wrapper_cfg (dict): As for ``DefaultOptimWrapperConstructor``;
            ``optimizer.lr`` is required.
        paramwise_cfg (dict): The lr-decay keys and any of mmengine's:

            - ``decay_rate`` (float, in (0, 1], required): multiplier per
              layer / stage.
            - ``decay_type`` (str): ``'layer_wise'`` (default) or
              ``'stage_wise'``.
            - ``num_layers`` (int, optional): ConvNeXt configs' layer count
              (6 when stage 2 has 9 blocks, 12 when it has 27); by default
              the backbone's (``get_layer_depth``). ``'layer_wise'``: must
              equal the backbone's. ``'stage_wise'``: sets the heads' id
              ``num_layers + 1`` and must be at least the number of stages.
            - ``custom_keys``, ``bias_lr_mult``, ``bias_decay_mult``,
              ``norm_decay_mult``, ``dwconv_decay_mult``,
              ``flat_decay_mult``, ``dcn_offset_lr_mult``,
              ``bypass_duplicate``: as in mmengine (multipliers are numbers
              >= 0; ``custom_keys`` maps name substrings to dicts whose
              ``lr_mult`` / ``decay_mult`` are numbers >= 0).

    Returns:
        OptimWrapper: when called on the model. Each parameter group holds
        the parameters sharing an id, an lr and a weight decay (and any other
        setting of their ``custom_keys`` entry), named
        ``layer_{id}_decay`` / ``layer_{id}_no_decay`` (with ``_{k}``
        appended for further groups of the same id and kind), with the keys
        ``params``, ``param_names``, ``lr``, ``lr_scale`` (``lr /
        optimizer.lr``), ``weight_decay`` (when the optimizer has one) and
        ``group_name``.

    Raises:
        ValueError: an unknown ``paramwise_cfg`` key (the allowed ones are
            named), a value out of range, a model without
            ``backbone.get_layer_depth`` (and ``get_stage_depth`` for
            ``'stage_wise'``), a ``num_layers`` that does not fit the
            backbone, a duplicate parameter without ``bypass_duplicate``.

    Example::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            constructor='PeLKLearningRateDecayOptimizerConstructor',
            paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise',
                               num_layers=6,
                               custom_keys={'decode_head': dict(lr_mult=10.)}))
    """

    def _validate_cfg(self) -> None:
        """mmengine's checks, then the keys and values of ``paramwise_cfg``."""
        super()._validate_cfg()
        cfg = self.paramwise_cfg
        allowed = DECAY_KEYS + MMENGINE_KEYS
        unknown = sorted(set(cfg) - set(allowed))
        if unknown:
            raise ValueError(f'paramwise_cfg has unknown keys {unknown}; '
                             f'{type(self).__name__} accepts {list(allowed)}')
        decay_rate = cfg.get('decay_rate')
        if not _is_number(decay_rate) or not 0 < decay_rate <= 1:
            raise ValueError('paramwise_cfg.decay_rate must be a number in '
                             f'(0, 1], got {decay_rate!r}')
        decay_type = cfg.get('decay_type', 'layer_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(f'paramwise_cfg.decay_type must be one of '
                             f'{DECAY_TYPES}, got {decay_type!r}')
        num_layers = cfg.get('num_layers')
        if num_layers is not None and (not isinstance(num_layers, int)
                                       or isinstance(num_layers, bool)
                                       or num_layers < 1):
            raise ValueError('paramwise_cfg.num_layers must be a positive '
                             f'int or None, got {num_layers!r}')
        for key in MULT_KEYS:
            if key in cfg and not (_is_number(cfg[key]) and cfg[key] >= 0):
                raise ValueError(f'paramwise_cfg.{key} must be a number >= 0, '
                                 f'got {cfg[key]!r}')
        if not isinstance(cfg.get('bypass_duplicate', False), bool):
            raise ValueError('paramwise_cfg.bypass_duplicate must be a bool, '
                             f'got {cfg["bypass_duplicate"]!r}')
        for key, entry in cfg.get('custom_keys', {}).items():
            if not isinstance(key, str) or not isinstance(entry, dict):
                raise ValueError(
                    'paramwise_cfg.custom_keys must map name substrings (str) '
                    f'to dicts, got {key!r}: {entry!r}')
            for mult in ('lr_mult', 'decay_mult'):
                if mult in entry and not (_is_number(entry[mult])
                                          and entry[mult] >= 0):
                    raise ValueError(
                        f'paramwise_cfg.custom_keys[{key!r}].{mult} must be a '
                        f'number >= 0, got {entry[mult]!r}')
        if not _is_number(self.base_lr):
            raise ValueError('optimizer.lr must be a number for '
                             f'{type(self).__name__}, got {self.base_lr!r}')

    def add_params(self,
                   params: List[dict],
                   module: nn.Module,
                   prefix: str = '',
                   is_dcn_module: Optional[Union[int, float]] = None) -> None:
        """Fill ``params`` with the decayed groups of ``module``.

        Args:
            params (list[dict]): Param groups, extended in place.
            module (nn.Module): The whole model; must have a ``backbone`` with
                ``get_layer_depth(name, prefix)`` (and ``get_stage_depth`` for
                ``'stage_wise'``), optionally ``no_weight_decay()``.
            prefix (str): Non-empty only in mmengine's recursion into the
                children of ``module``, which this call starts.
            is_dcn_module (int | float, optional): mmengine's recursion.
        """
        if prefix:  # mmengine's own recursion: its per-parameter groups
            super().add_params(params, module, prefix, is_dcn_module)
            return
        decay_type = self.paramwise_cfg.get('decay_type', 'layer_wise')
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
        names: Dict[int, str] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), name)
        peripheral = {
            id(p)
            for m in module.modules() if isinstance(m, PeripheralConv2d)
            for p in m.parameters(recurse=False)
        }

        mmengine_groups: List[dict] = []  # one per parameter
        super().add_params(mmengine_groups, module)
        groups: Dict[str, dict] = {}
        seen = set()
        for mm_group in mmengine_groups:
            param, = mm_group['params']
            name = names[id(param)]
            if id(param) in seen:
                raise ValueError(
                    f'parameter {name} is reached twice (a module shared '
                    'under two names); set paramwise_cfg.bypass_duplicate='
                    'True to optimise it once, as mmengine does')
            seen.add(id(param))
            layer_id, num_ids = getattr(backbone, depth_fn)(
                name, prefix='backbone.')
            if decay_type == 'stage_wise':
                if layer_id == num_ids - 1:  # after the backbone's stages
                    layer_id = num_layers + 1
                num_ids = num_layers + 2
            scale = self.paramwise_cfg['decay_rate']**(num_ids - 1 - layer_id)
            lr = mm_group.get('lr', self.base_lr) * scale
            weight_decay = self._weight_decay(name, param, mm_group,
                                              no_decay_names,
                                              id(param) in peripheral)
            extras = {
                k: v
                for k, v in mm_group.items()
                if k not in ('params', 'lr', 'weight_decay')
            }
            key = repr((layer_id, lr, weight_decay, sorted(extras.items())))
            if key not in groups:
                groups[key] = dict(
                    extras,
                    params=[],
                    param_names=[],
                    lr=lr,
                    lr_scale=lr / self.base_lr,
                    group_name=self._group_name(groups, layer_id,
                                                weight_decay))
                if weight_decay is not None:
                    groups[key]['weight_decay'] = weight_decay
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)

        for group in sorted(groups.values(), key=lambda g: g['lr_scale']):
            print_log(
                f'{group["group_name"]}: lr_scale={group["lr_scale"]:.4g} '
                f'weight_decay={group.get("weight_decay")} '
                f'({len(group["params"])} tensors)',
                logger='current')
        params.extend(groups.values())

    def _weight_decay(self, name: str, param: nn.Parameter, mm_group: dict,
                      no_decay_names: Optional[set],
                      peripheral: bool) -> Optional[float]:
        """The weight decay of one parameter (see the class docstring)."""
        if self.base_wd is None:
            return None
        cfg = self.paramwise_cfg
        custom = any(key in name for key in cfg.get('custom_keys', {}))
        if (peripheral and not custom
                and cfg.get('dwconv_decay_mult') is not None
                and not (name.endswith('.bias')
                         and cfg.get('bias_decay_mult') is not None)):
            return self.base_wd * cfg['dwconv_decay_mult']
        if 'weight_decay' in mm_group:
            return mm_group['weight_decay']
        if no_decay_names is not None and name.startswith('backbone.'):
            no_decay = name[len('backbone.'):] in no_decay_names
        else:
            no_decay = param.ndim <= 1 or name.endswith('.bias')
        return 0. if no_decay else self.base_wd

    def _group_name(self, groups: Dict[str, dict], layer_id: int,
                    weight_decay: Optional[float]) -> str:
        """``layer_{id}_decay`` / ``layer_{id}_no_decay``, ``_{k}`` appended
        when that name is taken by another group."""
        kind = 'no_decay' if weight_decay == 0 else 'decay'
        base = f'layer_{layer_id}_{kind}'
        taken = {g['group_name'] for g in groups.values()}
        name, k = base, 1
        while name in taken:
            name, k = f'{base}_{k}', k + 1
        return name

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
        if num_layers < num_stage_ids - 2:
            raise ValueError(
                f'paramwise_cfg.num_layers={num_layers!r} must be at least '
                f'the number of stages ({num_stage_ids - 2}) for '
                "decay_type='stage_wise' (the heads come after the last "
                'stage); omit it to use the backbone\'s layer count '
                f'{num_ids - 2}')
        return num_layers
