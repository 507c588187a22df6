"""Train a PeLK config with mmengine's Runner, whatever library it belongs to.

    python tools/train.py configs/upernet_pelk_t_ade20k.py [--work-dir DIR]
        [--resume [CKPT]] [--amp] [--cfg-options key=value ...]

One script for mmseg, mmdet and mmpretrain configs: the config's
``default_scope`` picks the library, whose registries build everything, exactly
as that library's own ``tools/train.py`` (this file follows their structure and
accepts the union of their common options). ``--resume`` without a path resumes
from the latest checkpoint in the work dir; checkpoints are written atomically
and carry the random states, so a run killed at any moment resumes to the
same weights as an uninterrupted one (docs/fault_tolerance.md). Importing
``pelk_mm`` registers the PeLK modules and the checkpoint-loading fixes for
recent torch.
"""
import logging
from copy import deepcopy

from launch_utils import (build_runner, check_checkpoints, config_from_args,
                          destroy_process_group, library_of, make_parser,
                          parse_args, use_resumable_checkpoints)
from mmengine.config import ConfigDict
from mmengine.logging import print_log

import pelk_mm  # noqa: F401  (registers PeLK and the torch>=2.6 load fixes)
from pelk_mm.checkpoint import use_safe_url_loader


def get_args():
    parser = make_parser('Train a PeLK model', 'train config file path',
                         'the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint, or without a path from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr by the actual / the config\'s base batch size')
    return parse_args(parser)


def merge_args(cfg, args):
    """Apply the train-only command-line options to the config."""
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print_log(
                'AMP training is already enabled in the config.',
                logger='current',
                level=logging.WARNING)
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.'
                             'base_batch_size in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if library_of(cfg) == 'mmpretrain':
        # as mmpretrain's tools/train.py: batched collate, pinned memory
        for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if cfg.get(field) is not None:
                loader = ConfigDict(
                    pin_memory=True,
                    persistent_workers=cfg[field].get('num_workers', 0) > 0,
                    collate_fn=dict(type='default_collate'))
                loader.update(deepcopy(cfg[field]))
                cfg[field] = loader
    return cfg


def main():
    args = get_args()
    use_safe_url_loader()  # checkpoints by URL: hash-checked, weights only
    cfg = merge_args(config_from_args(args), args)
    check_checkpoints(cfg)
    use_resumable_checkpoints(cfg)
    build_runner(cfg).train()
    destroy_process_group()


if __name__ == '__main__':
    main()
