"""Comparing a model's outputs before and after deploy / export.

What ``tools/model_converters/pelk_deploy.py`` and
``tools/deployment/pytorch2onnx.py`` check a folded or exported model with:
:func:`tensor_outputs` (a model's raw tensors on an input) and
:func:`compare_outputs` (max abs and relative error).
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from pelk_mm.models import PeLK


def _flatten(outputs) -> List[Tensor]:
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = outputs.values()
    if isinstance(outputs, (list, tuple, type({}.values()))):
        return [t for out in outputs for t in _flatten(out)]
    raise TypeError(f'cannot compare outputs of type {type(outputs)}')


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is an mmdet detector (False without mmdet)."""
    try:
        from mmdet.models.detectors import BaseDetector
    except ImportError:
        return False
    return isinstance(model, BaseDetector)


def tensor_outputs(model: nn.Module, inputs: Tensor) -> List[Tensor]:
    """The model's raw tensor outputs on ``inputs`` ``(N, 3, H, W)``.

    A bare PeLK returns its feature maps; a segmentor or classifier its
    tensor-mode forward (``mode='tensor'``: segmentation logits at the decode
    head's resolution, classification scores). An mmdet detector returns
    ``extract_feat`` (backbone + neck): its heads' tensor forward needs image
    metadata and its proposals are a top-k selection, so the features are
    what can be compared exactly.

    Returns:
        list[Tensor]: Every output tensor, in the model's order.
    """
    if isinstance(model, PeLK):
        outputs = model(inputs)
    elif is_detector(model):
        outputs = model.extract_feat(inputs)
    else:
        outputs = model(inputs, mode='tensor')
    return _flatten(outputs)


def compare_outputs(outputs: Sequence[Tensor],
                    references: Sequence[Tensor]) -> Tuple[float, float]:
    """Max abs error and max relative error over matching outputs.

    The relative error of one output is its max abs error divided by the
    reference's max abs value (the output's scale), so that values near zero
    do not dominate.

    Returns:
        tuple[float, float]: ``(max_abs, max_rel)`` over all outputs.

    Raises:
        ValueError: the numbers or shapes of outputs differ.
    """
    if len(outputs) != len(references):
        raise ValueError(f'{len(outputs)} outputs vs {len(references)} '
                         'references')
    max_abs = max_rel = 0.
    for out, ref in zip(outputs, references):
        out, ref = torch.as_tensor(out), torch.as_tensor(ref)
        if out.shape != ref.shape:
            raise ValueError(f'output shape {tuple(out.shape)} vs reference '
                             f'{tuple(ref.shape)}')
        err = float((out.double() - ref.double()).abs().max())
        scale = float(ref.double().abs().max())
        max_abs = max(max_abs, err)
        max_rel = max(max_rel, err / scale if scale > 0 else err)
    return max_abs, max_rel
