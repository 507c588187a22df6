"""Speed, memory and accuracy of the peripheral convolution implementations.

Every implementation in ``pelk_mm.PERIPHERAL_CONV_IMPLS`` (``dense`` =
expand + ``F.conv2d``, ``fft``, ``blocksum``, ``auto``) plus the baseline
``dw7x7`` (a 7x7 depthwise ``F.conv2d`` on the same tensor: ConvNeXt's cost)
is timed on every case of the sweep {forward, forward+backward} x precision
(``fp32``, or ``bf16`` / ``fp16`` autocast) x memory layout (``nchw``,
``channels_last``) x batch x channels x map size x kernel size, in one run:
the methods are interleaved within every repetition and each time is the
median over repetitions, so the ratios against ``dense`` and ``dw7x7`` come
from the same conditions. On CUDA the timings are CUDA-event times of one
call after two warm-up calls (``torch.cuda.synchronize`` around each), and
``peak_mib`` is ``torch.cuda.max_memory_allocated`` during one more call
minus the memory allocated before it (inputs excluded); on CPU, wall-clock
``perf_counter`` times after one warm-up call, and no memory.

The max abs error of each method against a float64 reference is reported
next to the dense one (output, and for fwd+bwd also the input and weight
gradients). The reference is the ``fft`` implementation run in float64
(dense float64 takes minutes at K=101; tests/test_fast_conv.py checks float64
``fft`` against float64 dense to 1e-10). Slow cases get fewer repetitions
(``--budget`` seconds per case, at least one).

Grids are PeLK's: centre 5 (``sharing_grid(K, 5)``), centre 7 for K >= 101.

Examples::

    python benchmarks/bench_peripheral_conv.py                # CPU sweep
    python benchmarks/bench_peripheral_conv.py --kernels 51 101 --sizes 128
    python benchmarks/bench_peripheral_conv.py --json > conv.json
    python benchmarks/bench_peripheral_conv.py --device cuda \\
        --precisions fp32 bf16 --save results/conv_cuda   # .json + .md
"""
import argparse
import contextlib
import itertools
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from pelk_mm.ops import PERIPHERAL_CONV_IMPLS, sharing_grid
from pelk_mm.ops.impl_tuning import choose_impl

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
BASELINE = 'dw7x7'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument(
        '--threads', type=int, default=2, help='torch CPU threads (default 2)')
    parser.add_argument(
        '--kernels', type=int, nargs='+', default=[13, 31, 51, 101])
    parser.add_argument(
        '--sizes',
        type=int,
        nargs='+',
        default=[16, 32, 64, 128],
        help='square map sides')
    parser.add_argument('--channels', type=int, nargs='+', default=[48])
    parser.add_argument('--batch', type=int, nargs='+', default=[1])
    parser.add_argument(
        '--precisions',
        nargs='+',
        default=['fp32'],
        choices=sorted(PRECISIONS),
        help='fp32, or autocast to bf16 / fp16')
    parser.add_argument(
        '--layouts',
        nargs='+',
        default=['nchw'],
        choices=['nchw', 'channels_last'])
    parser.add_argument(
        '--methods',
        nargs='+',
        default=None,
        help='default: every registered implementation')
    parser.add_argument(
        '--modes',
        nargs='+',
        default=['fwd', 'fwd+bwd'],
        choices=['fwd', 'fwd+bwd'])
    parser.add_argument(
        '--reps',
        type=int,
        default=5,
        help='timed repetitions per method (after warm-up)')
    parser.add_argument(
        '--budget',
        type=float,
        default=20.0,
        help='seconds of timed repetitions per case, which '
        'caps --reps (at least 1 repetition)')
    parser.add_argument(
        '--input-mean',
        type=float,
        default=0.0,
        help='mean of the N(mean, 1) input (precision)')
    parser.add_argument(
        '--no-errors',
        action='store_true',
        help='skip the float64 reference and the errors')
    parser.add_argument(
        '--json',
        action='store_true',
        help='print one JSON object instead of the table')
    parser.add_argument(
        '--save',
        metavar='PREFIX',
        help='also write PREFIX.json and PREFIX.md')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods or ()) - set(PERIPHERAL_CONV_IMPLS))
    if unknown:
        parser.error(f'--methods {" ".join(unknown)}: not an implementation '
                     'here; available: '
                     f'{", ".join(sorted(PERIPHERAL_CONV_IMPLS))}')
    return args


