"""The ImageNet-style folder demo layout, read by
``mmpretrain.datasets.CustomDataset``::

    root/{train,val}/<class>/<class>_%05d.JPEG
"""
import os
import os.path as osp
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from .drawing import (Texture, check_positive, checker, cross, ellipse, paint,
                      plain, polygon_mask, rectangle, stripes, to_uint8,
                      triangle)

IMAGENET_DEMO_CLASSES: Tuple[str,
                             ...] = ('disc', 'square', 'triangle', 'cross')

_TEXTURES: Dict[str, Texture] = {
    'disc': plain((220, 60, 40), 10.),
    'square': checker((40, 120, 220), (230, 230, 230), 4),
    'triangle': stripes((60, 190, 60), 6, vertical=True),
    'cross': plain((230, 200, 40), 25., cell=3),
}


def _draw_image(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    canvas = plain(rng.uniform(40, 215, 3), 20.)(size, size, rng)
    r = rng.uniform(.25, .4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    poly = {
        'disc': lambda: ellipse(cx, cy, r, r),
        'square': lambda: rectangle(cx - r, cy - r, cx + r, cy + r),
        'triangle': lambda: triangle(cx, cy, r),
        'cross': lambda: cross(cx, cy, r),
    }[name]()
    paint(canvas, polygon_mask(poly, size, size), _TEXTURES[name], rng)
    return to_uint8(canvas)


def make_imagenet_demo(root: str,
                       num_train: int = 20,
                       num_val: int = 5,
                       size: int = 64,
                       seed: int = 0) -> str:
    """Write a procedurally drawn dataset in ImageNet's folder layout.

    One folder per class (``IMAGENET_DEMO_CLASSES``) under ``train/`` and
    ``val/``, readable by ``mmpretrain.datasets.CustomDataset``.

    Args:
        root (str): Output directory (created).
        num_train (int): Training images per class. Defaults to 20.
        num_val (int): Validation images per class. Defaults to 5.
        size (int): Image side. Defaults to 64.
        seed (int): Seed of every random choice. Defaults to 0.

    Returns:
        str: ``root``.
    """
    check_positive('num_train', num_train)
    check_positive('num_val', num_val)
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f'size must be an integer >= 16, got {size!r}')
    splits = (('train', num_train), ('val', num_val))
    for split_id, (split, num) in enumerate(splits):
        for class_id, name in enumerate(IMAGENET_DEMO_CLASSES):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(num):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                Image.fromarray(_draw_image(rng, name, int(size))).save(
                    osp.join(folder, f'{name}_{i:05d}.JPEG'), quality=95)
    return root
