"""Traffic model of the peripheral convolution: bytes and multiply-adds per
output element, and the time they imply on an H100 SXM and an H200.

For PeLK-T's four stages at 512 x 512 crops, batch 16 (the convolved 3/8 of
``int(1.3 * [96, 192, 384, 768])`` channels, maps 128 / 64 / 32 / 16,
kernels 51 / 49 / 47 / 13 with a 5 x 5 centre), every implementation is
written as the sequence of steps its code runs, each step with the HBM bytes
it moves and the multiply-adds (FMA-equivalent instructions: an add counts
as one) it executes per output element, and the dtype it computes in:

* ``dw7x7`` (reference) and ``dense``: one cuDNN depthwise kernel per pass,
  counted at the ideal traffic (read the input, write the output; the
  weight-gradient pass reads the input and the output gradient) and
  ``K^2`` multiply-adds per output and pass;
* ``fft`` (:mod:`pelk_mm.ops.fft_conv`) and ``blocksum``
  (:mod:`pelk_mm.ops.blocksum_conv`): eager torch ops, each reading its
  inputs and writing its outputs through HBM (their tensors exceed the L2
  at stages 1-3); a 2-D FFT counted as read, one intermediate pass, write;
  on the H100 / H200 (compute capability 9.0) their accumulation dtype is
  float64 (:mod:`pelk_mm.ops.precision`), so blocksum and the FFT weight
  gradient move 8-byte values and run at the FP64 rate; under bf16
  autocast both first cast to float32 and back (4 casts per fwd+bwd);
* ``triton`` (:mod:`pelk_mm.ops.triton_conv`): each kernel reads its inputs
  once from HBM and writes its output once (the halo re-reads and the
  scratch slot are counted as L1/L2 traffic, not HBM); its instruction
  count is the kernels' loops at their tiling (row sums ``K h``, band mix
  ``k' P h``, column sums ``K``; weight gradient: band sums ``2 K h``,
  scratch stores ``2 k' h`` and loads ``2 P h``, products ``P^2 h``; with
  ``h = HALO_W / BLOCK_W``, ``P`` the padded band count),
  plus the per-map mean and the float64 mean term of the weight gradient.

A step's time is ``max(bytes / bandwidth, 2 * FMAs / FLOP rate)``; an
implementation's is the sum over its steps (no overlap between steps, no
launch latency). It is a prediction, not a measurement:
``benchmarks/device_check.py`` times the same shapes.

Published figures (NVIDIA data sheets, SXM parts, dense, non-tensor rates:
depthwise convolutions and FFTs do not use tensor cores):

==========  ===========  ===========  ===========  ======================
part        HBM          FP32         FP64         BF16 tensor (unused)
==========  ===========  ===========  ===========  ======================
H100 SXM    3.35 TB/s    67 TFLOPS    34 TFLOPS    989 TFLOPS
H200 SXM    4.8 TB/s     67 TFLOPS    34 TFLOPS    989 TFLOPS
==========  ===========  ===========  ===========  ======================

(https://www.nvidia.com/en-us/data-center/h100/,
https://www.nvidia.com/en-us/data-center/h200/). Every implementation
accumulates in float32 or float64, so bf16 changes the bytes, not the rate.

Usage::

    python benchmarks/traffic_model.py            # markdown table
    python benchmarks/traffic_model.py --json
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pelk_mm.ops import sharing_grid  # noqa: E402
from pelk_mm.ops.fft_conv import fft_size  # noqa: E402
from pelk_mm.ops.triton_conv import _tiling  # noqa: E402

#: Bytes per second and FLOP/s (FP32 and FP64 CUDA-core rates).
HARDWARE = {
    'H100 SXM': dict(bandwidth=3.35e12, fp32=67e12, fp64=34e12),
    'H200 SXM': dict(bandwidth=4.8e12, fp32=67e12, fp64=34e12),
}
#: PeLK-T at 512 x 512: (stage, convolved channels, map side, kernel).
STAGES = [(1, 46, 128, 51), (2, 93, 64, 49), (3, 187, 32, 47),
          (4, 374, 16, 13)]
BATCH = 16
IMPLS = ('dw7x7', 'dense', 'fft', 'blocksum', 'triton')
#: Accumulation dtype bytes of fft / blocksum on compute capability 9.0.
WIDE = 8

Step = Tuple[str, float, float, str]  # name, bytes, FMAs, rate ('fp32'...)


def _cuDNN(kernel_size: int, b: int, backward: bool) -> List[Step]:
    taps = kernel_size**2
    steps = [('conv', 2 * b, taps, 'fp32')]
    if backward:
        steps += [('grad_x', 2 * b, taps, 'fp32'),
                  ('grad_w', 2 * b, taps, 'fp32')]
    return steps


def _casts(b: int) -> List[Step]:
    """bf16 autocast: the fast paths cast in and out (float32_under_autocast;
    backward casts the gradients the same way)."""
    return [] if b == 4 else [('cast in', b + 4, 0, 'fp32'),
                              ('cast out', 4 + b, 0, 'fp32')]


def _fft(size: int, grid, b: int, backward: bool) -> List[Step]:
    length = fft_size(size + sum(grid) // 2)
    real = length * length / size**2  # padded real elements per output
    half = length * (length // 2 + 1) / size**2  # one-sided complex ones
    log = 1.25 * real * 2 * (length.bit_length())  # 2.5 L^2 log2 L^2 flop/2

    def correlate(c: int) -> List[Step]:  # c: bytes of the real dtype
        z = 2 * c  # complex
        return [('mean', c, 1, 'fp32'), ('x - mean', 2 * c, 1, 'fp32'),
                ('rfft2', c + 3 * z * half, log, 'fp32'),
                ('times spectrum', 3 * z * half, 4 * half, 'fp32'),
                ('irfft2', 3 * z * half + c * real, log, 'fp32'),
                ('crop + mean term', 4 * c, 1, 'fp32')]

    steps = _casts(b) + correlate(4)
    if backward:
        z = 2 * WIDE
        steps += _casts(b) + correlate(4) + [
            ('x - mean, to float64', 4 + 4 + 4 + WIDE, 1, 'fp64'),
            ('rfft2(x) float64', WIDE + 3 * z * half, log, 'fp64'),
            ('dy to float64', 4 + WIDE, 0, 'fp64'),
            ('rfft2(dy) float64', WIDE + 3 * z * half, log, 'fp64'),
            ('conj(DY) X, sum over N', 4 * z * half, 4 * half, 'fp64'),
            ('mean term', 4 + 3 * WIDE + WIDE, 1, 'fp64')
        ]
    return steps


def _band_sums(bands: int) -> List[Step]:
    """blocksum's _band_sums in float64: cumsum, pad, index_select, diff."""
    d = WIDE
    return [('cumsum', 2 * d, 1, 'fp64'), ('pad', 2 * d, 0, 'fp64'),
            ('index_select', 2 * d * (bands + 1), 0, 'fp64'),
            ('diff', d * (2 * bands + 1), bands, 'fp64')]


