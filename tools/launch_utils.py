"""What tools/train.py and tools/test.py share: the library a config belongs to,
and distributed runs on hosts without CUDA."""
import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.config import Config

LIBRARIES = ('mmseg', 'mmdet', 'mmpretrain')


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

    mmengine 0.10.7's pytorch launcher calls ``torch.cuda.set_device`` and wraps
    the model in DDP with ``device_ids=[LOCAL_RANK]``; both fail without CUDA.
    Here the process group is initialised with gloo (mmengine then skips its own
    init), DDP gets ``device_ids=None`` and SyncBN (CUDA only) becomes BN. Does
    nothing when CUDA is available or the run is not distributed.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('model_wrapper_cfg', dict(type='MMDistributedDataParallel'))
    cfg.model_wrapper_cfg.setdefault('device_ids', None)
    cfg.model_wrapper_cfg.setdefault('broadcast_buffers', False)
    cfg.model_wrapper_cfg.setdefault(
        'find_unused_parameters', cfg.get('find_unused_parameters', False))
    _sync_bn_to_bn(cfg.model)


def set_local_rank(local_rank: int) -> None:
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)
