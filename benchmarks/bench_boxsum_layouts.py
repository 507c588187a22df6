"""The two layouts of the structured deploy op, side by side: band matrices
against box means (:mod:`pelk_mm.ops.boxsum_conv`), per map size, in
onnxruntime and in PyTorch, on the CPU.

Shapes: PeLK-T's four token mixers at a 512 x 512 input (channels 46 / 93 /
187 / 374, maps 128 / 64 / 32 / 16, K 51 / 49 / 47 / 13, centre 5x5), or
``--shapes C:H:K ...``. Per shape, each layout is exported as
``tools/deployment/pytorch2onnx.py`` exports (opset 17, dynamic batch) and run
by onnxruntime's CPU provider with ``--threads`` intra-op threads, and run by
PyTorch eagerly. Per runtime, the two layouts are interleaved (the order
rotates every round) over ``--iters`` rounds after one warm-up each; the
runtimes are timed one after the other, never interleaved (each one's idle
worker threads spin for a while after a call and would slow the other's
next one). onnxruntime's sessions have its default options, as in
``bench_peers.py``. The medians, the ratios
``matrices / means`` and the layout :func:`~pelk_mm.ops.boxsum_conv.
uses_band_matrices` picks are reported with ``k' (H + W + k')``, the
multiply-adds per output of the band matrices, which
:data:`~pelk_mm.ops.boxsum_conv.BAND_MATRIX_MAX_MACS` bounds. ``--save DIR``
writes ``DIR/boxsum_layouts_cpu_<date>.json`` and a Markdown table beside it.

Example::

    python benchmarks/bench_boxsum_layouts.py --save benchmarks/results
    python benchmarks/bench_boxsum_layouts.py --shapes 8:12:13 --iters 1
"""
import argparse
import io
import sys

import torch
import torch.nn as nn
from bench_onnx import export_tool, session
from bench_peers import Clock, interleaved
from run_record import run_record, run_start, save_result, with_run_line

from pelk_mm.ops import sharing_grid
from pelk_mm.ops.boxsum_conv import (BAND_MATRIX_MAX_MACS,
                                     boxsum_peripheral_conv,
                                     uses_band_matrices)

#: PeLK-T's token mixers at 512 x 512: (conv channels, map side, K)
PELK_T_512 = ('46:128:51', '93:64:49', '187:32:47', '374:16:13')
LAYOUTS = {'matrices': True, 'means': False}


class Layout(nn.Module):
    """``boxsum_peripheral_conv`` with one layout and random weights."""

    def __init__(self, channels, grid, band_matrices):
        super().__init__()
        self.grid, self.band_matrices = grid, band_matrices
        self.weight = nn.Parameter(
            torch.randn(channels, 1, len(grid), len(grid)))

    def forward(self, x):
        return boxsum_peripheral_conv(x, self.weight, self.grid,
                                      self.band_matrices)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--shapes',
        nargs='+',
        default=PELK_T_512,
        metavar='C:H:K',
        help='conv channels, square map side and kernel size (centre 5x5); '
        "default: PeLK-T's four stages at 512 x 512")
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--iters', type=int, default=9)
    parser.add_argument(
        '--save', metavar='DIR', help='write DIR/boxsum_layouts_cpu_<date>.*')
    args = parser.parse_args(argv)
    usage = '--shapes takes C:H:K triples of integers, e.g. 46:128:51'
    try:
        args.shapes = [tuple(map(int, s.split(':'))) for s in args.shapes]
    except ValueError:
        parser.error(usage)
    if any(len(s) != 3 for s in args.shapes):
        parser.error(usage)
    return args


def ort_call(module, x, threads, tool):
    """The exported ``module`` (as ``pytorch2onnx.py``'s ``tool`` exports)
    run by onnxruntime on ``x``, as a call."""
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module, (x, ),
            buffer,
            input_names=['x'],
            dynamic_axes={'x': {
                0: 'batch'
            }},
            opset_version=tool.OPSET,
            **tool.exporter_kwargs())
    ort_session = session(buffer.getvalue(), threads)
    feed = {'x': x.numpy()}
    return lambda: ort_session.run(None, feed)


def time_shape(channels, side, kernel_size, args, tool):
    grid = sharing_grid(kernel_size, 5)
    torch.manual_seed(0)
    x = torch.randn(1, channels, side, side)
    runs = {}
    for layout, band_matrices in LAYOUTS.items():
        module = Layout(channels, grid, band_matrices).eval()
        runs[f'ort_{layout}'] = ort_call(module, x, args.threads, tool)

        def eager(module=module):
            with torch.no_grad():
                module(x)

        runs[f'torch_{layout}'] = eager
    medians, times = {}, {}
    for runtime in ('ort', 'torch'):
        timed = interleaved(
            {
                f'{runtime}_{layout}': runs[f'{runtime}_{layout}']
                for layout in LAYOUTS
            }, args.iters, Clock(torch.device('cpu')))
        medians.update(timed['median_s'])
        times.update(timed['times_s'])
    return dict(
        channels=channels,
        side=side,
        kernel_size=kernel_size,
        grid=list(grid),
        macs_per_output=len(grid) * (2 * side + len(grid)),
        picked='matrices' if uses_band_matrices(grid, side, side) else 'means',
        median_s=medians,
        times_s=times,
        ratios={
            runtime:
            medians[f'{runtime}_matrices'] / medians[f'{runtime}_means']
            for runtime in ('ort', 'torch')
        })


def markdown(result):
    lines = [
        "| C | H = W | K | k' (H + W + k') | picked | onnxruntime ms "
        '(matrices / means) | ratio | PyTorch ms (matrices / means) | '
        'ratio |', '|---' * 9 + '|'
    ]
    for row in result['results']:
        med = {k: v * 1e3 for k, v in row['median_s'].items()}
        lines.append(
            f'| {row["channels"]} | {row["side"]} | {row["kernel_size"]} | '
            f'{row["macs_per_output"]} | {row["picked"]} | '
            f'{med["ort_matrices"]:.1f} / {med["ort_means"]:.1f} | '
            f'{row["ratios"]["ort"]:.2f} | {med["torch_matrices"]:.1f} / '
            f'{med["torch_means"]:.1f} | {row["ratios"]["torch"]:.2f} |')
    return with_run_line(lines, result)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    started, load_before = run_start()
    tool = export_tool()
    rows = [time_shape(*shape, args, tool) for shape in args.shapes]
    result = dict(
        run=run_record(
            started,
            load_before,
            threads=args.threads,
            iters=args.iters,
            onnxruntime=ort.__version__,
            band_matrix_max_macs=BAND_MATRIX_MAX_MACS),
        results=rows)
    table = markdown(result)
    print(table)
    if args.save:
        path = save_result(result, args.save, 'boxsum_layouts_cpu', started,
                           table)
        print(f'saved {path} and its .md')


if __name__ == '__main__':
    sys.exit(main())
