"""The COCO instances demo layout, read by ``mmdet.datasets.CocoDataset``::

    root/{train2017,val2017}/%012d.jpg
    root/annotations/instances_{train2017,val2017}.json

The JSON declares all 80 COCO categories with their official ids, so the
category-to-label mapping of ``CocoDataset`` is the real one; a few of them are
drawn, as polygons whose masks are exact.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from .drawing import (Texture, check_positive, check_size, checker, ellipse,
                      gradient, paint, plain, polygon_mask, rectangle, stripes,
                      to_uint8)

# The 80 COCO categories with their official (non-contiguous) ids, in the order
# of mmdet's CocoDataset.METAINFO['classes'].
COCO_CATEGORIES: Tuple[Tuple[int, str], ...] = tuple(
    zip((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
         22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41,
         42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
         60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
         81, 82, 84, 85, 86, 87, 88, 89, 90),
        ('person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
         'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
         'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep',
         'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
         'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
         'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
         'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork',
         'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
         'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
         'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv',
         'laptop', 'mouse', 'remote', 'keyboard', 'cell phone', 'microwave',
         'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase',
         'scissors', 'teddy bear', 'hair drier', 'toothbrush')))

# COCO category id of each class the demo draws.
COCO_DEMO_CLASSES: Dict[str, int] = {
    'person': 1,
    'car': 3,
    'stop sign': 13,
    'sports ball': 37,
    'tv': 72
}

_TEXTURES: Dict[str, Texture] = {
    'person': stripes((235, 170, 120), 4, vertical=True),
    'car': stripes((200, 30, 40), 6, vertical=False),
    'stop sign': plain((220, 20, 20), 5.),
    'sports ball': checker((240, 240, 240), (20, 20, 20), 3),
    'tv': plain((30, 40, 90), 10.),
}


def _shape(name: str, x: float, y: float, s: float) -> List[float]:
    """The polygon of a COCO demo object whose bounding square is (x, y, s)."""
    c = s / 2
    if name == 'person':
        return ellipse(x + c, y + c, .3 * s, c)
    if name == 'car':
        return rectangle(x, y + .25 * s, x + s, y + .75 * s)
    if name == 'stop sign':
        return ellipse(x + c, y + c, c, c, n=8)
    if name == 'sports ball':
        return ellipse(x + c, y + c, c, c)
    return rectangle(x, y + .15 * s, x + s, y + .85 * s)  # tv


def _polygon_area(poly: Sequence[float]) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _draw_image(rng: np.random.Generator, w: int, h: int,
                max_objects: int) -> Tuple[np.ndarray, List[dict]]:
    """A smooth background with 1..max_objects non-overlapping objects."""
    canvas = gradient(rng.uniform(60, 200, 3), rng.uniform(60, 200, 3))(h, w,
                                                                        rng)
    names = list(COCO_DEMO_CLASSES)
    placed: List[Tuple[float, float, float]] = []
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # rejection sampling: no overlaps
            s = rng.uniform(.2, .4) * min(w, h)
            x, y = rng.uniform(1, w - s - 1), rng.uniform(1, h - s - 1)
            if all(x + s + 2 < px or px + ps + 2 < x or y + s + 2 < py or py +
                   ps + 2 < y for px, py, ps in placed):
                break
        else:
            continue
        placed.append((x, y, s))
        name = names[int(rng.integers(len(names)))]
        poly = [round(v, 2) for v in _shape(name, x, y, s)]
        paint(canvas, polygon_mask(poly, h, w), _TEXTURES[name], rng)
        xs, ys = poly[0::2], poly[1::2]
        objects.append(
            dict(
                category_id=COCO_DEMO_CLASSES[name],
                segmentation=[poly],
                bbox=[min(xs),
                      min(ys),
                      max(xs) - min(xs),
                      max(ys) - min(ys)],
                area=_polygon_area(poly),
                iscrowd=0))
    return to_uint8(canvas), objects


def make_coco_demo(root: str,
                   num_train: int = 100,
                   num_val: int = 20,
                   size: Tuple[int, int] = (192, 160),
                   max_objects: int = 4,
                   seed: int = 0) -> str:
    """Write a procedurally drawn dataset in COCO's instance layout.

    Five COCO classes are drawn (``COCO_DEMO_CLASSES``) as non-overlapping
    polygons with class-dependent shape, colour and texture; the annotations
    carry the exact polygons, their bounding boxes and areas. All 80 COCO
    categories are declared, with their official ids.

    Args:
        root (str): Output directory (created).
        num_train (int): Training images. Defaults to 100.
        num_val (int): Validation images. Defaults to 20.
        size (tuple[int, int]): Image (width, height). Defaults to (192, 160).
        max_objects (int): At most this many objects per image (at least
            one). Defaults to 4.
        seed (int): Seed of every random choice. Defaults to 0.

    Returns:
        str: ``root``.
    """
    check_positive('num_train', num_train)
    check_positive('num_val', num_val)
    check_positive('max_objects', max_objects)
    w, h = check_size(size, 32)
    categories = [
        dict(id=cat_id, name=name, supercategory='none')
        for cat_id, name in COCO_CATEGORIES
    ]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    ann_id = 1
    splits = (('train2017', num_train), ('val2017', num_val))
    for split_id, (split, num) in enumerate(splits):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(num):
            rng = np.random.default_rng([seed, split_id, i])
            image, objects = _draw_image(rng, w, h, max_objects)
            image_id = split_id * 1_000_000 + i + 1
            file_name = f'{image_id:012d}.jpg'
            Image.fromarray(image).save(
                osp.join(root, split, file_name), quality=95)
            images.append(
                dict(id=image_id, file_name=file_name, width=w, height=h))
            for obj in objects:
                annotations.append(dict(obj, id=ann_id, image_id=image_id))
                ann_id += 1
        with open(
                osp.join(root, 'annotations', f'instances_{split}.json'),
                'w') as f:
            json.dump(
                dict(
                    info=dict(description='pelk-mm procedural COCO demo'),
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
    return root