def _blocksum_correlate(bands: int) -> List[Step]:
    d = WIDE
    return [('mean', d, 1, 'fp64'),
            ('x - mean', 2 * d, 1, 'fp64')] + _band_sums(bands) + [
                ('column cumsum', 2 * d * bands, bands, 'fp64'),
                ('column pad', 2 * d * bands, 0, 'fp64'),
                ('band mix einsum', d * (2 * bands + 1), bands *
                 (bands + 1), 'fp64'),
                ('gather (int64 index)', 3 * d * (bands + 1), 0, 'fp64'),
                ('sum of edges', d * (bands + 2), bands + 1, 'fp64'),
                ('mean term', 4 * d, 2, 'fp64')
            ]


def _blocksum(grid, b: int, backward: bool) -> List[Step]:
    bands = len(grid)
    d = WIDE
    steps = _casts(b) + [
        ('to float64', 4 + d, 0, 'fp64')
    ] + _blocksum_correlate(bands) + [('to float32', d + 4, 0, 'fp64')]
    if backward:
        steps += _casts(b) + [
            ('dy to float64', 4 + d, 0, 'fp64')
        ] + _blocksum_correlate(bands) + [
            ('grad_x to float32', d + 4, 0, 'fp64'),
            ('x to float64', 4 + d, 0, 'fp64'), ('mean', d, 1, 'fp64'),
            ('x - mean', 2 * d, 1, 'fp64')
        ] + _band_sums(bands) + _band_sums(bands) + [
            ('contraction einsum', 2 * d * bands, bands * bands, 'fp64'),
            ('mean term', 4 + 3 * d + d, 1, 'fp64')
        ]
    return steps


def triton_ops(size: int, grid) -> Tuple[float, float]:
    """Instructions per output of the forward and the weight-gradient
    kernel at the tiling :func:`pelk_mm.ops.triton_conv._tiling` picks."""
    kernel_size, bands = sum(grid), len(grid)
    block_w, halo_w, bands_p, *_ = _tiling(size, size, kernel_size, bands)
    h = halo_w / block_w
    forward = kernel_size * h + bands * bands_p * h + kernel_size
    weight = (2 * kernel_size * h + 2 * bands * h + 2 * bands_p * h +
              bands_p**2 * h)
    return forward, weight


