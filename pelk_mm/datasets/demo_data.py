"""Small procedurally drawn datasets in the real ADE20K, COCO and ImageNet layouts.

The built-in demo and the end-to-end tests need data that needs no download, that
the unmodified mmseg / mmdet / mmpretrain dataset classes read, and that a small
network can actually learn in minutes on a CPU. Every image is drawn from a few
shapes whose colour and texture depend on their class, so the labels are
learnable, with per-image jitter so they are not trivial.

Everything is deterministic: image ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, s, i])``, so the same seed gives the same files
byte for byte (JPEG encoding included, for a given Pillow build), whatever the
number of images asked for.

Layouts written (only what the standard dataset classes read):

- ADE20K (``mmseg.datasets.ADE20KDataset``, ``reduce_zero_label=True``)::

    root/images/{training,validation}/ADE_{train,val}_%08d.jpg
    root/annotations/{training,validation}/ADE_{train,val}_%08d.png

  Labels are single-channel PNGs with ADE20K's 1-based class indices (1..150);
  0 means "other" and is ignored after ``reduce_zero_label``.
- COCO instances (``mmdet.datasets.CocoDataset``)::

    root/{train2017,val2017}/%012d.jpg
    root/annotations/instances_{train2017,val2017}.json

  The JSON declares all 80 COCO categories with their official ids, so the
  category-to-label mapping of ``CocoDataset`` is the real one; a few of them are
  drawn, as polygons whose masks are exact.
- ImageNet-style folders (``mmpretrain.datasets.CustomDataset``)::

    root/{train,val}/<class>/<class>_%05d.JPEG
"""
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    'ADE20K_DEMO_CLASSES', 'COCO_CATEGORIES', 'COCO_DEMO_CLASSES',
    'IMAGENET_DEMO_CLASSES', 'make_ade20k_demo', 'make_coco_demo',
    'make_imagenet_demo'
]

# The 80 COCO categories with their official (non-contiguous) ids, in the order
# of mmdet's CocoDataset.METAINFO['classes'].
COCO_CATEGORIES: Tuple[Tuple[int, str], ...] = tuple(zip(
    (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
     22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42,
     43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
     62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
     85, 86, 87, 88, 89, 90),
    ('person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
     'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
     'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
     'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag',
     'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
     'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
     'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon',
     'bowl', 'banana', 'apple', 'sandwich', 'orange', 'broccoli', 'carrot',
     'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
     'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
     'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink',
     'refrigerator', 'book', 'clock', 'vase', 'scissors', 'teddy bear',
     'hair drier', 'toothbrush')))

# ADE20K 1-based label index of each class the demo draws (0 = "other").
ADE20K_DEMO_CLASSES: Dict[str, int] = {
    'building': 2, 'sky': 3, 'tree': 5, 'road': 7, 'grass': 10, 'person': 13,
    'car': 21
}
# COCO category id of each class the demo draws.
COCO_DEMO_CLASSES: Dict[str, int] = {
    'person': 1, 'car': 3, 'stop sign': 13, 'sports ball': 37, 'tv': 72
}
IMAGENET_DEMO_CLASSES: Tuple[str, ...] = ('disc', 'square', 'triangle',
                                          'cross')

