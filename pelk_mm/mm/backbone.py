"""PeLK as an OpenMMLab backbone: the torch network behind mmengine's
``init_cfg``, the checkpoint checks and the ``MODELS`` registry."""
import copy
import inspect
from functools import partial
from typing import List, Optional, Union

import torch.nn as nn
from mmcv.cnn import build_activation_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from mmpretrain.models.utils import build_norm_layer

from ..checkpoint.arch_record import ArchRecordMixin
from ..checkpoint.loading import is_pretrained, load_pretrained
from ..models import pelk as core

#: The default ``init_cfg``: what :meth:`pelk_mm.models.PeLK.init_weights`
#: draws, as mmengine initialisers.
DEFAULT_INIT_CFG = [
    dict(
        type='TruncNormal',
        layer=['Conv2d', 'Linear', 'PeripheralConv2d'],
        std=.02,
        bias=0.),
    dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.),
]

#: The keyword arguments of the torch network that a config gives as is
#: (``norm_layer`` / ``act_layer`` come from ``norm_cfg`` / ``act_cfg``).
NETWORK_KEYS = tuple(
    name for name in inspect.signature(core.PeLK.__init__).parameters
    if name not in ('self', 'arch', 'norm_layer', 'act_layer'))


def _norm_layer(norm_cfg: dict, channels: int) -> nn.Module:
    """mmpretrain's norm of ``norm_cfg``; the blocks need a LayerNorm over
    channels (``LN2d``)."""
    norm = build_norm_layer(norm_cfg, channels)
    if not isinstance(norm, nn.LayerNorm):
        raise ValueError(
            "`norm_cfg` must build a channel LayerNorm (type='LN2d'), got "
            f'{norm_cfg!r}, which builds {type(norm).__name__}')
    return norm


def _refuse_foreign_keys(kwargs: dict) -> None:
    """Raise a TypeError naming the keys PeLK does not take.

    In an mm config, ``model.backbone = dict(type='PeLK', ...)`` over a base
    config is merged key by key into the base's backbone, so another
    backbone's keys (ResNet's ``depth``, ``num_stages``, ``style``, ...)
    reach PeLK unless ``_delete_=True`` replaces the base's backbone.
    """
    foreign = sorted(set(kwargs) - set(NETWORK_KEYS))
    if foreign:
        allowed = ('arch', ) + NETWORK_KEYS + ('norm_cfg', 'act_cfg',
                                               'init_cfg')
        raise TypeError(
            f'PeLK does not take the key(s) {foreign}; it takes '
            f'{", ".join(allowed)}. Keys like these usually come from '
            'elsewhere: the backbone of a base config (e.g. ResNet\'s in '
            'mmseg::_base_/models/upernet_r50.py), into which an mm config '
            'merges backbone=dict(type=\'PeLK\', ...) key by key. Write '
            'backbone=dict(_delete_=True, type=\'PeLK\', ...): _delete_=True '
            "replaces the base's backbone instead of merging into it.")


@MODELS.register_module()
class PeLK(ArchRecordMixin, core.PeLK, BaseModule):
    """PeLK backbone (registered as ``'PeLK'``).

    :class:`pelk_mm.models.PeLK` (the network, same state-dict keys) with:

    - ``norm_cfg`` / ``act_cfg`` instead of ``norm_layer`` / ``act_layer``;
    - ``init_cfg`` and :meth:`init_weights` (mmengine's ``BaseModule``);
    - the checkpoint policy of
      :class:`~pelk_mm.checkpoint.ArchRecordMixin`: every state
      dict records :meth:`arch_record` in its metadata, and loading one that
      does not fit raises
      :class:`~pelk_mm.checkpoint.PeLKCheckpointMismatch`
      before any weight is copied;
    - :meth:`get_layer_depth` / :meth:`get_stage_depth` for
      :class:`~pelk_mm.PeLKLearningRateDecayOptimizerConstructor`.

    Args:
        arch (str | dict): See :class:`pelk_mm.models.PeLK`.
            Defaults to 'tiny'.
        norm_cfg (dict): Config of the norm layers, a channel LayerNorm.
            Defaults to ``dict(type='LN2d', eps=1e-6)``.
        act_cfg (dict): Config of the MLP activation.
            Defaults to ``dict(type='GELU')``.
        init_cfg (dict | list[dict], optional): Initialization config,
            applied by :meth:`init_weights`, where every initial value of the
            backbone comes from (see there). ``Pretrained`` (with ``prefix``
            for a classifier checkpoint, e.g. ``prefix='backbone.'``)
            overwrites everything, strictly. Defaults to
            :data:`DEFAULT_INIT_CFG`.
        **kwargs: Every other argument of :class:`pelk_mm.models.PeLK`
            (:data:`NETWORK_KEYS`), e.g. ``out_indices``,
            ``drop_path_rate``, ``deploy``.

    Raises:
        TypeError: a key that is not PeLK's; the message names them and
            says that ``_delete_=True`` replaces a base config's backbone.
        ValueError: see :class:`pelk_mm.models.PeLK`; a ``norm_cfg`` that
            is not a channel LayerNorm.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 *,
                 norm_cfg: dict = dict(type='LN2d', eps=1e-6),
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg: Optional[Union[dict,
                                          List[dict]]] = DEFAULT_INIT_CFG,
                 **kwargs):
        _refuse_foreign_keys(kwargs)
        super().__init__(
            arch,
            norm_layer=partial(_norm_layer, norm_cfg),
            act_layer=partial(build_activation_layer, act_cfg),
            **kwargs)
        self.init_cfg = copy.deepcopy(init_cfg)
        self._record_arch()

    def init_weights(self) -> None:
        """Initialise the backbone: every initial value comes from here.

        In this order:

        1. ``init_cfg`` without its ``Pretrained`` entry; the default draws
           what :meth:`pelk_mm.models.PeLK.init_weights` draws;
        2. the positional embeddings: trunc-normal std 0.02;
        3. a ``Pretrained`` entry (``checkpoint``, optional ``prefix`` and
           ``map_location``), loaded strictly by
           :func:`~pelk_mm.checkpoint.load_backbone`: the
           keys under ``prefix`` are loaded with the checkpoint's arch
           record, keys outside it are ignored, and one that does not fit
           raises
           :class:`~pelk_mm.checkpoint.PeLKCheckpointMismatch`
           before any weight is copied. Its positional embeddings replace
           the drawn ones.

        Until then the positional embeddings are zero. The standalone
        :class:`~pelk_mm.PeripheralConv2d` keeps its own ``nn.Conv2d``-like
        ``reset_parameters``, which this overwrites.
        """
        if self.is_init:  # mmengine warns about a second call and skips it
            BaseModule.init_weights(self)
            return
        init_cfg = self.init_cfg
        cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
        pretrained = [c for c in cfgs if is_pretrained(c)]
        self.init_cfg = [c for c in cfgs if c and not is_pretrained(c)]
        try:
            BaseModule.init_weights(self)
        finally:
            self.init_cfg = init_cfg
        self.init_pos_embeds()
        for cfg in pretrained:
            load_pretrained(self, cfg)
