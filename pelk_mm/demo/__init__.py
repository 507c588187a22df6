"""Small procedurally drawn datasets in ADE20K, COCO and ImageNet layouts.

The built-in demo and the end-to-end tests need data that needs no download,
that the unmodified mmseg / mmdet / mmpretrain dataset classes read, and that a
small network can actually learn in minutes on a CPU. Every image is drawn from
a few shapes whose colour and texture depend on their class, so the labels are
learnable, with per-image jitter so they are not trivial.

Everything is deterministic: image ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, s, i])`` (ImageNet: ``[seed, s, class,
i]``), so the same seed gives the same files
byte for byte (JPEG encoding included, for a given Pillow build), whatever the
number of images asked for.

:mod:`~pelk_mm.demo.drawing` holds the textures and polygons; one module per
layout writes it (:mod:`~pelk_mm.demo.ade20k`, :mod:`~pelk_mm.demo.coco`,
:mod:`~pelk_mm.demo.imagenet`; each documents its directory layout). The
package needs numpy and Pillow and registers nothing; ``import pelk_mm`` does
not import it.
"""
from .ade20k import ADE20K_DEMO_CLASSES, make_ade20k_demo
from .coco import COCO_CATEGORIES, COCO_DEMO_CLASSES, make_coco_demo
from .imagenet import IMAGENET_DEMO_CLASSES, make_imagenet_demo

__all__ = [
    'ADE20K_DEMO_CLASSES', 'COCO_CATEGORIES', 'COCO_DEMO_CLASSES',
    'IMAGENET_DEMO_CLASSES', 'make_ade20k_demo', 'make_coco_demo',
    'make_imagenet_demo'
]