Texture = Callable[[int, int, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------
# Textures: (H, W) -> float32 (H, W, 3) RGB in [0, 255], class-dependent.
# --------------------------------------------------------------------------
def _jittered(rgb: Sequence[float], rng: np.random.Generator,
              amount: float = 12.) -> np.ndarray:
    return np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3)


def _noise(h: int, w: int, rng: np.random.Generator, std: float,
           cell: int = 1) -> np.ndarray:
    """Grey noise of the given std; ``cell > 1`` makes it blotchy."""
    small = rng.normal(0., std, ((h + cell - 1) // cell, (w + cell - 1) // cell))
    noise = np.kron(small, np.ones((cell, cell)))[:h, :w]
    return noise[..., None].astype(np.float32)


def _grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy, xx


def _plain(rgb: Sequence[float], std: float, cell: int = 1) -> Texture:

    def texture(h, w, rng):
        return _jittered(rgb, rng) + _noise(h, w, rng, std, cell)

    return texture


def _gradient(top: Sequence[float], bottom: Sequence[float]) -> Texture:

    def texture(h, w, rng):
        t = np.linspace(0., 1., h, dtype=np.float32)[:, None, None]
        img = _jittered(top, rng) * (1 - t) + _jittered(bottom, rng) * t
        return np.broadcast_to(img, (h, w, 3)) + _noise(h, w, rng, 3.)

    return texture


def _stripes(rgb: Sequence[float], period: int, vertical: bool,
             contrast: float = 50.) -> Texture:

    def texture(h, w, rng):
        yy, xx = _grid(h, w)
        phase = int(rng.integers(period))
        on = (((xx if vertical else yy) + phase) // (period // 2 or 1)) % 2
        return (_jittered(rgb, rng) + contrast * (on[..., None] - .5) +
                _noise(h, w, rng, 4.))

    return texture


def _checker(light: Sequence[float], dark: Sequence[float],
             cell: int) -> Texture:

    def texture(h, w, rng):
        yy, xx = _grid(h, w)
        on = ((yy // cell + xx // cell) % 2)[..., None]
        return (_jittered(light, rng) * on + _jittered(dark, rng) * (1 - on) +
                _noise(h, w, rng, 4.))

    return texture


def _windows(wall: Sequence[float], glass: Sequence[float],
             cell: int) -> Texture:

    def texture(h, w, rng):
        yy, xx = _grid(h, w)
        win = (((yy // cell) % 2 == 0) & ((xx // cell) % 2 == 0))[..., None]
        return (_jittered(glass, rng) * win + _jittered(wall, rng) * (~win) +
                _noise(h, w, rng, 5.))

    return texture


def _random_colour(h, w, rng):
    return rng.uniform(0, 255, 3).astype(np.float32) + _noise(h, w, rng, 8.)


_ADE20K_TEXTURES: Dict[str, Texture] = {
    'sky': _gradient((90, 150, 230), (200, 225, 245)),
    'grass': _plain((70, 150, 50), 22.),
    'road': _plain((105, 105, 110), 6.),
    'building': _windows((160, 110, 80), (50, 60, 90), 5),
    'tree': _plain((25, 85, 30), 28., cell=4),
    'car': _stripes((200, 30, 40), 6, vertical=False),
    'person': _stripes((235, 170, 120), 4, vertical=True),
}
_COCO_TEXTURES: Dict[str, Texture] = {
    'person': _stripes((235, 170, 120), 4, vertical=True),
    'car': _stripes((200, 30, 40), 6, vertical=False),
    'stop sign': _plain((220, 20, 20), 5.),
    'sports ball': _checker((240, 240, 240), (20, 20, 20), 3),
    'tv': _plain((30, 40, 90), 10.),
}
_IMAGENET_TEXTURES: Dict[str, Texture] = {
    'disc': _plain((220, 60, 40), 10.),
    'square': _checker((40, 120, 220), (230, 230, 230), 4),
    'triangle': _stripes((60, 190, 60), 6, vertical=True),
    'cross': _plain((230, 200, 40), 25., cell=3),
}


# --------------------------------------------------------------------------
# Shapes: polygons as flat [x0, y0, x1, y1, ...] lists in pixel coordinates.
# --------------------------------------------------------------------------
def _ellipse(cx: float, cy: float, rx: float, ry: float,
             n: int = 16) -> List[float]:
    t = np.arange(n) * 2 * np.pi / n
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)],
                    1).ravel().tolist()


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> List[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _triangle(cx: float, cy: float, r: float) -> List[float]:
    return [cx, cy - r, cx + r, cy + r, cx - r, cy + r]


def _cross(cx: float, cy: float, r: float) -> List[float]:
    a = r / 3
    pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r),
           (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    return [v for x, y in pts for v in (cx + x, cy + y)]


def _polygon_mask(poly: Sequence[float], h: int, w: int) -> np.ndarray:
    img = Image.new('L', (w, h), 0)
    ImageDraw.Draw(img).polygon([float(v) for v in poly], fill=1)
    return np.asarray(img, dtype=bool)


def _paint(canvas: np.ndarray, mask: np.ndarray, texture: Texture,
           rng: np.random.Generator) -> None:
    h, w = mask.shape
    canvas[mask] = texture(h, w, rng)[mask]


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')


def _check_size(size: Tuple[int, int], minimum: int) -> Tuple[int, int]:
    if (len(size) != 2 or not all(isinstance(v, (int, np.integer))
                                  for v in size) or min(size) < minimum):
        raise ValueError(f'size must be (width, height) with both >= '
                         f'{minimum}, got {size!r}')
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------
# ADE20K
# --------------------------------------------------------------------------
def _draw_ade20k_scene(rng: np.random.Generator, w: int,
                       h: int) -> Tuple[np.ndarray, np.ndarray]:
    """One outdoor scene: sky over grass (maybe a road), then objects."""
    canvas = np.zeros((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)

    def put(name: str, poly: Sequence[float]) -> None:
        mask = _polygon_mask(poly, h, w)
        _paint(canvas, mask, _ADE20K_TEXTURES[name], rng)
        label[mask] = ADE20K_DEMO_CLASSES[name]

    horizon = int(rng.uniform(.3, .55) * h)
    put('sky', _rectangle(0, 0, w, horizon))
    put('grass', _rectangle(0, horizon, w, h))
    if rng.random() < .6:
        x = rng.uniform(.2, .8) * w
        top, bottom = rng.uniform(.03, .08) * w, rng.uniform(.2, .35) * w
        put('road', [x - top, horizon, x + top, horizon, x + bottom, h,
                     x - bottom, h])
    for _ in range(rng.integers(0, 3)):
        bw, bh = rng.uniform(.15, .3) * w, rng.uniform(.15, .3) * h
        x = rng.uniform(0, w - bw)
        put('building', _rectangle(x, max(horizon - bh, 0), x + bw, horizon))
    for _ in range(rng.integers(0, 3)):
        r = rng.uniform(.07, .14) * min(w, h)
        put('tree', _ellipse(rng.uniform(0, w), horizon - rng.uniform(0, r),
                             r, r * rng.uniform(1., 1.4)))
    for _ in range(rng.integers(0, 3)):
        cw, ch = rng.uniform(.15, .25) * w, rng.uniform(.08, .12) * h
        x, y = rng.uniform(0, w - cw), rng.uniform(horizon, h - ch)
        put('car', _rectangle(x, y, x + cw, y + ch))
    for _ in range(rng.integers(0, 3)):
        rx, ry = rng.uniform(.03, .05) * w, rng.uniform(.1, .16) * h
        put('person', _ellipse(rng.uniform(rx, w - rx),
                               rng.uniform(horizon, h - ry), rx, ry))
    for _ in range(rng.integers(0, 2)):  # unlabelled clutter: class 0
        r = rng.uniform(.03, .07) * min(w, h)
        mask = _polygon_mask(
            _ellipse(rng.uniform(0, w), rng.uniform(0, h), r, r, n=5), h, w)
        _paint(canvas, mask, _random_colour, rng)
        label[mask] = 0
    return _to_uint8(canvas), label


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
    _check_positive('num_train', num_train)
    _check_positive('num_val', num_val)
    w, h = _check_size(size, 32)
    for split_id, (split, prefix, num) in enumerate(
        (('training', 'ADE_train', num_train),
         ('validation', 'ADE_val', num_val))):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(num):
            rng = np.random.default_rng([seed, split_id, i])
            image, label = _draw_ade20k_scene(rng, w, h)
            name = f'{prefix}_{i + 1:08d}'
            Image.fromarray(image).save(
                osp.join(img_dir, name + '.jpg'), quality=95)
            Image.fromarray(label, mode='L').save(
                osp.join(ann_dir, name + '.png'))
    return root


# --------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------
def _coco_shape(name: str, x: float, y: float, s: float) -> List[float]:
    """The polygon of a COCO demo object whose bounding square is (x, y, s)."""
    c = s / 2
    if name == 'person':
        return _ellipse(x + c, y + c, .3 * s, c)
    if name == 'car':
        return _rectangle(x, y + .25 * s, x + s, y + .75 * s)
    if name == 'stop sign':
        return _ellipse(x + c, y + c, c, c, n=8)
    if name == 'sports ball':
        return _ellipse(x + c, y + c, c, c)
    return _rectangle(x, y + .15 * s, x + s, y + .85 * s)  # tv


def _polygon_area(poly: Sequence[float]) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _draw_coco_image(rng: np.random.Generator, w: int, h: int,
                     max_objects: int) -> Tuple[np.ndarray, List[dict]]:
    """A smooth background with 1..max_objects non-overlapping objects."""
    canvas = _gradient(rng.uniform(60, 200, 3), rng.uniform(60, 200, 3))(h, w,
                                                                          rng)
    names = list(COCO_DEMO_CLASSES)
    placed: List[Tuple[float, float, float]] = []
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # rejection sampling: no overlaps
            s = rng.uniform(.2, .4) * min(w, h)
            x, y = rng.uniform(1, w - s - 1), rng.uniform(1, h - s - 1)
            if all(x + s + 2 < px or px + ps + 2 < x or y + s + 2 < py
                   or py + ps + 2 < y for px, py, ps in placed):
                break
        else:
            continue
        placed.append((x, y, s))
        name = names[int(rng.integers(len(names)))]
        poly = [round(v, 2) for v in _coco_shape(name, x, y, s)]
        _paint(canvas, _polygon_mask(poly, h, w), _COCO_TEXTURES[name], rng)
        xs, ys = poly[0::2], poly[1::2]
        objects.append(
            dict(
                category_id=COCO_DEMO_CLASSES[name],
                segmentation=[poly],
                bbox=[
                    min(xs),
                    min(ys),
                    max(xs) - min(xs),
                    max(ys) - min(ys)
                ],
                area=_polygon_area(poly),
                iscrowd=0))
    return _to_uint8(canvas), objects


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
    _check_positive('num_train', num_train)
    _check_positive('num_val', num_val)
    _check_positive('max_objects', max_objects)
    w, h = _check_size(size, 32)
    categories = [
        dict(id=cat_id, name=name, supercategory='none')
        for cat_id, name in COCO_CATEGORIES
    ]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    ann_id = 1
    for split_id, (split, num) in enumerate(
        (('train2017', num_train), ('val2017', num_val))):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(num):
            rng = np.random.default_rng([seed, split_id, i])
            image, objects = _draw_coco_image(rng, w, h, max_objects)
            image_id = split_id * 1_000_000 + i + 1
            file_name = f'{image_id:012d}.jpg'
            Image.fromarray(image).save(
                osp.join(root, split, file_name), quality=95)
            images.append(
                dict(id=image_id, file_name=file_name, width=w, height=h))
            for obj in objects:
                annotations.append(dict(obj, id=ann_id, image_id=image_id))
                ann_id += 1
        with open(osp.join(root, 'annotations', f'instances_{split}.json'),
                  'w') as f:
            json.dump(
                dict(
                    info=dict(description='pelk-mm procedural COCO demo'),
                    images=images,
                    annotations=annotations,
                    categories=categories), f)
    return root


# --------------------------------------------------------------------------
# ImageNet-style folders
# --------------------------------------------------------------------------
def _draw_imagenet_image(rng: np.random.Generator, name: str,
                         size: int) -> np.ndarray:
    canvas = _plain(rng.uniform(40, 215, 3), 20.)(size, size, rng)
    r = rng.uniform(.25, .4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    poly = {
        'disc': lambda: _ellipse(cx, cy, r, r),
        'square': lambda: _rectangle(cx - r, cy - r, cx + r, cy + r),
        'triangle': lambda: _triangle(cx, cy, r),
        'cross': lambda: _cross(cx, cy, r),
    }[name]()
    _paint(canvas, _polygon_mask(poly, size, size), _IMAGENET_TEXTURES[name],
           rng)
    return _to_uint8(canvas)


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
    _check_positive('num_train', num_train)
    _check_positive('num_val', num_val)
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f'size must be an integer >= 16, got {size!r}')
    for split_id, (split, num) in enumerate(
        (('train', num_train), ('val', num_val))):
        for class_id, name in enumerate(IMAGENET_DEMO_CLASSES):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(num):
                rng = np.random.default_rng([seed, split_id, class_id, i])
                Image.fromarray(_draw_imagenet_image(rng, name, int(size))).save(
                    osp.join(folder, f'{name}_{i:05d}.JPEG'), quality=95)
    return root
