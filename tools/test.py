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
from launch_utils import (build_runner, config_from_args,
                          destroy_process_group, exit_with_error,
                          is_missing_local_file, library_of, make_parser,
                          parse_args)
from mmengine.config import ConfigDict

import pelk_mm  # noqa: F401  (registers PeLK and the torch>=2.6 load fixes)
from pelk_mm.checkpoint import use_safe_url_loader


def get_args():
    parser = make_parser('Test (and evaluate) a PeLK model',
                         'test config file path',
                         'the dir to save the evaluation metrics (json)')
    parser.add_argument('checkpoint', help='checkpoint file')
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
    args = parse_args(parser)
    if is_missing_local_file(args.checkpoint):
        exit_with_error(f'checkpoint {args.checkpoint!r} does not exist')
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
    """Apply the test-only command-line options to the config."""
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
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    else:
        from mmpretrain.evaluation import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def main():
    args = get_args()
    use_safe_url_loader()  # checkpoints by URL: hash-checked, weights only
    cfg = merge_args(config_from_args(args), args)
    library = library_of(cfg)
    runner = build_runner(cfg)
    if args.out is not None and library != 'mmseg':
        add_dump_metric(runner, args.out, library)
    runner.test()
    del runner
    destroy_process_group()


if __name__ == '__main__':
    main()
