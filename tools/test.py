"""Test (and evaluate) a PeLK checkpoint with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT]
        [--show] [--show-dir DIR] [--tta] [--cfg-options key=value ...]

One script for mmseg, mmdet and mmpretrain configs, dispatched by the
config's ``default_scope`` and following each library's own ``tools/test.py``:
``--out`` is a directory of predicted label maps (mmseg) or a pickle of the
predictions (mmdet, mmpretrain); ``--show`` / ``--show-dir`` switch on the
config's visualization hook; ``--tta`` wraps the model in the config's
``tta_model`` and tests with ``tta_pipeline``. The metrics are printed and
saved as json in the work dir.
"""
import argparse
import importlib

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.runner import Runner

import pelk_mm  # noqa: F401  (registers PeLK and the torch>=2.6 load fixes)
from launch_utils import (library_of, set_local_rank, set_work_dir,
                          setup_cpu_distributed)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a PeLK model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the evaluation metrics (json)')
    parser.add_argument(
        '--out',
        help='mmseg: dir for predicted label maps; mmdet / mmpretrain: '
        '.pkl file for the raw predictions')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir', help='directory where painted images will be saved')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta', action='store_true', help='test time augmentation')
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


def enable_visualization(cfg, args, library):
    """Switch on the visualization hook as each library's test.py does."""
    if 'visualization' not in cfg.default_hooks:
        raise ValueError('--show / --show-dir need a VisualizationHook in '
                         'default_hooks, e.g. visualization=dict('
                         "type='VisualizationHook')")
    hook = cfg.default_hooks.visualization
    hook.wait_time = args.wait_time
    if library == 'mmpretrain':
        hook.update(enable=True, show=args.show, out_dir=args.show_dir)
        return
    hook.draw = True
    hook.show = args.show
    if args.show_dir:
        if library == 'mmseg':
            cfg.visualizer.save_dir = args.show_dir
        else:
            hook.test_out_dir = args.show_dir


def merge_args(cfg, args):
    """Apply the command-line options to the config."""
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    library = library_of(cfg)

    if args.show or args.show_dir:
        enable_visualization(cfg, args, library)
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError('--tta needs tta_model and tta_pipeline in the '
                             'config')
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if args.out is not None and library == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    if library == 'mmpretrain':
        cfg.test_dataloader.setdefault('collate_fn',
                                       dict(type='default_collate'))
    return cfg


def add_dump_metric(runner, out, library):
    """mmdet / mmpretrain: also dump the raw predictions to a pickle."""
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl file for {library}, got {out}')
    if library == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=out))
    else:
        from mmpretrain.evaluation import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def main():
    args = parse_args()
    cfg = merge_args(Config.fromfile(args.config), args)
    library = library_of(cfg)
    if library == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    setup_cpu_distributed(cfg)

    if 'runner_type' in cfg:
        registry = importlib.import_module(f'{library}.registry')
        runner = registry.RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    if args.out is not None and library != 'mmseg':
        add_dump_metric(runner, args.out, library)
    runner.test()


if __name__ == '__main__':
    main()