def pelk_grid(kernel_size):
    return sharing_grid(kernel_size, 7 if kernel_size >= 101 else 5)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _dw7x7(x, weight, grid):
    """ConvNeXt's 7x7 depthwise conv on the same tensor (``weight`` is a
    ``(C, 1, 7, 7)`` kernel here)."""
    return F.conv2d(x, weight, padding=3, groups=x.shape[1])


def _autocast(precision, device):
    dtype = PRECISIONS[precision]
    return (contextlib.nullcontext() if dtype is None else torch.autocast(
        device.type, dtype=dtype))


def _run(fn, x, weight, grid, grad_out, precision, device):
    with _autocast(precision, device):
        out = fn(x, weight, grid)
    if grad_out is not None:
        return (out, ) + torch.autograd.grad(out, (x, weight),
                                             grad_out.to(out.dtype))
    return (out, )


def _timed(fn, device):
    """Seconds of one call of ``fn``: CUDA events on CUDA."""
    if device.type == 'cuda':
        start, end = (torch.cuda.Event(enable_timing=True) for _ in '12')
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peak_mib(fn, device):
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def bench_case(methods, case, args, device):
    """Time every method on one case; returns one row per method."""
    mode, precision, layout, batch, channels, size, kernel_size = case
    grid = pelk_grid(kernel_size)
    gen = torch.Generator().manual_seed(kernel_size * 1000 + size)
    shape = (batch, channels, size, size)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    x64 += args.input_mean
    w64 = torch.randn(
        channels, 1, len(grid), len(grid), generator=gen,
        dtype=torch.float64) / kernel_size
    w7 = torch.randn(channels, 1, 7, 7, generator=gen) / 7
    g64 = torch.randn(shape, generator=gen, dtype=torch.float64)
    backward = mode == 'fwd+bwd'
    memory_format = (
        torch.channels_last
        if layout == 'channels_last' else torch.contiguous_format)

    def inputs(dtype, weight=w64):
        x = x64.to(device, dtype).contiguous(memory_format=memory_format)
        return (x.requires_grad_(backward),
                weight.to(device, dtype).requires_grad_(backward),
                g64.to(device, dtype) if backward else None)

    fns = {
        name: _dw7x7 if name == BASELINE else PERIPHERAL_CONV_IMPLS[name]
        for name in methods
    }
    with torch.set_grad_enabled(backward):
        args_of = {
            name: (inputs(torch.float32, w7 if name == BASELINE else w64) +
                   (precision, device))
            for name in methods
        }
        calls = {
            name: (lambda name=name: _run(fns[name], args_of[name][0], args_of[
                name][1], grid, args_of[name][2], precision, device))
            for name in methods
        }
        errors = {}
        if not args.no_errors:
            reference = _run(PERIPHERAL_CONV_IMPLS['fft'],
                             *inputs(torch.float64)[:2], grid,
                             inputs(torch.float64)[2], 'fp32', device)
        start = time.perf_counter()
        for name in methods:  # warm-up, and the accuracy
            result = calls[name]()
            if device.type == 'cuda':
                calls[name]()
            if name != BASELINE and not args.no_errors:
                errors[name] = [(r.double() - ref).abs().max().item()
                                for r, ref in zip(result, reference)]
            del result
        _sync(device)
        warm_up = (time.perf_counter() -
                   start) / (2 if device.type == 'cuda' else 1)
        reps = max(1, min(args.reps, int(args.budget / max(warm_up, 1e-9))))
        times = {name: [] for name in methods}
        for rep in range(reps):
            shift = rep % len(methods)
            for name in methods[shift:] + methods[:shift]:
                times[name].append(_timed(calls[name], device))
        peaks = {name: _peak_mib(calls[name], device) for name in methods}
        with _autocast(precision, device):  # the pick 'auto' just ran
            x, w = args_of['dense'][:2]
            picked = (choose_impl(x, w, grid) if 'auto' in methods else None)
    medians = {name: statistics.median(times[name]) * 1e3 for name in methods}
    rows = []
    for name in methods:
        if name == BASELINE:
            continue
        rows.append(
            dict(
                method=name,
                mode=mode,
                precision=precision,
                layout=layout,
                batch=batch,
                channels=channels,
                size=size,
                kernel_size=kernel_size,
                grid=list(grid),
                reps=reps,
                ms=medians[name],
                dense_ms=medians['dense'],
                dw7x7_ms=medians.get(BASELINE),
                speedup_vs_dense=medians['dense'] / medians[name],
                x_dw7x7=(medians[name] /
                         medians[BASELINE] if BASELINE in medians else None),
                peak_mib=peaks[name],
                auto_pick=picked if name == 'auto' else None,
                max_abs_err=dict(
                    zip(('out', 'grad_x', 'grad_w'), errors.get(name, [])))))
    return rows


