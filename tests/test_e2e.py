"""End to end, on CPU, through the real tools as subprocesses.

The shipped configs are run as they are, on the generated demo data, with
small-input overrides (``--cfg-options`` or a two-line config that inherits
the shipped one): UperNet-PeLK-T train + test (mIoU), resume, a 2-process
``tools/dist_train.sh`` run, Cascade Mask R-CNN-PeLK-T train + test (bbox and
segm AP), the ImageNet-style classifier with dynamic sparsity, the converter
round trip into a downstream backbone, and mmseg's own ``tools/train.py`` on a
config that only adds ``custom_imports`` and ``type='PeLK'``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import mmseg
import pytest
import torch
from mmengine.runner.checkpoint import _load_checkpoint

from pelk_mm import PeLK
from pelk_mm.demo import make_ade20k_demo, make_coco_demo, make_imagenet_demo
from helpers import ROOT, load_tool

pytestmark = pytest.mark.slow

PY = sys.executable
DEMO_CFG = osp.join(ROOT, 'configs', 'demo', 'upernet_pelk_demo_ade20k.py')
SEG_T_CFG = osp.join(ROOT, 'configs', 'upernet_pelk_t_ade20k.py')
LOADER = ['num_workers=0', 'persistent_workers=False']


def run(*args, env=None, timeout=300):
    """Run a command in the repository root; fail with its output tail."""
    proc = subprocess.run(
        list(args),
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def loader_options(*loaders):
    return [f'{loader}.{kv}' for loader in loaders for kv in LOADER]


def metrics(work_dir):
    """The metrics tools/test.py (mmengine's LoggerHook) saved as json."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    assert logs, f'no metrics json in {work_dir}'
    with open(logs[-1]) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    return dict(
        ade=make_ade20k_demo(str(root / 'ade'), 8, 2, size=(64, 64)),
        coco=make_coco_demo(str(root / 'coco'), 4, 2, size=(128, 96)),
        imagenet=make_imagenet_demo(str(root / 'imagenet'), 2, 1, size=64))


def demo_options(ade, max_iters):
    """The demo config (reduced PeLK) on the tiny ADE20K-layout set."""
    return [
        f'train_dataloader.dataset.data_root={ade}',
        f'test_dataloader.dataset.data_root={ade}',
        'train_dataloader.batch_size=2',
        *loader_options('train_dataloader', 'test_dataloader'),
        f'train_cfg.max_iters={max_iters}', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.interval=2'
    ]


def test_upernet_pelk_t_train_and_test(data, tmp_path):
    """The headline config itself (PeLK-T, 51x51 kernels) at 64x64."""
    ade = data['ade']
    options = [
        'model.backbone.init_cfg=None', 'model.data_preprocessor.size=(64,64)',
        'model.test_cfg.crop_size=(64,64)', 'model.test_cfg.stride=(43,43)',
        'train_dataloader.dataset.pipeline.2.scale=(64,64)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'test_dataloader.dataset.pipeline.1.scale=(64,64)',
        f'train_dataloader.dataset.data_root={ade}',
        f'test_dataloader.dataset.data_root={ade}',
        *loader_options('train_dataloader', 'test_dataloader'),
        'val_dataloader=None', 'val_cfg=None', 'val_evaluator=None',
        'train_cfg.max_iters=2', 'default_hooks.logger.interval=1',
        'default_hooks.checkpoint.save_optimizer=False'
    ]
    train_dir, test_dir = str(tmp_path / 'train'), str(tmp_path / 'test')
    log = run(PY, 'tools/train.py', SEG_T_CFG, '--work-dir', train_dir,
              '--cfg-options', *options)
    assert 'Iter(train) [2/2]' in log
    # the stage-wise decay groups were built by the PeLK constructor
    assert 'layer_7_decay: lr_scale=1' in log

    run(PY, 'tools/test.py', SEG_T_CFG, osp.join(train_dir, 'iter_2.pth'),
        '--work-dir', test_dir, '--cfg-options', *options)
    result = metrics(test_dir)
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(result)
    assert 0 <= result['mIoU'] <= 100 and 0 <= result['aAcc'] <= 100


def test_resume(data, tmp_path):
    """Train 2 iterations, then --resume to 4."""
    ade, work_dir = data['ade'], str(tmp_path / 'train')
    run(PY, 'tools/train.py', DEMO_CFG, '--work-dir', work_dir,
        '--cfg-options', *demo_options(ade, 2))
    first = _load_checkpoint(osp.join(work_dir, 'iter_2.pth'))
    assert first['meta']['iter'] == 2
    assert 'sparsity' in first  # the hook's masks travel with the checkpoint
    # PeLKArchMetaHook: the backbone's arch in meta (loading reads the copy in
    # the state dict's metadata)
    record = first['meta']['pelk_arch']['backbone']
    assert record['kernel_sizes'] == [31, 29, 27, 13] and not record['deploy']

    log = run(PY, 'tools/train.py', DEMO_CFG, '--work-dir', work_dir,
              '--resume', '--cfg-options', *demo_options(ade, 4))
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Iter(train) [3/4]' in log and 'Iter(train) [1/4]' not in log
    second = _load_checkpoint(osp.join(work_dir, 'iter_4.pth'))
    assert second['meta']['iter'] == 4
    # training went on from the resumed weights and optimizer state
    name = 'backbone.stages.0.0.peripheral_conv.weight'
    assert not torch.equal(first['state_dict'][name],
                           second['state_dict'][name])
    assert second['optimizer']['state']


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def test_dist_train_and_test_two_cpu_processes(data, tmp_path):
    work_dir, test_dir = str(tmp_path / 'dist'), str(tmp_path / 'test')
    env = dict(PYTHON=PY, PORT=_free_port(), OMP_NUM_THREADS='1')
    options = demo_options(data['ade'], 2)
    log = run(
        'bash',
        'tools/dist_train.sh',
        DEMO_CFG,
        '2',
        '--work-dir',
        work_dir,
        '--cfg-options',
        *options,
        env=env)
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert 'Iter(train) [2/2]' in log
    checkpoint = osp.join(work_dir, 'iter_2.pth')
    assert _load_checkpoint(checkpoint)['meta']['iter'] == 2

    log = run(
        'bash',
        'tools/dist_test.sh',
        DEMO_CFG,
        checkpoint,
        '2',
        '--work-dir',
        test_dir,
        '--cfg-options',
        *options,
        env=env)
    assert 'GPU number: 2' in log
    assert 0 <= metrics(test_dir)['mIoU'] <= 100


DET_CONFIG = """
_base_ = ['{root}/configs/cascade_mask_rcnn_pelk_t_fpn_3x_coco.py']
data_root = '{data}/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor'))
]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(
    batch_size=2, **loader,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1, **loader,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(
    ann_file=data_root + 'annotations/instances_val2017.json')
val_evaluator = test_evaluator
model = dict(backbone=dict(init_cfg=None))
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(save_optimizer=False))
"""


def test_cascade_mask_rcnn_pelk_t_train_and_test(data, tmp_path):
    cfg = tmp_path / 'cascade_small.py'
    cfg.write_text(DET_CONFIG.format(root=ROOT, data=data['coco']))
    # Fewer proposals / sampled RoIs than the 3x config, for CPU speed; no
    # score threshold, so that the barely trained model has detections to
    # evaluate.
    options = [
        'model.train_cfg.rpn_proposal.max_per_img=16',
        *[f'model.train_cfg.rcnn.{i}.sampler.num=16'
          for i in range(3)], 'model.test_cfg.rpn.max_per_img=16',
        'model.test_cfg.rcnn.score_thr=0.0',
        'model.test_cfg.rcnn.max_per_img=20'
    ]
    train_dir, test_dir = str(tmp_path / 'train'), str(tmp_path / 'test')
    log = run(PY, 'tools/train.py', str(cfg), '--work-dir', train_dir,
              '--cfg-options', *options)
    assert 'Epoch(train) [1][2/2]' in log
    run(PY, 'tools/test.py', str(cfg), osp.join(train_dir, 'epoch_1.pth'),
        '--work-dir', test_dir, '--cfg-options', *options)
    result = metrics(test_dir)
    for metric in ('bbox', 'segm'):
        assert 0 <= result[f'coco/{metric}_mAP'] <= 1
        assert 0 <= result[f'coco/{metric}_mAP_50'] <= 1


CLS_CONFIG = """
_base_ = ['{root}/configs/pelk_t_in1k.py']
data_root = '{data}'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=64, edge='short'),
    dict(type='CenterCrop', crop_size=64),
    dict(type='PackInputs')
]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(
    batch_size=4, **loader,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4, **loader,
    dataset=dict(_delete_=True, type='CustomDataset', data_root=data_root,
                 data_prefix='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
data_preprocessor = dict(num_classes=4)
model = dict(head=dict(num_classes=4))
train_cfg = dict(max_epochs=1)
param_scheduler = [  # 1 epoch instead of 20 of warm-up + 280 of cosine
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=1,
         convert_to_iter_based=True)
]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(save_optimizer=False))
"""


@pytest.fixture(scope='module')
def classifier_checkpoint(data, tmp_path_factory):
    """PeLK-T classifier (pelk_t_in1k.py), one epoch, dynamic sparsity."""
    tmp = tmp_path_factory.mktemp('cls')
    cfg = tmp / 'pelk_t_tiny_in1k.py'
    cfg.write_text(CLS_CONFIG.format(root=ROOT, data=data['imagenet']))
    work_dir = str(tmp / 'work')
    log = run(PY, 'tools/train.py', str(cfg), '--work-dir', work_dir)
    return osp.join(work_dir, 'epoch_1.pth'), log


def test_classifier_trains_sparse(classifier_checkpoint):
    path, log = classifier_checkpoint
    assert 'Epoch(train) [1][2/2]' in log
    assert 'accuracy/top1' in log  # validated at the end of the epoch
    state = _load_checkpoint(path)['state_dict']
    covered = [
        v for k, v in state.items()
        if k.startswith(('backbone.', 'head.')) and v.ndim in (2, 4)
    ]
    zeros = sum(int((v == 0).sum()) for v in covered)
    total = sum(v.numel() for v in covered)
    assert zeros / total == pytest.approx(0.4, abs=0.01)


def test_converter_round_trip(classifier_checkpoint, tmp_path):
    src, _ = classifier_checkpoint
    dst = str(tmp_path / 'pelk_t_in1k_backbone.pth')
    log = run(PY, 'tools/model_converters/cls2backbone.py', src, dst, '--arch',
              'tiny')
    assert 'Missing keys (6;' in log  # norm0-norm2: a classifier has norm3
    assert 'head.fc.weight' in log  # reported as unexpected, dropped

    # Loaded as the downstream configs load it: the same weights, same zeros.
    backbone = PeLK(
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=dst, prefix='backbone.'))
    backbone.init_weights()
    source = _load_checkpoint(src)['state_dict']
    # the expected weights by hand: the loader is what is under test
    for name, value in backbone.state_dict().items():
        if f'backbone.{name}' in source:
            assert torch.equal(value, source[f'backbone.{name}']), name
    weight = backbone.stages[1][0].peripheral_conv.weight
    assert 0.2 < float((weight == 0).float().mean()) < 0.8

    # A checkpoint of another kernel size is refused, nothing written.
    bad = str(tmp_path / 'bad.pth')
    proc = subprocess.run([
        PY, 'tools/model_converters/cls2backbone.py', src, bad, '--arch',
        'tiny-101'
    ],
                          cwd=ROOT,
                          capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert 'shape mismatch' in proc.stderr and 'pos_embeds.0' in proc.stderr
    assert not osp.exists(bad)


def test_converter_plain_training_script_checkpoint(classifier_checkpoint,
                                                    tmp_path):
    """{'model': DDP state dict, 'args': Namespace} as SLaK's main.py saves."""
    converter = load_tool('model_converters/cls2backbone.py')

    source = _load_checkpoint(classifier_checkpoint[0])['state_dict']
    plain = {
        'model': {
            'module.' + k[len('backbone.'):]: v
            for k, v in source.items() if k.startswith('backbone.')
        },
        'args': argparse.Namespace(model='pelk_tiny'),
        'epoch': 299
    }
    src, dst = str(tmp_path / 'plain.pth'), str(tmp_path / 'backbone.pth')
    torch.save(plain, src)
    model = converter.target_backbone(
        config=osp.join(ROOT, 'configs', 'upernet_pelk_t_ade20k.py'))
    with pytest.raises(ValueError, match='--trust-pickle'):
        converter.convert(src, dst, model)
    assert not osp.exists(dst)
    missing, unexpected = converter.convert(src, dst, model, trust_pickle=True)
    assert missing == [
        'norm0.weight', 'norm0.bias', 'norm1.weight', 'norm1.bias',
        'norm2.weight', 'norm2.bias'
    ]
    assert unexpected == []
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert converted.keys() == {k for k in source if k.startswith('backbone.')}
    assert all(torch.equal(v, source[k]) for k, v in converted.items())


SMALL_PELK = """dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128],
                  kernel_sizes=[31, 29, 27, 13])"""
EXISTING_SEG_CONFIG = """
_base_ = ['mmseg::upernet/upernet_r50_4xb4-80k_ade20k-512x512.py']
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
model = dict(
    pretrained=None,  # the base's ImageNet ResNet-50
    backbone=dict(
        _delete_=True,
        type='PeLK',
        arch={arch},
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False),
    decode_head=dict(in_channels=[16, 32, 64, 128]),
    auxiliary_head=dict(in_channels=64))
"""
EXISTING_DET_CONFIG = """
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='PeLK',
        arch={arch},
        out_indices=(1, 2, 3),
        gap_before_final_norm=False),
    neck=dict(in_channels=[32, 64, 128]))
"""


def test_existing_project_with_mmseg_own_train_tool(data, tmp_path):
    cfg = tmp_path / 'upernet_pelk_existing.py'
    cfg.write_text(EXISTING_SEG_CONFIG.format(arch=SMALL_PELK))
    tool = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')
    ade = data['ade']
    log = run(PY, tool, str(cfg), '--work-dir', str(tmp_path / 'work'),
              '--cfg-options', 'model.data_preprocessor.size=(64,64)',
              'train_dataloader.dataset.pipeline.2.scale=(64,64)',
              'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
              f'train_dataloader.dataset.data_root={ade}',
              'train_dataloader.batch_size=2',
              *loader_options('train_dataloader'), 'val_dataloader=None',
              'val_cfg=None', 'val_evaluator=None', 'train_cfg.max_iters=2',
              'default_hooks.logger.interval=1')
    assert 'Iter(train) [2/2]' in log


def test_existing_project_with_mmdet_own_train_tool(data, tmp_path):
    import mmdet
    cfg = tmp_path / 'retinanet_pelk_existing.py'
    cfg.write_text(EXISTING_DET_CONFIG.format(arch=SMALL_PELK))
    tool = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    coco = data['coco']
    log = run(PY, tool, str(cfg), '--work-dir', str(tmp_path / 'work'),
              '--cfg-options',
              'train_dataloader.dataset.pipeline.2.scale=(128,96)',
              f'train_dataloader.dataset.data_root={coco}/',
              'train_dataloader.batch_size=2',
              *loader_options('train_dataloader'), 'val_dataloader=None',
              'val_cfg=None', 'val_evaluator=None', 'train_cfg.max_epochs=1',
              'default_hooks.logger.interval=1')
    assert 'Epoch(train) [1][2/2]' in log
