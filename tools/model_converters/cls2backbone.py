"""Turn a PeLK classification checkpoint into backbone weights for downstream.

    python tools/model_converters/cls2backbone.py SRC DST --arch tiny
    python tools/model_converters/cls2backbone.py SRC DST \
        --config configs/upernet_pelk_t_ade20k.py

SRC may be

- an mmpretrain ``ImageClassifier`` checkpoint (``{'state_dict': {'backbone.*',
  'head.*', ...}, ...}``), as ``configs/pelk_*_in1k.py`` save;
- a plain ``{'model': state_dict}`` (or ``{'model_ema': ...}`` /
  ``{'state_dict': ...}`` / a bare state dict) as ConvNeXt / SLaK style
  training scripts save, with the backbone's own key names, optionally
  behind ``module.`` (DDP) and / or ``backbone.``.

DST is ``{'state_dict': {'backbone.<key>': tensor}, 'meta': {...}}``: what the
downstream configs load with ``init_cfg=dict(type='Pretrained',
checkpoint=DST, prefix='backbone.')`` (and what mmpretrain's ``load_from``
understands). Its sparsity survives as exact zeros, which
``DynamicSparsityHook(mode='fixed')`` turns into the fine-tuning masks. It
records the target's architecture (:meth:`PeLK.arch_record`) in the state
dict's metadata and in ``meta['pelk_arch'] = {'backbone': record}``.

The keys are checked against a PeLK of ``--arch`` built as the downstream
configs build it (``out_indices=(0, 1, 2, 3)``), or against the backbone of a
downstream ``--config`` (any arch dict), as strictly as loading into PeLK
checks them (:func:`pelk_mm.checkpoint.to_backbone_checkpoint`): only the
output norms may be missing (``norm0``-``norm2``, which a classifier does not
have) and unexpected keys (the classifier head, SLaK mask buffers, ...) are
dropped; both are listed. A shape mismatch, a missing block key, or blocks /
stages the target does not have (a checkpoint of another arch or kernel size)
are refused with both archs named: nothing is written and the exit status is
1.

SRC is read with :func:`pelk_mm.checkpoint.read_checkpoint` (local paths,
hash-checked http(s) URLs; weights only, mmengine's own checkpoint objects
allowed). One that pickles other objects (e.g. an ``argparse.Namespace`` saved
by a training script) is refused unless ``--trust-pickle`` says it comes from
a trusted source.
"""
import argparse
import pickle
import sys

import torch

from pelk_mm import PeLK
from pelk_mm.checkpoint import read_checkpoint, to_backbone_checkpoint
from pelk_mm.mm.builder import build_model, load_config


def parse_args():
    parser = argparse.ArgumentParser(
        description='Classification checkpoint -> PeLK backbone weights')
    parser.add_argument('src', help='classification checkpoint')
    parser.add_argument('dst', help='output backbone checkpoint')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        '--arch',
        help=f'PeLK arch the checkpoint must match: one of '
        f'{sorted(PeLK.arch_settings)}')
    target.add_argument(
        '--config',
        help='downstream config whose model.backbone the checkpoint must '
        'match')
    parser.add_argument(
        '--trust-pickle',
        action='store_true',
        help='load SRC with weights_only=False (only for trusted files)')
    return parser.parse_args()


def target_backbone(arch=None, config=None) -> PeLK:
    """The PeLK that the weights must fit: a named arch, or a config's."""
    if config is None:
        return PeLK(arch=arch, out_indices=(0, 1, 2, 3))
    backbone_type = load_config(config).model.backbone.get('type')
    if backbone_type != 'PeLK':
        raise ValueError(f'model.backbone of {config} is '
                         f'{backbone_type!r}, not PeLK')
    return build_model(config, part='model.backbone')


def convert(src: str, dst: str, model: PeLK, trust_pickle: bool = False):
    """Convert ``src`` to ``dst`` for ``model``; returns (missing, unexpected).

    Raises:
        ValueError: the checkpoint does not fit ``model`` (shape mismatch or
            no backbone key at all), or cannot be read weights-only.
    """
    try:
        checkpoint = read_checkpoint(src, trust_pickle=trust_pickle)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f'{src} cannot be read with weights_only=True ({e}). If the file '
            'comes from a trusted source, rerun with --trust-pickle.') from e
    converted, missing, unexpected = to_backbone_checkpoint(
        checkpoint, model, src)
    torch.save(converted, dst)
    return missing, unexpected


def main():
    args = parse_args()
    try:
        model = target_backbone(args.arch, args.config)
        missing, unexpected = convert(args.src, args.dst, model,
                                      args.trust_pickle)
    except ValueError as e:
        print(f'ERROR: {e}\nNothing written.', file=sys.stderr)
        sys.exit(1)
    print(f'Wrote {args.dst} (PeLK {args.arch or args.config}, load it with '
          "init_cfg=dict(type='Pretrained', checkpoint=..., "
          "prefix='backbone.'))")
    print(f'Missing keys ({len(missing)}; they keep their default '
          f'initialisation): {missing or "none"}')
    print(f'Unexpected keys ({len(unexpected)}; dropped): '
          f'{unexpected or "none"}')


if __name__ == '__main__':
    main()