def _triton(size: int, grid, b: int, backward: bool) -> List[Step]:
    forward, weight = triton_ops(size, grid)
    steps = [('correlate kernel', 2 * b, forward, 'fp32')]
    if backward:
        steps += [('grad_x kernel', 2 * b, forward, 'fp32'),
                  ('mean of x', b, 1, 'fp32'),
                  ('weight-grad kernel', 2 * b, weight, 'fp32'),
                  ('mean term (float64 sum)', b + 4 + 4, 1, 'fp32')]
    return steps


def steps(impl: str, size: int, grid, b: int, backward: bool) -> List[Step]:
    """The steps of ``impl`` on a ``size x size`` map with ``grid``;
    ``b``: bytes of the input dtype (4 float32, 2 bf16)."""
    if impl == 'dw7x7':
        return _cuDNN(7, b, backward)
    if impl == 'dense':
        return _cuDNN(sum(grid), b, backward)
    if impl == 'fft':
        return _fft(size, grid, b, backward)
    if impl == 'blocksum':
        return _blocksum(grid, b, backward)
    return _triton(size, grid, b, backward)


def seconds(step_list: List[Step], outputs: int, part: Dict) -> float:
    return sum(
        max(nbytes * outputs / part['bandwidth'], 2 * fmas * outputs /
            part[rate]) for _, nbytes, fmas, rate in step_list)


def model() -> List[dict]:
    rows = []
    for stage, channels, size, kernel_size in STAGES:
        grid = sharing_grid(kernel_size, 5)
        outputs = BATCH * channels * size * size
        for impl in IMPLS:
            row = dict(
                stage=stage,
                channels=channels,
                size=size,
                kernel_size=kernel_size,
                impl=impl)
            for mode, backward in (('fwd', False), ('fwd+bwd', True)):
                for precision, b in (('fp32', 4), ('bf16', 2)):
                    step_list = steps(impl, size, grid, b, backward)
                    row[f'{mode}|{precision}|bytes'] = sum(s[1]
                                                           for s in step_list)
                    row[f'{mode}|fmas'] = sum(s[2] for s in step_list)
                    for part, figures in HARDWARE.items():
                        row[f'{mode}|{precision}|{part}|ms'] = 1e3 * seconds(
                            step_list, outputs, figures)
            rows.append(row)
    return rows


def markdown(rows: List[dict]) -> str:
    """One line per stage and implementation; times in ms, and in
    multiples of the 7x7 on the same tensor."""
    head = ('| stage (C, map, K) | impl | fwd B/out fp32 / bf16 | fwd FMA/out '
            '| fwd+bwd B/out fp32 / bf16 | fwd+bwd FMA/out '
            '| fwd+bwd ms H100 fp32 / bf16 | fwd+bwd ms H200 fp32 / bf16 '
            '| x 7x7 (H100 fp32 / bf16) |')
    lines = [head, '|' + '---|' * 9]
    reference = {}
    for row in rows:
        key = row['stage']
        h100 = [row[f'fwd+bwd|{p}|H100 SXM|ms'] for p in ('fp32', 'bf16')]
        if row['impl'] == 'dw7x7':
            reference[key] = h100
        h200 = [row[f'fwd+bwd|{p}|H200 SXM|ms'] for p in ('fp32', 'bf16')]
        ratio = [t / r for t, r in zip(h100, reference[key])]
        lines.append(
            f'| {row["stage"]} ({row["channels"]}, {row["size"]}, '
            f'{row["kernel_size"]}) | {row["impl"]} | '
            f'{row["fwd|fp32|bytes"]:.0f} / {row["fwd|bf16|bytes"]:.0f} | '
            f'{row["fwd|fmas"]:.0f} | '
            f'{row["fwd+bwd|fp32|bytes"]:.0f} / '
            f'{row["fwd+bwd|bf16|bytes"]:.0f} | {row["fwd+bwd|fmas"]:.0f} | '
            f'{h100[0]:.3f} / {h100[1]:.3f} | {h200[0]:.3f} / {h200[1]:.3f} '
            f'| {ratio[0]:.1f} / {ratio[1]:.1f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--json', action='store_true', help='print JSON')
    args = parser.parse_args(argv)
    rows = model()
    if args.json:
        print(
            json.dumps(
                dict(batch=BATCH, hardware=HARDWARE, rows=rows), indent=1))
    else:
        print(markdown(rows), end='')


if __name__ == '__main__':
    main()
