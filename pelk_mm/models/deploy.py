"""Deploy form of whole models: fold every PeLK backbone, compare outputs.

Used by ``tools/model_converters/pelk_deploy.py`` (fold a checkpoint) and
``tools/deployment/pytorch2onnx.py`` (export the folded model). A model is in
its deploy form when it holds no :class:`~pelk_mm.PeripheralConv2d` (whose
FFT and summed-area-table paths do not export): every token mixer is then
the one of its backbone's ``deploy_mode``, a
:class:`~pelk_mm.ops.boxsum_conv.BoxSumPeripheralConv2d` (``'structured'``,
the default: compact weights, box sums in standard ONNX operators) or a plain
depthwise ``nn.Conv2d`` (``'dense'``).
"""
from typing import List, Sequence, Set, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..ops import PeripheralConv2d
from .pelk import PeLK


def peripheral_convs(model: nn.Module) -> List[str]:
    """Names of the :class:`PeripheralConv2d` modules left in ``model``."""
    return [
        name for name, module in model.named_modules()
        if isinstance(module, PeripheralConv2d)
    ]


def switch_to_deploy(model: nn.Module) -> int:
    """Call :meth:`PeLK.switch_to_deploy` on every PeLK inside ``model``.

    Returns:
        int: The number of PeLK backbones found.
    """
    backbones = [m for m in model.modules() if isinstance(m, PeLK)]
    for backbone in backbones:
        backbone.switch_to_deploy()
    return len(backbones)


def deploy_modes(model: nn.Module) -> Set[str]:
    """The ``deploy_mode`` of every PeLK inside ``model``."""
    return {m.deploy_mode for m in model.modules() if isinstance(m, PeLK)}


def check_deploy_form(model: nn.Module) -> None:
    """Raise a ValueError naming the fix if ``model`` is not deployed."""
    names = peripheral_convs(model)
    if names:
        raise ValueError(
            f'the model is not in its deploy form: {len(names)} '
            f'PeripheralConv2d module(s) (first: {names[0]}) compute the '
            'large kernels with FFT / summed-area tables, which do not '
            'export. Use the deploy form: fold the checkpoint with '
            'tools/model_converters/pelk_deploy.py CONFIG CKPT OUT, then '
            'build the model with deploy=True (--cfg-options '
            'model.backbone.deploy=True, or model.deploy=True for a bare '
            'PeLK config; add deploy_mode=dense for the dense form) and '
            'load OUT.')


def _flatten(outputs) -> List[Tensor]:
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = outputs.values()
    if isinstance(outputs, (list, tuple, type({}.values()))):
        return [t for out in outputs for t in _flatten(out)]
    raise TypeError(f'cannot compare outputs of type {type(outputs)}')


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is an mmdet detector (without importing mmdet)."""
    return any(
        cls.__module__.startswith('mmdet.') and cls.__name__ == 'BaseDetector'
        for cls in type(model).__mro__)


def tensor_outputs(model: nn.Module, inputs: Tensor) -> List[Tensor]:
    """The model's raw tensor outputs on ``inputs`` ``(N, 3, H, W)``.

    A bare PeLK returns its feature maps; a segmentor or classifier its
    tensor-mode forward (``mode='tensor'``: segmentation logits at the decode
    head's resolution, classification scores). An mmdet detector returns
    ``extract_feat`` (backbone + neck): its heads' tensor forward needs image
    metadata and its proposals are a top-k selection, so the features are
    what can be compared exactly.
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
