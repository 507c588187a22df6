"""Train a PeLK config with mmengine's Runner, whatever library it belongs to.

    python tools/train.py configs/upernet_pelk_t_ade20k.py [--work-dir DIR]
        [--resume [CKPT]] [--amp] [--cfg-options key=value ...]

One script for mmseg, mmdet and mmpretrain configs: the config's
``default_scope`` picks the library, whose registries build everything, exactly
as that library's own ``tools/train.py`` (this file follows their structure and
accepts the union of their common options). ``--resume`` without a path resumes
from the latest checkpoint in the work dir. Importing ``pelk_mm`` registers the
PeLK modules and the checkpoint-loading fixes for recent torch.
"""
import argparse
import importlib
import logging
from copy import deepcopy

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

import pelk_mm  # noqa: F401  (registers PeLK and the torch>=2.6 load fixes)
from launch_utils import (library_of, set_local_rank, set_work_dir,
                          setup_cpu_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a PeLK model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
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
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value (lists as '
        'key="[a,b]"), merged into the config')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    set_local_rank(args.local_rank)
    return args


def merge_args(cfg, args):
    """Apply the command-line options to the config."""
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)

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
    args = parse_args()
    cfg = merge_args(Config.fromfile(args.config), args)
    if library_of(cfg) == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    setup_cpu_distributed(cfg)

    if 'runner_type' in cfg:
        registry = importlib.import_module(f'{library_of(cfg)}.registry')
        runner = registry.RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
