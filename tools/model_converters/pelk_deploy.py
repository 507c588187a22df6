"""Fold a PeLK checkpoint into its deploy form.

    python tools/model_converters/pelk_deploy.py CONFIG CKPT OUT
        [--shape H W] [--tol 1e-4] [--cfg-options key=value ...]

CONFIG is the config the checkpoint was trained with: a segmentor, detector
or classifier (or a bare ``type='PeLK'`` model). The tool builds that model,
loads CKPT strictly (every key, every shape), folds every PeLK backbone in it
(:meth:`pelk_mm.PeLK.switch_to_deploy`: the positional-embedding term in the
bias; by default the structured form, which keeps the compact weights and
exports to standard ONNX box-sum operators; with ``--cfg-options
model.backbone.deploy_mode=dense`` dense ``K x K`` depthwise kernels, for
runtimes that need a single conv), and runs one seeded random input
``(1, 3, H, W)`` through the model before and after: the tensor-mode forward
of a segmentor (logits) or classifier (scores), a bare backbone's feature maps,
a detector's backbone + neck features. OUT is written only if every output
matches within ``--tol``: max abs error / max abs value of the output,
per output (default 1e-4); otherwise nothing is written and the exit
status is 1.

OUT holds ``state_dict`` (the whole model, deployed) and ``meta``: CKPT's
meta plus ``deploy=True``, ``deploy_mode``, ``deployed_from``, the measured
errors and the arch record of the deployed backbone (``meta['pelk_arch']``,
with its ``deploy_mode``: a checkpoint of one form refuses to load into the
other). Optimizer, scheduler, message-hub and sparsity state are not carried
over (the deployed weights keep the zeros of sparse weights). Load it with
the same config and ``--cfg-options model.backbone.deploy=True``
(``model.deploy=True`` for a bare PeLK config; plus
``model.backbone.deploy_mode=dense`` for the dense form), e.g.
``tools/test.py``, ``tools/deployment/pytorch2onnx.py``.
"""
import argparse
import os.path as osp
import sys

import torch
from mmengine.config import DictAction

import pelk_mm  # noqa: F401  (registers PeLK)
from pelk_mm.checkpoint import add_arch_meta, load_strictly
from pelk_mm.mm.builder import build_model
from pelk_mm.models.deploy import (deploy_modes, peripheral_convs,
                                   switch_to_deploy)

sys.path.insert(
    0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'deployment'))
import output_comparison  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Fold a PeLK checkpoint into its deploy form')
    parser.add_argument('config', help='the config CKPT was trained with')
    parser.add_argument('checkpoint', help='checkpoint (path or URL)')
    parser.add_argument('out', help='output checkpoint')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=[224, 224],
        metavar=('H', 'W'),
        help='size of the random check input (default 224 224)')
    parser.add_argument(
        '--tol',
        type=float,
        default=1e-4,
        help='max error relative to each output\'s max abs value '
        '(default 1e-4)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value')
    return parser.parse_args(argv)


@torch.no_grad()
def deploy(model: torch.nn.Module, shape, tol: float):
    """Fold ``model`` in place; return (max abs error, max rel error).

    Raises:
        ValueError: the deployed outputs differ by more than ``tol``.
    """
    inputs = torch.randn(
        1, 3, *shape, generator=torch.Generator().manual_seed(0))
    expected = output_comparison.tensor_outputs(model, inputs)
    switch_to_deploy(model)
    max_abs, max_rel = output_comparison.compare_outputs(
        output_comparison.tensor_outputs(model, inputs), expected)
    if not max_rel <= tol:
        raise ValueError(f'deployed outputs differ: max abs error '
                         f'{max_abs:.3g}, relative {max_rel:.3g} > --tol '
                         f'{tol:g}')
    return max_abs, max_rel


def deployed_checkpoint(model, source: dict, source_name: str, max_abs,
                        max_rel, shape) -> dict:
    """``state_dict`` + ``meta`` of the deployed model."""
    meta = dict(source.get('meta') or {})
    meta.update(
        deploy=True,
        deploy_mode=', '.join(sorted(deploy_modes(model))),
        deployed_from=source_name,
        deploy_check=dict(
            input_shape=[1, 3, *shape],
            max_abs_error=max_abs,
            max_rel_error=max_rel))
    return add_arch_meta(dict(state_dict=model.state_dict(), meta=meta), model)


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args.config, args.cfg_options)
    try:
        if not peripheral_convs(model):
            raise ValueError('the model has no PeripheralConv2d to fold: is '
                             'the config already deploy=True, or not a PeLK '
                             'model?')
        source = load_strictly(model, args.checkpoint)
        max_abs, max_rel = deploy(model, args.shape, args.tol)
    except (ValueError, RuntimeError) as e:
        print(f'ERROR: {e}\nNothing written.', file=sys.stderr)
        sys.exit(1)
    torch.save(
        deployed_checkpoint(model, source, args.checkpoint, max_abs, max_rel,
                            args.shape), args.out)
    print(f'Outputs match on a random (1, 3, {args.shape[0]}, '
          f'{args.shape[1]}) input: max abs error {max_abs:.3g}, relative '
          f'{max_rel:.3g} (tolerance {args.tol:g}).')
    mode = ', '.join(sorted(deploy_modes(model)))
    dense = ' model.backbone.deploy_mode=dense' if mode == 'dense' else ''
    print(f'Wrote {args.out} ({mode} deploy form); load it with '
          f'--cfg-options model.backbone.deploy=True{dense} '
          '(model.deploy=... for a bare PeLK).')


if __name__ == '__main__':
    main()
