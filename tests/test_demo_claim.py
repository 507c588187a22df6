"""The demo's learning claim, seeded, through the real tools/train.py and
tools/test.py (a smaller copy of the demo config: 64x64 images, fewer
iterations, the same model, optimizer and 40 % dynamic sparsity).

What "learned" means here: the trained model's mIoU must clear, by a margin,
everything a model that does not look at the image can reach on this data.
Seven classes are present in the validation labels, so a constant prediction
scores at most 100 / 7 = 14.3 mIoU; the best image-blind predictor for this
layout (sky above a horizon, grass below) predicts each pixel's most frequent
training label, which this test computes and scores with mmseg's IoU. The
untrained model (the config's initial weights, as tools/demo.sh evaluates it)
is scored by tools/test.py too.
"""
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pelk_mm.demo import ADE20K_DEMO_CLASSES, make_ade20k_demo
from helpers import ROOT

PY = sys.executable
# mIoU points the trained model must score above the best image-blind
# predictor (20.8 on this data: any model that ignores the image scores at
# most that), and above the untrained model (which scores about 0: it
# predicts classes that are not in the data).
MARGIN_BLIND = 10.0
MARGIN_UNTRAINED = 25.0

SMALL_DEMO = """
_base_ = ['{root}/configs/demo/upernet_pelk_demo_ade20k.py']
data_root = '{data}'
crop_size = (64, 64)
max_iters = {iters}
model = dict(data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(64, 64), ratio_range=(0.75, 1.5),
         keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
loader = dict(num_workers=0, persistent_workers=False)
train_dataloader = dict(
    batch_size=8, **loader,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1, **loader,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0,
         end=10),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=10,
         end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(checkpoint=dict(interval=max_iters,
                                     save_optimizer=False))
custom_hooks = [
    dict(type='DynamicSparsityHook', mode='auto', sparsity=0.4, init='snip',
         growth='random', prune_rate=0.3, update_interval=14)
]
"""

# The untrained model as tools/demo.sh saves it.
UNTRAINED = """
import sys
from pelk_mm.mm.builder import save_initial_checkpoint
save_initial_checkpoint(sys.argv[1], sys.argv[2], seed=0)
"""


def run(*args):
    proc = subprocess.run(
        list(args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def tool_miou(work_dir):
    [log] = glob.glob(osp.join(work_dir, '*', '*.json'))
    with open(log) as f:
        return json.load(f)['mIoU']


def labels(root, split):
    """``(N, H, W)`` train ids as mmseg sees them (reduce_zero_label: ADE20K
    index - 1, "other" -> 255 ignored)."""
    paths = sorted(glob.glob(osp.join(root, 'annotations', split, '*.png')))
    raw = np.stack([np.asarray(Image.open(p)) for p in paths]).astype(int)
    return np.where(raw == 0, 255, raw - 1)


def miou(pred, gt, num_classes=150):
    """mmseg's IoUMetric: dataset-wide intersection / union per class, mean
    over the classes with a non-empty union (predicted or present)."""
    valid = gt != 255
    ious = []
    for c in range(num_classes):
        p, g = (pred == c) & valid, (gt == c) & valid
        union = (p | g).sum()
        if union:
            ious.append((p & g).sum() / union)
    return 100 * float(np.mean(ious))


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('demo_claim')
    data = make_ade20k_demo(str(tmp / 'ade'), 64, 24, size=(64, 64))
    cfg = tmp / 'small_demo.py'
    cfg.write_text(SMALL_DEMO.format(root=ROOT, data=data, iters=80))
    train = str(tmp / 'train')
    log = run(PY, 'tools/train.py', str(cfg), '--work-dir', train)
    run(PY, 'tools/test.py', str(cfg), osp.join(train, 'iter_80.pth'),
        '--work-dir', str(tmp / 'test_trained'))
    untrained = str(tmp / 'untrained.pth')
    run(PY, '-c', UNTRAINED, str(cfg), untrained)
    run(PY, 'tools/test.py', str(cfg), untrained, '--work-dir',
        str(tmp / 'test_untrained'))
    return dict(
        data=data,
        log=log,
        train=train,
        trained=tool_miou(str(tmp / 'test_trained')),
        untrained=tool_miou(str(tmp / 'test_untrained')))


@pytest.mark.slow
def test_trained_beats_every_image_blind_predictor(demo_run):
    train_gt, val_gt = labels(demo_run['data'],
                              'training'), labels(demo_run['data'],
                                                  'validation')
    present = {int(c) for c in np.unique(val_gt) if c != 255}
    assert present == {c - 1 for c in ADE20K_DEMO_CLASSES.values()}
    constant_bound = 100 / len(present)
    # Per-pixel most frequent training label (ignored pixels not counted).
    counts = np.stack([(train_gt == c).sum(0) for c in range(150)])
    prior = np.broadcast_to(counts.argmax(0), val_gt.shape)
    prior_miou = miou(prior, val_gt)
    best_blind = max(constant_bound, prior_miou)
    trained, untrained = demo_run['trained'], demo_run['untrained']
    print(f'mIoU trained {trained:.2f}, untrained {untrained:.2f}, '
          f'position prior {prior_miou:.2f}, constant <= {constant_bound:.2f}')
    assert untrained <= constant_bound
    assert trained >= best_blind + MARGIN_BLIND
    assert trained - untrained >= MARGIN_UNTRAINED


@pytest.mark.slow
def test_trained_demo_model_is_sparse(demo_run):
    log = demo_run['log']
    assert "mode='auto' -> 'dynamic'" in log
    assert log.count('DynamicSparsityHook update at optimizer step') == 5
    ckpt = torch.load(
        osp.join(demo_run['train'], 'iter_80.pth'),
        map_location='cpu',
        weights_only=False)
    masks, state = ckpt['sparsity']['masks'], ckpt['state_dict']
    total = sum(m.numel() for m in masks.values())
    zeros = sum(int((state[n] == 0).sum()) for n in masks)
    active = sum(int(m.sum()) for m in masks.values())
    assert active == round(0.6 * total)
    assert zeros == total - active  # pruned exactly, regrown ones trained


def test_demo_script_refuses_a_work_dir_it_did_not_make(tmp_path):
    """tools/demo.sh empties WORK_DIR only when its marker file is there."""
    work_dir = tmp_path / 'results'
    work_dir.mkdir()
    (work_dir / 'keep.txt').write_text('precious')
    proc = subprocess.run(
        ['bash', 'tools/demo.sh', str(work_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60)
    assert proc.returncode == 2
    assert 'refusing to use' in proc.stderr and '.pelk_demo_work_dir' in (
        proc.stderr)
    assert (work_dir / 'keep.txt').read_text() == 'precious'
    proc = subprocess.run(['bash', 'tools/demo.sh', 'a', 'b'],
                          cwd=ROOT,
                          capture_output=True,
                          text=True,
                          timeout=60)
    assert proc.returncode == 2 and 'usage' in proc.stderr
