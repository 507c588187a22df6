"""Export the deploy form of a PeLK model to ONNX (opset 17, dynamic batch).

    python tools/deployment/pytorch2onnx.py CONFIG CKPT --shape H W
        [--out F] [--verify] [--tol 1e-4] [--backbone]
        [--cfg-options model.backbone.deploy=True ...]

CONFIG builds one of

- an mmseg ``EncoderDecoder`` (e.g. UperNet): the graph is its tensor-mode
  forward, input ``(N, 3, H, W)`` normalised images -> ``seg_logits``
  ``(N, num_classes, H / 4, W / 4)`` (the decode head's output, before
  resizing; the data preprocessor's normalisation is not in the graph);
- an mmpretrain ``ImageClassifier``: -> ``cls_score`` ``(N, num_classes)``
  (before softmax);
- a bare backbone (``model = dict(type='PeLK', ...)``, or ``--backbone`` to
  take any config's ``model.backbone``): -> ``feat0`` ... one output per
  ``out_indices`` entry (the four feature maps of a downstream backbone).

Only the deploy form exports (``PeLK(deploy=True)``); the peripheral conv's
FFT path does not. By default it is the structured form (``deploy_mode=
'structured'``): every peripheral conv keeps its compact weights and becomes
band sums in standard ONNX operators (``MatMul`` with constant band
matrices and ``Transpose`` on small maps; ``Pad``, ``AveragePool``,
``Concat``, ``Gather``, ``MatMul``, ``Add``, ``Reshape`` on large ones; no
custom operator, no loop, all listed by TensorRT's ONNX parser), which
onnxruntime runs several times faster than the dense ``K x K`` convs of
``deploy_mode='dense'`` (kept for runtimes that need a single conv; see
docs/deployment.md for both). Fold a trained checkpoint
with ``tools/model_converters/pelk_deploy.py`` and build the deploy form
with ``--cfg-options model.backbone.deploy=True`` (``model.deploy=True`` for
a bare PeLK config; plus ``model.backbone.deploy_mode=dense`` for a dense
checkpoint: the checkpoint records its form and loading the other one
fails). A model that still holds peripheral convs is refused before anything
is exported (exit status 1).

CKPT is loaded strictly (every key and shape; with ``--backbone``, the keys
under ``backbone.`` of a whole-model checkpoint). The exporter is the
TorchScript-based one, picked by feature detection (:func:`exporter_kwargs`):
``torch.onnx.export(..., dynamo=False)`` where the installed torch has that
switch (whose default is now the torch.export-based exporter), the plain
call where it has not (torch 2.1, TorchScript only). Opset 17, the batch
dimension dynamic, H and W fixed. It refuses adaptive average pooling
to sizes that do not divide the input (mmseg's PPM pools to 1, 2, 3 and 6), so
the exported copy computes those as two exact matrix products
(:class:`AdaptiveAvgPoolAsMatMul`). ``--verify`` runs onnxruntime (CPU) on a
seeded random input of batch 2 (the export traces batch 1, so this also
exercises the dynamic batch) and prints the max abs and relative error against
PyTorch (relative: max abs error / max abs value, per output); the exit status
is 1 if the relative error exceeds ``--tol``.
"""
import argparse
import copy
import inspect
import os.path as osp
import sys
from typing import List

import torch
import torch.nn as nn
from mmengine.config import DictAction

import pelk_mm  # noqa: F401  (registers PeLK)
from pelk_mm import PeLK
from pelk_mm.checkpoint import load_backbone, load_strictly
from pelk_mm.mm.builder import build_model
from pelk_mm.models.deploy import check_deploy_form, deploy_modes

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import output_comparison  # noqa: E402

OPSET = 17


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export the deploy form of a PeLK model to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='deployed checkpoint (path / URL)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        required=True,
        metavar=('H', 'W'),
        help='input height and width')
    parser.add_argument(
        '--out',
        help="output file (default: CKPT's file name with .onnx, in the "
        'current directory)')
    parser.add_argument(
        '--verify',
        action='store_true',
        help='compare onnxruntime with PyTorch on a random input')
    parser.add_argument(
        '--tol',
        type=float,
        default=1e-4,
        help='--verify: max relative error (default 1e-4)')
    parser.add_argument(
        '--backbone',
        action='store_true',
        help="export only the config's model.backbone")
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value '
        '(model.backbone.deploy=True for the deploy form)')
    return parser.parse_args(argv)


