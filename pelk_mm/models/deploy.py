"""Deploy form of whole models: fold every PeLK backbone inside a model.

Used by ``tools/model_converters/pelk_deploy.py`` (fold a checkpoint) and
``tools/deployment/pytorch2onnx.py`` (export the folded model), which compare
the outputs with ``tools/deployment/output_comparison.py``. A model is in
its deploy form when it holds no :class:`~pelk_mm.PeripheralConv2d` (whose
FFT and summed-area-table paths do not export): every token mixer is then
the one of its backbone's ``deploy_mode``, a
:class:`~pelk_mm.ops.boxsum_conv.BoxSumPeripheralConv2d` (``'structured'``,
the default: compact weights, band sums in standard ONNX operators) or a plain
depthwise ``nn.Conv2d`` (``'dense'``).
"""
from typing import List, Set

import torch.nn as nn

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
