"""What ``impl='auto'``'s measure-once dispatch picks, and what it costs.

For every layer shape of the preset, a ``PeripheralConv2d(impl='auto')`` runs
one step (forward, plus backward in ``train`` mode) with a fresh
:class:`pelk_mm.ops.impl_tuning.ImplTuner`: that first step includes the timing
of the candidates (``triton`` too on CUDA with Triton). Then ``--steps`` steps
of the same module are timed, interleaved with steps of a twin module fixed to
the picked implementation (same weights): their ratio is the per-step cost of
the dispatch (a signature and a dict lookup), which should be 1.00 within
noise; the first step against the steady one is the one-off cost.

Reported per shape and mode: the pick, the candidates' measured times, the
cost model's pick (:func:`~pelk_mm.ops.impl_selection.select_impl`, for
comparison), the first-step seconds, the median steady step of ``auto``
and of the fixed twin, and their ratio. On the CPU, which has calibrated
coefficients, the tuner is forced into its timing mode (``'measure'``);
elsewhere ``auto`` measures by default.

Examples::

    python benchmarks/bench_impl_tuning.py                 # CPU, small
    python benchmarks/bench_impl_tuning.py --device cuda --preset pelk-t \\
        --amp bf16 --save results/tuning_cuda           # .json + .md
"""
import argparse
import contextlib
import json
import platform
import statistics
import sys
import time

import torch

from pelk_mm.ops import PeripheralConv2d, impl_tuning
from pelk_mm.ops.impl_selection import select_impl

#: Layer shapes ``(N, C, H, W, K)``: PeLK-T's peripheral convs (3/8 of the
#: channels) on a 512 x 512 image at batch 2, and small CPU ones.
PRESETS = {
    'pelk-t': [(2, 46, 128, 128, 51), (2, 93, 64, 64, 49),
               (2, 187, 32, 32, 47), (2, 374, 16, 16, 13)],
    'small': [(2, 16, 32, 32, 31), (2, 32, 16, 16, 13), (1, 48, 16, 16, 51)],
    'smoke': [(2, 4, 12, 12, 13)],
}
AMP = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--threads', type=int, default=2, help='torch CPU threads (default 2)')
    parser.add_argument('--preset', default='small', choices=sorted(PRESETS))
    parser.add_argument(
        '--modes',
        nargs='+',
        default=['train', 'infer'],
        choices=['train', 'infer'])
    parser.add_argument('--amp', default='none', choices=sorted(AMP))
    parser.add_argument(
        '--steps',
        type=int,
        default=7,
        help='timed steady steps per module (default 7)')
    parser.add_argument(
        '--save', default=None, help='write PREFIX.json and PREFIX.md')
    return parser.parse_args(argv)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _seconds(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_layer(layer, mode, args, device):
    batch, channels, height, width, kernel_size = layer
    torch.manual_seed(0)
    auto = PeripheralConv2d(channels, kernel_size).to(device)
    x = torch.randn(
        batch,
        channels,
        height,
        width,
        device=device,
        requires_grad=mode == 'train')
    amp = AMP[args.amp]

    @contextlib.contextmanager
    def conditions():
        # no autocast object at all without --amp: torch 2.1 refuses a
        # float32 CPU autocast dtype even when disabled
        autocast = (
            torch.autocast(device.type, dtype=amp)
            if amp is not None else contextlib.nullcontext())
        with autocast, torch.set_grad_enabled(mode == 'train'):
            yield

    def step(module):
        with conditions():
            out = module(x)
            if mode == 'train':
                out.float().sum().backward()

    with impl_tuning.using_tuner(impl_tuning.ImplTuner()) as tuner:
        first = _seconds(lambda: step(auto), device)
        (entry, ), measured = tuner.choices.values(), tuner.measured
        fixed = PeripheralConv2d(
            channels, kernel_size, impl=entry['impl']).to(device)
        fixed.load_state_dict(auto.state_dict())
        step(fixed)  # warm-up of the twin
        auto_s, fixed_s = [], []
        for index in range(args.steps):  # interleaved, order alternating
            pair = [(auto, auto_s), (fixed, fixed_s)]
            for module, times in pair[::1 if index % 2 else -1]:
                times.append(_seconds(lambda: step(module), device))
        with conditions():
            dispatch_us = _dispatch_us(x, auto)
            model_pick = select_impl(x, auto.weight, auto.grid)
        assert tuner.measured == measured == 1, 'timed more than once'
    auto_ms = statistics.median(auto_s) * 1e3
    fixed_ms = statistics.median(fixed_s) * 1e3
    return dict(
        shape=[batch, channels, height, width],
        kernel_size=kernel_size,
        mode=mode,
        amp=args.amp,
        pick=entry['impl'],
        candidates_ms=entry['ms'],
        cost_model_pick=model_pick,
        first_step_s=first,
        auto_step_ms=auto_ms,
        fixed_step_ms=fixed_ms,
        auto_over_fixed=auto_ms / fixed_ms,
        first_over_step=first * 1e3 / auto_ms,
        dispatch_us=dispatch_us)


def _dispatch_us(x, conv, calls=2000):
    """Microseconds of one ``choose_impl`` call on a kept signature: what
    ``auto`` adds to every step."""
    start = time.perf_counter()
    for _ in range(calls):
        impl_tuning.choose_impl(x, conv.weight, conv.grid)
    return (time.perf_counter() - start) / calls * 1e6


def markdown(result):
    lines = [
        '| shape (N, C, H, W) | K | mode | pick | candidates ms '
        '| model pick | first step s | auto / fixed step ms | ratio '
        '| dispatch us |', '|---|---|---|---|---|---|---|---|---|---|'
    ]
    for row in result['results']:
        ms = row['candidates_ms']
        lines.append(
            f'| {tuple(row["shape"])} | {row["kernel_size"]} | {row["mode"]} '
            f'| {row["pick"]} | '
            f'{", ".join(f"{k} {v:.3g}" for k, v in ms.items())} '
            f'| {row["cost_model_pick"]} | '
            f'{row["first_step_s"]:.3g} | {row["auto_step_ms"]:.3g} / '
            f'{row["fixed_step_ms"]:.3g} | {row["auto_over_fixed"]:.2f} | '
            f'{row["dispatch_us"]:.1f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    previous = impl_tuning.set_tuning_mode(
        'measure' if device.type in impl_tuning.COST_COEFFICIENTS else 'auto')
    try:
        rows = [
            bench_layer(layer, mode, args, device)
            for layer in PRESETS[args.preset] for mode in args.modes
        ]
    finally:
        impl_tuning.set_tuning_mode(previous)
    machine = dict(
        torch=torch.__version__,
        python=platform.python_version(),
        device=impl_tuning.device_name(device),
        threads=args.threads,
        date=time.strftime('%Y-%m-%d'))
    result = dict(machine=machine, args=vars(args), results=rows)
    table = markdown(result)
    if args.save:
        with open(args.save + '.json', 'w') as file:
            json.dump(result, file, indent=1)
        with open(args.save + '.md', 'w') as file:
            file.write(table)
    sys.stdout.write(table)


if __name__ == '__main__':
    main()
