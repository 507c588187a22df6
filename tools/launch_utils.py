"""What tools/train.py and tools/test.py share: the common arguments, config
loading, the checkpoint checks, distributed runs on hosts without CUDA, the
Runner building, the checkpoints that let a killed training run resume exactly
and the clean end of a distributed run.

A tool is ``parser = make_parser(...)``, its own arguments,
``args = parse_args(parser)``, ``cfg = config_from_args(args)``, its own
changes to ``cfg``, ``check_checkpoints(cfg)`` and
``use_resumable_checkpoints(cfg)`` (training; tools/test.py checks its
CHECKPOINT argument), then
``build_runner(cfg)``, the run, and ``destroy_process_group()``.
"""
import argparse
import gc
import importlib
import os
import os.path as osp
import shlex
import sys
from typing import Iterator, List, Tuple

import torch
import torch.distributed as dist
from mmengine.config import Config, DictAction
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner

from pelk_mm.mm.builder import load_config

LIBRARIES = ('mmseg', 'mmdet', 'mmpretrain')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def make_parser(description: str, config_help: str,
                work_dir_help: str) -> argparse.ArgumentParser:
    """A parser with the arguments every tool takes: ``config``,
    ``--work-dir``, ``--cfg-options``, ``--launcher`` and ``--local-rank``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help=config_help)
    parser.add_argument('--work-dir', help=work_dir_help)
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
    return parser


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line; export ``--local-rank`` as ``LOCAL_RANK``
    unless the launcher already did."""
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def config_from_args(args: argparse.Namespace) -> Config:
    """The config of ``CONFIG`` (:func:`pelk_mm.mm.builder.load_config`) with
    ``--cfg-options``, ``--launcher`` and the work dir applied."""
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    set_work_dir(cfg, args.work_dir, args.config)
    return cfg


def library_of(cfg: Config) -> str:
    """The OpenMMLab library a config is written for, by its default_scope."""
    scope = cfg.get('default_scope')
    if scope not in LIBRARIES:
        raise ValueError(f'default_scope of the config must be one of '
                         f'{LIBRARIES}, got {scope!r}')
    return scope


