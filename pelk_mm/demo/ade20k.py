"""The ADE20K demo layout, read by ``mmseg.datasets.ADE20KDataset``::

    root/images/{training,validation}/ADE_{train,val}_%08d.jpg
    root/annotations/{training,validation}/ADE_{train,val}_%08d.png

Labels are single-channel PNGs with ADE20K's 1-based class indices (1..150);
0 means "other" and is ignored after ``reduce_zero_label=True``.
"""
import os
import os.path as osp
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image

from .drawing import (Texture, check_positive, check_size, ellipse, gradient,
                      paint, plain, polygon_mask, random_colour, rectangle,
                      stripes, to_uint8, windows)

# ADE20K 1-based label index of each class the demo draws (0 = "other").
ADE20K_DEMO_CLASSES: Dict[str, int] = {
    'building': 2,
    'sky': 3,
    'tree': 5,
    'road': 7,
    'grass': 10,
    'person': 13,
    'car': 21
}

_TEXTURES: Dict[str, Texture] = {
    'sky': gradient((90, 150, 230), (200, 225, 245)),
    'grass': plain((70, 150, 50), 22.),
    'road': plain((105, 105, 110), 6.),
    'building': windows((160, 110, 80), (50, 60, 90), 5),
    'tree': plain((25, 85, 30), 28., cell=4),
    'car': stripes((200, 30, 40), 6, vertical=False),
    'person': stripes((235, 170, 120), 4, vertical=True),
}


def _draw_scene(rng: np.random.Generator, w: int,
                h: int) -> Tuple[np.ndarray, np.ndarray]:
    """One outdoor scene: sky over grass (maybe a road), then objects."""
    canvas = np.zeros((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)

    def put(name: str, poly: Sequence[float]) -> None:
        mask = polygon_mask(poly, h, w)
        paint(canvas, mask, _TEXTURES[name], rng)
        label[mask] = ADE20K_DEMO_CLASSES[name]

    horizon = int(rng.uniform(.3, .55) * h)
    put('sky', rectangle(0, 0, w, horizon))
    put('grass', rectangle(0, horizon, w, h))
    if rng.random() < .6:
        x = rng.uniform(.2, .8) * w
        top, bottom = rng.uniform(.03, .08) * w, rng.uniform(.2, .35) * w
        put('road',
            [x - top, horizon, x + top, horizon, x + bottom, h, x - bottom, h])
    for _ in range(rng.integers(0, 3)):
        bw, bh = rng.uniform(.15, .3) * w, rng.uniform(.15, .3) * h
        x = rng.uniform(0, w - bw)
        put('building', rectangle(x, max(horizon - bh, 0), x + bw, horizon))
    for _ in range(rng.integers(0, 3)):
        r = rng.uniform(.07, .14) * min(w, h)
        put(
            'tree',
            ellipse(
                rng.uniform(0, w), horizon - rng.uniform(0, r), r,
                r * rng.uniform(1., 1.4)))
    for _ in range(rng.integers(0, 3)):
        cw, ch = rng.uniform(.15, .25) * w, rng.uniform(.08, .12) * h
        x, y = rng.uniform(0, w - cw), rng.uniform(horizon, h - ch)
        put('car', rectangle(x, y, x + cw, y + ch))
    for _ in range(rng.integers(0, 3)):
        rx, ry = rng.uniform(.03, .05) * w, rng.uniform(.1, .16) * h
        put(
            'person',
            ellipse(
                rng.uniform(rx, w - rx), rng.uniform(horizon, h - ry), rx, ry))
    for _ in range(rng.integers(0, 2)):  # unlabelled clutter: class 0
        r = rng.uniform(.03, .07) * min(w, h)
        mask = polygon_mask(
            ellipse(rng.uniform(0, w), rng.uniform(0, h), r, r, n=5), h, w)
        paint(canvas, mask, random_colour, rng)
        label[mask] = 0
    return to_uint8(canvas), label


def make_ade20k_demo(root: str,
                     num_train: int = 200,
                     num_val: int = 50,
                     size: Tuple[int, int] = (160, 160),
                     seed: int = 0) -> str:
    """Write a procedurally drawn dataset in ADE20K's directory layout.

    Seven ADE20K classes are drawn (``ADE20K_DEMO_CLASSES``: sky, grass, road,
    building, tree, car, person), each with its own colour and texture, plus
    unlabelled clutter (label 0, ignored by ``reduce_zero_label=True``).

    Args:
        root (str): Output directory (created).
        num_train (int): Training images. Defaults to 200.
        num_val (int): Validation images. Defaults to 50.
        size (tuple[int, int]): Image (width, height). Defaults to (160, 160).
        seed (int): Seed of every random choice. Defaults to 0.

    Returns:
        str: ``root``.
    """
    check_positive('num_train', num_train)
    check_positive('num_val', num_val)
    w, h = check_size(size, 32)
    for split_id, (split, prefix, num) in enumerate(
        (('training', 'ADE_train', num_train), ('validation', 'ADE_val',
                                                num_val))):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(num):
            rng = np.random.default_rng([seed, split_id, i])
            image, label = _draw_scene(rng, w, h)
            name = f'{prefix}_{i + 1:08d}'
            Image.fromarray(image).save(
                osp.join(img_dir, name + '.jpg'), quality=95)
            Image.fromarray(
                label, mode='L').save(osp.join(ann_dir, name + '.png'))
    return root
