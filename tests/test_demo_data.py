"""The demo data generators: real layouts read by the real dataset classes."""
import filecmp
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from mmengine.registry import init_default_scope
from PIL import Image

from pelk_mm.demo import (ADE20K_DEMO_CLASSES, COCO_CATEGORIES,
                          COCO_DEMO_CLASSES, IMAGENET_DEMO_CLASSES,
                          make_ade20k_demo, make_coco_demo, make_imagenet_demo)
from helpers import ROOT


def _files(root):
    return sorted(
        osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root)
        for f in fs)


def _same_tree(a, b):
    files = _files(a)
    return files == _files(b) and all(
        filecmp.cmp(osp.join(a, f), osp.join(b, f), shallow=False)
        for f in files)


@pytest.mark.parametrize(
    'make', [
        lambda root, seed: make_ade20k_demo(
            root, 4, 2, size=(64, 48), seed=seed),
        lambda root, seed: make_coco_demo(
            root, 3, 2, size=(80, 64), seed=seed),
        lambda root, seed: make_imagenet_demo(root, 2, 1, size=32, seed=seed),
    ],
    ids=['ade20k', 'coco', 'imagenet'])
def test_deterministic_from_seed(tmp_path, make):
    make(str(tmp_path / 'a'), 0)
    make(str(tmp_path / 'b'), 0)
    make(str(tmp_path / 'c'), 1)
    assert _same_tree(tmp_path / 'a', tmp_path / 'b')
    assert not _same_tree(tmp_path / 'a', tmp_path / 'c')


def test_image_does_not_depend_on_dataset_size(tmp_path):
    make_ade20k_demo(str(tmp_path / 'small'), 2, 1, size=(64, 64))
    make_ade20k_demo(str(tmp_path / 'large'), 5, 1, size=(64, 64))
    name = 'images/training/ADE_train_00000002.jpg'
    assert filecmp.cmp(
        tmp_path / 'small' / name, tmp_path / 'large' / name, shallow=False)


def test_ade20k_layout_read_by_mmseg(tmp_path):
    from mmseg.datasets import ADE20KDataset
    init_default_scope('mmseg')
    root = str(tmp_path)
    make_ade20k_demo(root, 6, 3, size=(96, 64), seed=3)
    assert len(os.listdir(tmp_path / 'images' / 'training')) == 6
    assert len(os.listdir(tmp_path / 'annotations' / 'validation')) == 3

    # The demo's class indices are ADE20K's (1-based) indices of those names.
    classes = ADE20KDataset.METAINFO['classes']
    for name, index in ADE20K_DEMO_CLASSES.items():
        assert classes[index - 1].strip() == name

    label = Image.open(tmp_path / 'annotations' / 'training' /
                       'ADE_train_00000001.png')
    assert label.mode == 'L' and label.size == (96, 64)
    seen = set()
    for f in (tmp_path / 'annotations' / 'training').iterdir():
        seen |= set(np.unique(np.asarray(Image.open(f))).tolist())
    assert seen <= {0, *ADE20K_DEMO_CLASSES.values()}
    assert len(seen - {0}) >= 4  # sky, grass and several objects

    dataset = ADE20KDataset(
        data_root=root,
        data_prefix=dict(
            img_path='images/training', seg_map_path='annotations/training'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='PackSegInputs')
        ])
    assert len(dataset) == 6
    sample = dataset[0]
    assert tuple(sample['inputs'].shape) == (3, 64, 96)
    gt = sample['data_samples'].gt_sem_seg.data.numpy()
    expected = {i - 1 for i in ADE20K_DEMO_CLASSES.values()} | {255}
    assert set(np.unique(gt).tolist()) <= expected


def test_coco_layout_read_by_mmdet(tmp_path):
    from mmdet.datasets import CocoDataset
    from pycocotools import mask as mask_utils
    init_default_scope('mmdet')
    root = str(tmp_path)
    make_coco_demo(root, 5, 2, size=(128, 96), seed=1)

    assert [name for _, name in COCO_CATEGORIES
            ] == list(CocoDataset.METAINFO['classes'])
    with open(tmp_path / 'annotations' / 'instances_train2017.json') as f:
        coco = json.load(f)
    assert [c['id']
            for c in coco['categories']] == [i for i, _ in COCO_CATEGORIES]
    assert len(coco['images']) == 5 and coco['annotations']
    for ann in coco['annotations']:
        assert ann['category_id'] in COCO_DEMO_CLASSES.values()
        x, y, w, h = ann['bbox']
        poly = np.asarray(ann['segmentation'][0])
        assert poly[0::2].min() == pytest.approx(x)
        assert poly[1::2].max() == pytest.approx(y + h)
        rle = mask_utils.frPyObjects(ann['segmentation'], 96, 128)
        # the polygon's area is the annotated area, up to rasterisation
        assert mask_utils.area(mask_utils.merge(rle)) == pytest.approx(
            ann["area"], rel=0.2)

    dataset = CocoDataset(
        data_root=root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs')
        ])
    assert len(dataset) == 5
    instances = dataset[0]['data_samples'].gt_instances
    labels = {
        CocoDataset.METAINFO['classes'].index(name)
        for name in COCO_DEMO_CLASSES
    }
    assert set(instances.labels.tolist()) <= labels
    assert len(instances.masks) == len(instances.bboxes) > 0


def test_imagenet_layout_read_by_mmpretrain(tmp_path):
    from mmpretrain.datasets import CustomDataset
    init_default_scope('mmpretrain')
    make_imagenet_demo(str(tmp_path), 3, 2, size=40)
    train = CustomDataset(data_root=str(tmp_path), data_prefix='train')
    val = CustomDataset(data_root=str(tmp_path), data_prefix='val')
    assert list(train.CLASSES) == sorted(IMAGENET_DEMO_CLASSES)
    assert len(train) == 3 * len(IMAGENET_DEMO_CLASSES)
    assert len(val) == 2 * len(IMAGENET_DEMO_CLASSES)
    assert Image.open(train.get_data_info(0)['img_path']).size == (40, 40)


@pytest.mark.slow
def test_cli(tmp_path):
    out = tmp_path / 'ade'
    subprocess.run([
        sys.executable,
        osp.join(ROOT, 'tools', 'make_demo_data.py'), 'ade20k',
        str(out), '--num', '3', '--num-val', '2', '--size', '48', '40',
        '--seed', '5'
    ],
                   check=True,
                   cwd=ROOT)
    make_ade20k_demo(str(tmp_path / 'api'), 3, 2, size=(48, 40), seed=5)
    assert _same_tree(out, tmp_path / 'api')


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_train=0), 'num_train'),
    (dict(num_val=-1), 'num_val'),
    (dict(size=(16, 64)), 'size'),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_ade20k_demo(str(tmp_path), **kwargs)
    with pytest.raises(ValueError, match='max_objects'):
        make_coco_demo(str(tmp_path), max_objects=0)
    with pytest.raises(ValueError, match='size'):
        make_imagenet_demo(str(tmp_path), size=8)
