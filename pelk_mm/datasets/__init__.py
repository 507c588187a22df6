from .demo_data import (ADE20K_DEMO_CLASSES, COCO_CATEGORIES, COCO_DEMO_CLASSES,
                        IMAGENET_DEMO_CLASSES, make_ade20k_demo, make_coco_demo,
                        make_imagenet_demo)

__all__ = [
    'ADE20K_DEMO_CLASSES', 'COCO_CATEGORIES', 'COCO_DEMO_CLASSES',
    'IMAGENET_DEMO_CLASSES', 'make_ade20k_demo', 'make_coco_demo',
    'make_imagenet_demo'
]