def set_work_dir(cfg: Config, work_dir, config_path: str) -> None:
    """Priority: CLI > the config's own work_dir > work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def exit_with_error(message: str) -> None:
    """Print ``<tool>: error: message`` to stderr and exit with status 2, as
    argparse does for a bad argument (no traceback)."""
    print(f'{osp.basename(sys.argv[0])}: error: {message}', file=sys.stderr)
    sys.exit(2)


def is_missing_local_file(path) -> bool:
    """True for a local path (no ``scheme://``: not http(s), s3 or mmengine's
    ``open-mmlab://``-style schemes) that does not exist."""
    return (isinstance(path, str) and '://' not in path
            and not osp.exists(path))


def _pretrained_init_cfgs(node, key: str) -> Iterator[Tuple[str, dict]]:
    """``(dotted key, init_cfg)`` for every ``Pretrained`` init_cfg with a
    checkpoint under ``node`` (named ``key``): ``*.init_cfg`` dicts and the
    items ``*.init_cfg.{i}`` of init_cfg lists."""
    if isinstance(node, dict):
        init_cfg = node.get('init_cfg')
        if isinstance(init_cfg, dict):
            entries = [('init_cfg', init_cfg)]
        elif isinstance(init_cfg, (list, tuple)):
            entries = [(f'init_cfg.{i}', c) for i, c in enumerate(init_cfg)]
        else:
            entries = []
        for sub_key, entry in entries:
            if (isinstance(entry, dict) and entry.get('type') == 'Pretrained'
                    and entry.get('checkpoint') is not None):
                yield f'{key}.{sub_key}', entry
        for name, value in node.items():
            if name != 'init_cfg':
                yield from _pretrained_init_cfgs(value, f'{key}.{name}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_init_cfgs(value, f'{key}.{i}')


def _ways_forward(cfg: Config, key: str,
                  checkpoint: str) -> List[Tuple[str, List[str]]]:
    """``(what to do, commands)`` about the missing Pretrained checkpoint of
    the init_cfg ``key``."""
    ways = []
    backbone = cfg.model.get('backbone') or {}
    # configs/<stem>_backbone.pth comes from configs/<stem>.py + the converter
    stem = osp.basename(checkpoint)[:-len('_backbone.pth')]
    cls_config = osp.join(ROOT, 'configs', f'{stem}.py')
    if (key == 'model.backbone.init_cfg' and backbone.get('type') == 'PeLK'
            and checkpoint.endswith('_backbone.pth')
            and osp.isfile(cls_config)):
        arch = backbone.get('arch', 'tiny')
        target = (['--arch', arch] if isinstance(arch, str) else
                  ['--config', _shown(cfg.filename)])
        ways.append(('train the ImageNet backbone and convert it', [
            shlex.join([
                'python',
                _shown(osp.join(ROOT, 'tools', 'train.py')),
                _shown(cls_config)
            ]),
            shlex.join([
                'python',
                _shown(
                    osp.join(ROOT, 'tools', 'model_converters',
                             'cls2backbone.py')), 'CLS_CKPT', checkpoint,
                *target
            ]).replace('CLS_CKPT',
                       f'"$(cat work_dirs/{stem}/last_checkpoint)"')
        ]))
    if key.endswith('.init_cfg'):
        ways.append(('train without these pretrained weights (from scratch)', [
            shlex.join(['python', *sys.argv, '--cfg-options', f'{key}=None'])
        ]))
    return ways


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it is under it."""
    relative = osp.relpath(path)
    return path if relative.startswith('..') else relative


def check_checkpoints(cfg: Config) -> None:
    """Stop with :func:`exit_with_error` if ``load_from`` or the checkpoint of
    a ``Pretrained`` init_cfg in ``cfg.model`` is a local path that does not
    exist, saying how to go on: for an init_cfg, with the exact option that
    trains without it, and for a PeLK backbone ``<stem>_backbone.pth`` next to
    a ``configs/<stem>.py``, with the commands that train and convert it.

    Meant to run before anything is built, so that a training run stops at
    once instead of after building the datasets and the model.
    """
    problems = []
    for key, pretrained in _pretrained_init_cfgs(cfg.model, 'model'):
        checkpoint = pretrained['checkpoint']
        if not is_missing_local_file(checkpoint):
            continue
        ways = _ways_forward(cfg, key, checkpoint)
        lines = [
            f'{key}.checkpoint {checkpoint!r} does not exist.' +
            (' Either' if len(ways) > 1 else '')
        ]
        for i, (what, commands) in enumerate(ways, 1):
            lines.append(f'  {"or " if i > 1 else ""}({i}) {what}:')
            lines.extend(f'      {command}' for command in commands)
        problems.append('\n'.join(lines))
    if is_missing_local_file(cfg.get('load_from')):
        problems.append(f'load_from {cfg.load_from!r} (from the config, '
                        '--cfg-options or --resume) does not exist.')
    if problems:
        exit_with_error('\n'.join(problems))


def _sync_bn_to_bn(node):
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work on a host without CUDA.

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and
    wraps the model in DDP with ``device_ids=[LOCAL_RANK]``; both fail without
    CUDA. Here the process group is initialised with gloo (mmengine then skips
    its own init), DDP gets ``device_ids=None`` and SyncBN (CUDA only) becomes
    BN. Does nothing when CUDA is available or the run is not distributed.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('model_wrapper_cfg', dict(type='MMDistributedDataParallel'))
    cfg.model_wrapper_cfg.setdefault('device_ids', None)
    cfg.model_wrapper_cfg.setdefault('broadcast_buffers', False)
    cfg.model_wrapper_cfg.setdefault('find_unused_parameters',
                                     cfg.get('find_unused_parameters', False))
    _sync_bn_to_bn(cfg.model)


def build_runner(cfg: Config) -> Runner:
    """Build the config's runner as the config's library's own tools do
    (``runner_type`` from its registry, else mmengine's ``Runner``), after
    the mmdet dynamo setting and :func:`setup_cpu_distributed`."""
    library = library_of(cfg)
    if library == 'mmdet':
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    setup_cpu_distributed(cfg)
    if 'runner_type' in cfg:
        registry = importlib.import_module(f'{library}.registry')
        return registry.RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def use_resumable_checkpoints(cfg: Config) -> None:
    """Make a training run killed at any moment resume exactly: mmengine's
    ``CheckpointHook`` in ``default_hooks.checkpoint`` becomes
    :class:`~pelk_mm.engine.ResumableCheckpointHook` (same arguments:
    atomic writes, random states saved and restored). See
    docs/fault_tolerance.md."""
    checkpoint = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint is not None and checkpoint.get('type') in (
            'CheckpointHook', 'mmengine.CheckpointHook', CheckpointHook):
        checkpoint['type'] = 'ResumableCheckpointHook'


def destroy_process_group() -> None:
    """End a distributed run cleanly: destroy the default process group, if
    there is one, while the interpreter is still fully alive.

    A gloo group left to the interpreter's shutdown is torn down while its
    C++ worker threads may still hold work with Python references; that can
    end a run whose work is done with ``terminate called without an active
    exception`` (SIGABRT) and a failed torchrun (pytorch/pytorch#190489).
    A barrier first, so that no rank tears its group down while another
    still uses it; then the finished Runner's reference cycles are collected
    (its DDP wrapper holds the group: torch 2.1's ``destroy_process_group``
    only drops the registry's reference, newer ones also shut the backend
    down).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        gc.collect()
        dist.destroy_process_group()