def machine_info(device):
    info = dict(
        torch=torch.__version__,
        python=platform.python_version(),
        threads=torch.get_num_threads(),
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=props.name,
            capability=list(torch.cuda.get_device_capability(device)),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info.update(device=platform.processor() or platform.machine())
    return info


def cases(args):
    return list(
        itertools.product(args.modes, args.precisions, args.layouts,
                          args.batch, args.channels, args.sizes, args.kernels))


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    methods = args.methods or sorted(PERIPHERAL_CONV_IMPLS)
    methods = ['dense'] + [m for m in methods if m != 'dense'] + [BASELINE]
    machine = machine_info(device)
    machine.update(input_mean=args.input_mean)
    result = dict(machine=machine, results=[])
    for case in cases(args):
        new = bench_case(methods, case, args, device)
        if not args.json:
            print_rows(new, rows_header=not result['results'])
        result['results'] += new
        if args.save:  # after every case: a run cut short keeps its rows
            save(result, args.save)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print('machine:', json.dumps(machine))


def save(result, prefix):
    with open(f'{prefix}.json', 'w') as out:
        json.dump(result, out, indent=1)
    with open(f'{prefix}.md', 'w') as out:
        out.write(markdown_table(result))


def markdown_table(result):
    """One line per case: dense and 7x7 times, every method's ms and
    speed-up over dense, ``auto``'s pick."""
    by_case = {}
    for row in result['results']:
        key = tuple(row[k] for k in ('mode', 'precision', 'layout', 'batch',
                                     'channels', 'size', 'kernel_size'))
        by_case.setdefault(key, []).append(row)
    methods = [
        r['method'] for r in next(iter(by_case.values()))
        if r['method'] != 'dense'
    ] if by_case else []
    lines = [
        f'machine: {json.dumps(result["machine"])}', '',
        '| mode | prec | layout | N | C | H | K | dense ms | 7x7 ms | ' +
        ' | '.join(f'{m} ms (x dense)' for m in methods) +
        ' | auto pick | auto / 7x7 | auto peak MiB |',
        '|' + '---|' * (12 + len(methods))
    ]
    for key, rows in by_case.items():
        named = {r['method']: r for r in rows}
        first = rows[0]
        auto = named.get('auto', {})
        cells = [str(k) for k in key] + [
            f'{first["dense_ms"]:.3g}',
            '-' if first['dw7x7_ms'] is None else f'{first["dw7x7_ms"]:.3g}'
        ] + [
            f'{named[m]["ms"]:.3g} ({named[m]["speedup_vs_dense"]:.1f})'
            for m in methods
        ] + [
            str(auto.get('auto_pick')),
            '-' if auto.get('x_dw7x7') is None else f'{auto["x_dw7x7"]:.2f}',
            '-' if auto.get('peak_mib') is None else f'{auto["peak_mib"]:.0f}'
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def print_rows(rows, rows_header):
    if rows_header:
        print(f'{"mode":8} {"prec":4} {"layout":13} {"N":>3} {"C":>4} '
              f'{"map":>4} {"K":>4} {"method":9} {"ms":>10} {"x dense":>8} '
              f'{"/ 7x7":>7} {"reps":>4}  max abs err (out / grad_x / '
              'grad_w)')
    for row in rows:
        errs = ' / '.join(f'{v:.1e}' for v in row['max_abs_err'].values())
        x7 = '-' if row['x_dw7x7'] is None else f'{row["x_dw7x7"]:.2f}'
        print(f'{row["mode"]:8} {row["precision"]:4} {row["layout"]:13} '
              f'{row["batch"]:>3} {row["channels"]:>4} {row["size"]:>4} '
              f'{row["kernel_size"]:>4} {row["method"]:9} {row["ms"]:>10.3f} '
              f'{row["speedup_vs_dense"]:>8.1f} {x7:>7} {row["reps"]:>4}  '
              f'{errs}')
    sys.stdout.flush()


if __name__ == '__main__':
    main()
