"""Write a small procedurally drawn dataset in a real layout (no download).

    python tools/make_demo_data.py ade20k data/ade_demo --num 200 --num-val 50
    python tools/make_demo_data.py coco data/coco_demo --num 100 --num-val 20
    python tools/make_demo_data.py imagenet data/imagenet_demo --num 20

``--num`` / ``--num-val`` count images (per class for ``imagenet``). The output
is deterministic for a given ``--seed``. See :mod:`pelk_mm.demo` for the
layouts and classes.
"""
import argparse
import time

from pelk_mm.demo import make_ade20k_demo, make_coco_demo, make_imagenet_demo

DEFAULTS = dict(
    ade20k=dict(num=200, num_val=50, size=(160, 160)),
    coco=dict(num=100, num_val=20, size=(192, 160)),
    imagenet=dict(num=20, num_val=5, size=(64, 64)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('layout', choices=sorted(DEFAULTS))
    parser.add_argument('out', help='output directory')
    parser.add_argument('--num', type=int, help='training images')
    parser.add_argument('--num-val', type=int, help='validation images')
    parser.add_argument(
        '--size',
        type=int,
        nargs=2,
        metavar=('W', 'H'),
        help='image size (imagenet: square, W is used)')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    defaults = DEFAULTS[args.layout]
    num = args.num or defaults['num']
    num_val = args.num_val or defaults['num_val']
    size = tuple(args.size or defaults['size'])
    start = time.time()
    if args.layout == 'ade20k':
        make_ade20k_demo(args.out, num, num_val, size=size, seed=args.seed)
    elif args.layout == 'coco':
        make_coco_demo(args.out, num, num_val, size=size, seed=args.seed)
    else:
        make_imagenet_demo(
            args.out, num, num_val, size=size[0], seed=args.seed)
    print(f'{args.layout} demo data ({num} train / {num_val} val, size '
          f'{size}, seed {args.seed}) written to {args.out} in '
          f'{time.time() - start:.1f}s')


if __name__ == '__main__':
    main()
