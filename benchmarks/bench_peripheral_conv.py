"""Speed and accuracy of the peripheral convolution implementations.

Every implementation in ``pelk_mm.PERIPHERAL_CONV_IMPLS`` (``dense`` =
expand + ``F.conv2d``, ``fft``, ``blocksum``, ``auto``) x kernel size x map
size x {forward, forward+backward}, timed in one run: the methods are
interleaved within every repetition and each time is the median over
repetitions, so the ratios against ``dense`` come from the same conditions.
The max abs error of each method against a float64 reference is reported
next to the dense float32 error (output, and for fwd+bwd also the input and
weight gradients). The reference is the ``fft`` implementation run in
float64 (dense float64 takes minutes at K=101; tests/test_fast_conv.py checks
float64 ``fft`` against float64 dense to 1e-10). Slow cases get fewer
repetitions (``--budget`` seconds per case, at least one).

Grids are PeLK's: centre 5 (``sharing_grid(K, 5)``), centre 7 for K >= 101.

Examples::

    python benchmarks/bench_peripheral_conv.py                # full sweep
    python benchmarks/bench_peripheral_conv.py --kernels 51 101 --sizes 128
    python benchmarks/bench_peripheral_conv.py --json > conv.json
    python benchmarks/bench_peripheral_conv.py --device cuda
"""
import argparse
import json
import platform
import statistics
import sys
import time

import torch

from pelk_mm.ops import PERIPHERAL_CONV_IMPLS, sharing_grid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch CPU threads (default 2)')
    parser.add_argument('--kernels', type=int, nargs='+',
                        default=[13, 31, 51, 101])
    parser.add_argument('--sizes', type=int, nargs='+',
                        default=[16, 32, 64, 128], help='square map sides')
    parser.add_argument('--channels', type=int, default=48)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--methods', nargs='+', default=None,
                        help='default: every registered implementation')
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'],
                        choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--reps', type=int, default=5,
                        help='timed repetitions per method (after warm-up)')
    parser.add_argument('--budget', type=float, default=20.0,
                        help='seconds of timed repetitions per case, which '
                        'caps --reps (at least 1 repetition)')
    parser.add_argument('--input-mean', type=float, default=0.0,
                        help='mean of the N(mean, 1) input (precision)')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object instead of the table')
    return parser.parse_args(argv)


def pelk_grid(kernel_size):
    return sharing_grid(kernel_size, 7 if kernel_size >= 101 else 5)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def _run(fn, x, weight, grid, grad_out):
    out = fn(x, weight, grid)
    if grad_out is not None:
        return (out, ) + torch.autograd.grad(out, (x, weight), grad_out)
    return (out, )


def bench_case(methods, kernel_size, size, mode, args, device):
    grid = pelk_grid(kernel_size)
    gen = torch.Generator().manual_seed(kernel_size * 1000 + size)
    shape = (args.batch, args.channels, size, size)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    x64 += args.input_mean
    w64 = torch.randn(args.channels, 1, len(grid), len(grid), generator=gen,
                      dtype=torch.float64) / kernel_size
    g64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    backward = mode == 'fwd+bwd'

    def inputs(dtype):
        x = x64.to(device, dtype).requires_grad_(backward)
        w = w64.to(device, dtype).requires_grad_(backward)
        return x, w, g64.to(device, dtype) if backward else None

    with torch.set_grad_enabled(backward):
        reference = _run(PERIPHERAL_CONV_IMPLS['fft'],
                         *inputs(torch.float64)[:2], grid,
                         inputs(torch.float64)[2])
        x, w, grad_out = inputs(torch.float32)
        errors, times = {}, {name: [] for name in methods}
        start = time.perf_counter()
        for name in methods:  # warm-up, and the accuracy
            result = _run(PERIPHERAL_CONV_IMPLS[name], x, w, grid, grad_out)
            errors[name] = [(r.double() - ref).abs().max().item()
                            for r, ref in zip(result, reference)]
        warm_up = time.perf_counter() - start
        reps = max(1, min(args.reps, int(args.budget / warm_up)))
        for rep in range(reps):
            order = methods[rep % len(methods):] + methods[:rep %
                                                           len(methods)]
            for name in order:
                _sync(device)
                start = time.perf_counter()
                _run(PERIPHERAL_CONV_IMPLS[name], x, w, grid, grad_out)
                _sync(device)
                times[name].append(time.perf_counter() - start)
    dense_ms = statistics.median(times['dense']) * 1e3
    rows = []
    for name in methods:
        ms = statistics.median(times[name]) * 1e3
        rows.append(
            dict(method=name, kernel_size=kernel_size, grid=list(grid),
                 size=size, mode=mode, reps=reps, ms=ms,
                 speedup_vs_dense=dense_ms / ms,
                 max_abs_err=dict(zip(('out', 'grad_x', 'grad_w'),
                                      errors[name]))))
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    methods = args.methods or sorted(PERIPHERAL_CONV_IMPLS)
    if 'dense' not in methods:
        methods = ['dense'] + methods
    machine = dict(
        device=(torch.cuda.get_device_name(device)
                if device.type == 'cuda' else platform.processor() or
                platform.machine()),
        threads=torch.get_num_threads(), torch=torch.__version__,
        python=platform.python_version(), batch=args.batch,
        channels=args.channels, input_mean=args.input_mean)
    rows = []
    for mode in args.modes:
        for kernel_size in args.kernels:
            for size in args.sizes:
                rows += bench_case(methods, kernel_size, size, mode, args,
                                   device)
                if not args.json:
                    print_rows(rows[-len(methods):], rows_header=not rows[
                        :-len(methods)])
    if args.json:
        json.dump(dict(machine=machine, results=rows), sys.stdout, indent=1)
        print()
    else:
        print('machine:', json.dumps(machine))


def print_rows(rows, rows_header):
    if rows_header:
        print(f'{"mode":8} {"K":>4} {"map":>4} {"method":9} {"ms":>10} '
              f'{"x dense":>8} {"reps":>4}  max abs err (out / grad_x / '
              'grad_w)')
    for row in rows:
        errs = ' / '.join(f'{v:.1e}' for v in row['max_abs_err'].values())
        print(f'{row["mode"]:8} {row["kernel_size"]:>4} {row["size"]:>4} '
              f'{row["method"]:9} {row["ms"]:>10.2f} '
              f'{row["speedup_vs_dense"]:>8.1f} {row["reps"]:>4}  {errs}')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
