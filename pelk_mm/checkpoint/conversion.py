"""Classification checkpoints to downstream backbone checkpoints.

:func:`to_backbone_checkpoint` is what ``tools/model_converters/
cls2backbone.py`` writes: ``{'state_dict': {'backbone.<key>': tensor},
'meta': {...}}``, which the downstream configs load with
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
"""
from collections import OrderedDict
from typing import List, Mapping, Tuple

import torch

from .arch_record import add_arch_meta, check_state_dict, find_arch_record
from .loading import backbone_state_dict

#: Where training scripts keep the model weights, tried in this order:
#: mmengine / mmpretrain, then ConvNeXt / SLaK-style scripts.
STATE_DICT_KEYS = ('state_dict', 'model', 'model_ema', 'module')


def extract_state_dict(checkpoint) -> 'OrderedDict[str, torch.Tensor]':
    """The model weights of a checkpoint in any of the supported layouts.

    The state dict's per-module metadata (where the arch record is) comes
    along.

    Raises:
        ValueError: not a dict, or no tensors.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f'expected a dict checkpoint, got '
                         f'{type(checkpoint).__name__}')
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    tensors = OrderedDict(
        (k, v) for k, v in checkpoint.items() if torch.is_tensor(v))
    if not tensors:
        raise ValueError(f'no tensors found; top-level keys: '
                         f'{sorted(checkpoint)[:10]}')
    tensors._metadata = getattr(checkpoint, '_metadata', OrderedDict())
    return tensors


def to_backbone_checkpoint(checkpoint: Mapping, model,
                           name: str) -> Tuple[dict, List[str], List[str]]:
    """The backbone checkpoint of ``model`` made from a loaded checkpoint.

    The keys are checked as strictly as loading into PeLK checks them
    (:func:`~pelk_mm.checkpoint.arch_record.check_state_dict`): only the
    output norms may be missing, and keys ``model`` does not have (the
    classifier head, SLaK mask buffers, ...) are dropped.

    Args:
        checkpoint (Mapping): The loaded source checkpoint.
        model (PeLK): The backbone the weights must fit.
        name (str): How messages name the source (its path).

    Returns:
        tuple: ``(checkpoint, missing, unexpected)``: the backbone checkpoint
        (``state_dict`` with ``backbone.`` keys and the arch record in its
        metadata, ``meta`` with ``converted_from``, ``kernel_sizes``,
        ``channels`` and ``pelk_arch``), the missing keys (output norms) and
        the dropped ones.

    Raises:
        ValueError: no PeLK backbone key at all, or the weights do not fit
            ``model`` (shape mismatch, missing block key, another arch).
    """
    whole = extract_state_dict(checkpoint)
    state_dict, prefix = backbone_state_dict(
        dict(state_dict=whole, meta=checkpoint.get('meta')), name=name)
    others = [k for k in whole if not k.startswith(prefix)]
    own = model.state_dict()
    if not any(k in own for k in state_dict):
        raise ValueError(f'{name} has no PeLK backbone key at all (first '
                         f'keys: {list(state_dict)[:5]})')
    try:
        missing = check_state_dict(model, state_dict,
                                   find_arch_record(state_dict, ''))
    except ValueError as e:
        raise ValueError(f'{name} does not fit the target PeLK.\n{e}') from e
    kept = [k for k in state_dict if k in own]
    unexpected = others + [k for k in state_dict if k not in own]
    converted = OrderedDict((f'backbone.{k}', state_dict[k]) for k in kept)
    converted._metadata = OrderedDict(
        ('backbone' + (f'.{k}' if k else ''), v)
        for k, v in own._metadata.items())  # the arch record included
    result = add_arch_meta(
        dict(
            state_dict=converted,
            meta=dict(
                converted_from=name,
                kernel_sizes=model.kernel_sizes,
                channels=model.channels)),
        model,
        prefix='backbone.')
    return result, missing, unexpected