class TensorForward(nn.Module):
    """A model's tensor outputs as a flat tuple (what ONNX can return)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return tuple(output_comparison.tensor_outputs(self.model, inputs))


def output_names(model: nn.Module) -> List[str]:
    if isinstance(model, PeLK):
        return [f'feat{i}' for i in range(len(model.out_indices))]
    if hasattr(model, 'decode_head'):
        return ['seg_logits']
    return ['cls_score']


def check_exportable(model: nn.Module) -> None:
    """Refuse detectors and non-deployed models before exporting."""
    if output_comparison.is_detector(model):
        raise ValueError(
            'detectors are not exported (their heads need image metadata '
            'and post-processing): export the deployed backbone with '
            '--backbone')
    check_deploy_form(model)


class AdaptiveAvgPoolAsMatMul(nn.Module):
    """``nn.AdaptiveAvgPool2d`` for a fixed input size, as two matrix products.

    Adaptive average pooling from ``n`` to ``o`` averages bin ``i`` over
    ``[floor(i n / o), ceil((i + 1) n / o))``, i.e. ``P_h @ x @ P_w^T`` with
    row-normalised 0/1 matrices ``P``: exact, and exportable for every size,
    while the TorchScript exporter only exports output sizes that divide the
    input size (mmseg's PPM pools to 1, 2, 3 and 6).
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    @staticmethod
    def pool_matrix(n: int, o: int) -> torch.Tensor:
        matrix = torch.zeros(o, n)
        for i in range(o):
            start, end = (i * n) // o, -(-((i + 1) * n) // o)
            matrix[i, start:end] = 1. / (end - start)
        return matrix

    def forward(self, x):
        height, width = (int(s) for s in x.shape[-2:])
        out_h, out_w = _pair(self.output_size)
        rows = self.pool_matrix(height, out_h or height).to(x)
        cols = self.pool_matrix(width, out_w or width).to(x)
        return torch.matmul(torch.matmul(rows, x), cols.t())


def _pair(size):
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def exportable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adaptive average pooling whose output
    is not ``1 x 1`` replaced by :class:`AdaptiveAvgPoolAsMatMul`."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if (isinstance(module, nn.AdaptiveAvgPool2d)
                and _pair(module.output_size) != (1, 1)):
            parent, _, child = name.rpartition('.')
            setattr(
                model.get_submodule(parent), child,
                AdaptiveAvgPoolAsMatMul(module.output_size))
    return model


def exporter_kwargs() -> dict:
    """Arguments of ``torch.onnx.export`` that select the TorchScript-based
    exporter: ``dynamo=False`` where the installed torch has the switch,
    none where it has not (the TorchScript exporter is then the only one)."""
    parameters = inspect.signature(torch.onnx.export).parameters
    return dict(dynamo=False) if 'dynamo' in parameters else {}


def export(model: nn.Module, shape, out: str) -> List[str]:
    """Export ``model`` (deploy form, eval) to ``out``; return output names."""
    names = output_names(model)
    dummy = torch.randn(
        1, 3, *shape, generator=torch.Generator().manual_seed(0))
    torch.onnx.export(
        TensorForward(exportable_copy(model)), (dummy, ),
        out,
        input_names=['input'],
        output_names=names,
        dynamic_axes={name: {
            0: 'batch'
        }
                      for name in ['input', *names]},
        opset_version=OPSET,
        **exporter_kwargs())
    return names


@torch.no_grad()
def verify(model: nn.Module, onnx_file: str, shape, batch: int = 2):
    """onnxruntime vs PyTorch on a seeded random input: (max abs, max rel)."""
    import onnxruntime as ort
    inputs = torch.randn(
        batch, 3, *shape, generator=torch.Generator().manual_seed(1))
    expected = output_comparison.tensor_outputs(model, inputs)
    session = ort.InferenceSession(
        onnx_file, providers=['CPUExecutionProvider'])
    outputs = session.run(None, {'input': inputs.numpy()})
    return output_comparison.compare_outputs(
        [torch.from_numpy(o) for o in outputs], expected)


def main(argv=None):
    args = parse_args(argv)
    out = args.out or osp.splitext(osp.basename(args.checkpoint))[0] + '.onnx'
    try:
        model = build_model(args.config, args.cfg_options)
        if args.backbone:
            model = model.backbone
        check_exportable(model)
        if args.backbone:
            load_backbone(model, args.checkpoint)
        else:
            load_strictly(model, args.checkpoint)
    except (ValueError, RuntimeError) as e:
        print(f'ERROR: {e}\nNothing exported.', file=sys.stderr)
        sys.exit(1)
    names = export(model, args.shape, out)
    forms = ', '.join(sorted(deploy_modes(model)))
    print(f'Exported {out}: opset {OPSET}, input (batch, 3, {args.shape[0]}, '
          f'{args.shape[1]}), outputs {names}, dynamic batch, {forms} deploy '
          'form.')
    if args.verify:
        max_abs, max_rel = verify(model, out, args.shape)
        print(f'onnxruntime (CPU) vs PyTorch, random input of batch 2: max '
              f'abs error {max_abs:.3g}, max relative error {max_rel:.3g} '
              f'(tolerance {args.tol:g})')
        if not max_rel <= args.tol:
            print('ERROR: onnxruntime does not match PyTorch', file=sys.stderr)
            sys.exit(1)


if __name__ == '__main__':
    main()
