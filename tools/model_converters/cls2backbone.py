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
checks them (:func:`pelk_mm.models.checkpoint_meta.check_state_dict`): only
the output norms may be missing (``norm0``-``norm2``, which a classifier does
not have; they start from their default initialisation) and unexpected keys
(the classifier head, SLaK mask buffers, ...) are dropped; both are listed. A
shape mismatch, a missing block key, or blocks / stages the target does not
have (a checkpoint of another arch or kernel size) are refused with both
archs named: nothing is written and the exit status is 1.

Checkpoints are read with mmengine's ``CheckpointLoader`` (local paths and
URLs), with torch's ``weights_only=True`` unpickler; one that needs arbitrary
unpickling (e.g. an ``argparse.Namespace`` saved by a training
script) is refused unless ``--trust-pickle`` says it comes from a trusted
source.
"""
import argparse
import pickle
import sys
from collections import OrderedDict

import torch
from mmengine.runner import CheckpointLoader

import pelk_mm  # noqa: F401  (registers the mmengine checkpoint classes)
from pelk_mm import PeLK
from pelk_mm.engine.compat import (TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT,
                                   load_weights_only)
from pelk_mm.mm.builder import build_model, load_config
from pelk_mm.models.checkpoint_loading import backbone_state_dict
from pelk_mm.models.checkpoint_meta import (add_arch_meta, check_state_dict,
                                            find_arch_record)

STATE_DICT_KEYS = ('state_dict', 'model', 'model_ema', 'module')


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


def extract_state_dict(checkpoint) -> 'OrderedDict[str, torch.Tensor]':
    """The model weights in a checkpoint of any of the supported layouts.

    The state dict's per-module metadata (where the arch record is) comes
    along.
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f'expected a dict checkpoint, got '
                         f'{type(checkpoint).__name__}')
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    tensors = OrderedDict(
        (k, v) for k, v in checkpoint.items() if torch.is_tensor(v))
    if not tensors:
        raise ValueError(f'no tensors found; top-level keys: '
                         f'{sorted(checkpoint)[:10]}')
    tensors._metadata = getattr(checkpoint, '_metadata', OrderedDict())
    return tensors


def target_backbone(arch=None, config=None) -> PeLK:
    """The PeLK that the weights must fit: a named arch, or a config's."""
    if config is None:
        return PeLK(arch=arch, out_indices=(0, 1, 2, 3))
    backbone_type = load_config(config).model.backbone.get('type')
    if backbone_type != 'PeLK':
        raise ValueError(f'model.backbone of {config} is '
                         f'{backbone_type!r}, not PeLK')
    return build_model(config, part='model.backbone')


def load_safely(src: str):
    """mmengine's loader (local, http(s), open-mmlab://...), weights only.

    On torch < 2.6, whose ``torch.load`` (so mmengine's loaders) is not
    weights-only by default, local files are read with an explicit
    ``weights_only=True`` (torch < 2.5 cannot allow-list mmengine's own
    globals, so its training checkpoints need ``--trust-pickle`` there),
    http(s) URLs with pelk_mm's weights-only loader, and other schemes are
    refused.
    """
    try:
        remote = src.startswith(('http://', 'https://'))
        if TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT or remote:
            return CheckpointLoader.load_checkpoint(src, map_location='cpu')
        if '://' in src:
            raise ValueError(
                f'{src}: on torch {torch.__version__} mmengine loads this '
                'scheme with the unrestricted unpickler (torch >= 2.6 loads '
                'it weights-only); download the file, or rerun with '
                '--trust-pickle if it comes from a trusted source.')
        return load_weights_only(src, map_location='cpu')
    except pickle.UnpicklingError as e:
        raise ValueError(
            f'{src} cannot be read with weights_only=True ({e}). If the file '
            'comes from a trusted source, rerun with --trust-pickle.') from e


def convert(src: str, dst: str, model: PeLK, trust_pickle: bool = False):
    """Convert ``src`` to ``dst`` for ``model``; returns (missing, unexpected).

    Raises:
        ValueError: the checkpoint does not fit ``model`` (shape mismatch or
            no backbone key at all), or cannot be read safely.
    """
    if trust_pickle:
        checkpoint = torch.load(src, map_location='cpu', weights_only=False)
    else:
        checkpoint = load_safely(src)
    whole = extract_state_dict(checkpoint)
    state_dict, prefix = backbone_state_dict(
        dict(state_dict=whole, meta=checkpoint.get('meta')), name=src)
    others = [k for k in whole if not k.startswith(prefix)]
    own = model.state_dict()
    if not any(k in own for k in state_dict):
        raise ValueError(f'{src} has no PeLK backbone key at all (first keys: '
                         f'{list(state_dict)[:5]})')
    try:
        missing = check_state_dict(model, state_dict,
                                   find_arch_record(state_dict, ''))
    except ValueError as e:
        raise ValueError(f'{src} does not fit the target PeLK.\n{e}') from e
    kept = [k for k in state_dict if k in own]
    unexpected = others + [k for k in state_dict if k not in own]
    converted = OrderedDict((f'backbone.{k}', state_dict[k]) for k in kept)
    converted._metadata = OrderedDict(
        ('backbone' + (f'.{k}' if k else ''), v)
        for k, v in own._metadata.items())  # the arch record included
    torch.save(
        add_arch_meta(
            dict(
                state_dict=converted,
                meta=dict(
                    converted_from=src,
                    kernel_sizes=model.kernel_sizes,
                    channels=model.channels)),
            model,
            prefix='backbone.'), dst)
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
