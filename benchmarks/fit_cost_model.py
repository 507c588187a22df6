"""Fit ``impl='auto'``'s cost model to a benchmark's timings.

Reads the JSON of ``benchmarks/bench_peripheral_conv.py --json`` (or
``--save``), and fits, per mode (``fwd`` / ``fwd+bwd``) and implementation
(``dense``, ``fft``, ``blocksum``), the non-negative coefficients ``(a, b, c)``
of :func:`pelk_mm.ops.impl_selection.work_terms` by least squares on the
relative error (the way the CPU entry of ``COST_COEFFICIENTS`` was fitted):
minimise ``sum_i ((a f1_i + b f2_i + c) / t_i - 1)^2`` over ``a, b, c >= 0``
(exactly: the best unconstrained fit over every support of the three
coefficients, kept where non-negative).

Prints the ``COST_COEFFICIENTS`` entry for the device type, then, per
measured cell, the fitted model's pick against the fastest exact method and
whether the pick is within ``--tolerance`` (default 10 %) of it.
``--check`` exits 1 unless every cell is.

Example::

    python benchmarks/fit_cost_model.py results/conv_cuda.json --check
"""
import argparse
import itertools
import json
import sys

import torch

from pelk_mm.ops.impl_selection import work_terms

IMPLS = ('dense', 'fft', 'blocksum')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('results', help='JSON of bench_peripheral_conv.py')
    parser.add_argument(
        '--device-type',
        default=None,
        help='key of the entry (default: cuda if the JSON '
        'names a compute capability, else cpu)')
    parser.add_argument(
        '--precision',
        default='fp32',
        help='rows of this precision (default fp32)')
    parser.add_argument(
        '--layout', default='nchw', help='rows of this layout (default nchw)')
    parser.add_argument('--tolerance', type=float, default=0.10)
    parser.add_argument(
        '--check',
        action='store_true',
        help='exit 1 unless every pick is within tolerance')
    return parser.parse_args(argv)


def cells(rows, precision='fp32', layout='nchw'):
    """``{(mode, N, C, H, grid): {impl: seconds}}`` of the exact methods."""
    table = {}
    for row in rows:
        if (row.get('precision', 'fp32') != precision
                or row.get('layout', 'nchw') != layout
                or row['method'] not in IMPLS):
            continue
        key = (row['mode'], row.get('batch', 1), row.get('channels',
                                                         48), row['size'],
               tuple(row['grid']))
        table.setdefault(key, {})[row['method']] = row['ms'] / 1e3
    return {
        key: times
        for key, times in table.items() if set(times) == set(IMPLS)
    }


def features(impl, key):
    """``(f1, f2, 1)`` of one cell for ``impl``."""
    _, batch, channels, size, grid = key
    return work_terms(impl, batch * channels, size, size, grid) + (1.0, )


def nnls_relative(terms, seconds):
    """Non-negative ``(a, b, c)`` minimising the squared relative error."""
    design = torch.tensor(terms, dtype=torch.float64)
    target = torch.tensor(seconds, dtype=torch.float64)
    scaled = design / target[:, None]
    ones = torch.ones_like(target)
    norms = scaled.abs().amax(0).clamp_min(1e-300)  # column scaling
    best, best_residual = (0.0, 0.0, 0.0), ones.square().sum().item()
    for support in itertools.chain.from_iterable(
            itertools.combinations(range(3), k) for k in (1, 2, 3)):
        cols = list(support)
        if any(not scaled[:, i].any() for i in cols):
            continue
        sub = scaled[:, cols] / norms[cols]
        solution = torch.linalg.lstsq(sub, ones[:, None]).solution[:, 0]
        solution = solution / norms[cols]
        if (solution < 0).any():
            continue
        coeffs = [0.0, 0.0, 0.0]
        for i, value in zip(cols, solution.tolist()):
            coeffs[i] = value
        residual = (scaled @ torch.tensor(coeffs, dtype=torch.float64) -
                    ones).square().sum().item()
        if residual < best_residual:
            best, best_residual = tuple(coeffs), residual
    return best


def fit(table):
    """``{mode: {impl: (a, b, c)}}`` fitted to ``cells()``'s table."""
    coefficients = {}
    for mode in sorted({key[0] for key in table}):
        keys = [key for key in table if key[0] == mode]
        coefficients[mode] = {
            impl:
            nnls_relative([features(impl, key) for key in keys],
                          [table[key][impl] for key in keys])
            for impl in IMPLS
        }
    return coefficients


def picks(table, coefficients, tolerance):
    """Per cell: model pick, fastest, the pick's time over the fastest."""
    report = []
    for key, times in sorted(table.items(), key=lambda item: str(item[0])):
        coeffs = coefficients[key[0]]
        predicted = {
            impl: sum(c * f for c, f in zip(coeffs[impl], features(impl, key)))
            for impl in IMPLS
        }
        pick = min(predicted, key=predicted.get)
        fastest = min(times, key=times.get)
        ratio = times[pick] / times[fastest]
        report.append(
            dict(
                cell=key,
                pick=pick,
                fastest=fastest,
                ratio=ratio,
                ok=ratio <= 1 + tolerance,
                ms={
                    k: v * 1e3
                    for k, v in times.items()
                }))
    return report


def format_entry(device_type, coefficients):
    lines = [f"    '{device_type}': {{"]
    for mode, impls in coefficients.items():
        lines.append(f"        '{mode}': {{")
        for impl, (a, b, c) in impls.items():
            lines.append(f"            '{impl}': ({a:.3g}, {b:.3g}, {c:.3g}),")
        lines.append('        },')
    lines.append('    },')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    with open(args.results) as file:
        result = json.load(file)
    device_type = args.device_type or ('cuda' if 'capability' in result.get(
        'machine', {}) else 'cpu')
    table = cells(result['results'], args.precision, args.layout)
    if not table:
        raise SystemExit(f'no {args.precision} / {args.layout} cells with '
                         f'all of {IMPLS} in {args.results}')
    coefficients = fit(table)
    report = picks(table, coefficients, args.tolerance)
    print(f'# fitted to {len(table)} cells of {args.results} '
          f'({result.get("machine", {}).get("device")})')
    print(format_entry(device_type, coefficients))
    print()
    print('| mode | N | C | H | K | dense / fft / blocksum ms | pick | '
          'fastest | pick / fastest |')
    print('|---|---|---|---|---|---|---|---|---|')
    for row in report:
        mode, batch, channels, size, grid = row['cell']
        ms = ' / '.join(f'{row["ms"][impl]:.3g}' for impl in IMPLS)
        flag = '' if row['ok'] else ' **over**'
        print(f'| {mode} | {batch} | {channels} | {size} | {sum(grid)} | '
              f'{ms} | {row["pick"]} | {row["fastest"]} | '
              f'{row["ratio"]:.2f}{flag} |')
    within = sum(row['ok'] for row in report)
    print(f'\nwithin {args.tolerance:.0%} of the fastest exact method: '
          f'{within} of {len(report)} cells')
    if args.check and within < len(report):
        sys.exit(1)


if __name__ == '__main__':
    main()
