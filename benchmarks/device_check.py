"""One-command GPU check: the benchmarks, the cost-model fit, the tuned auto.

For a bare CUDA machine with Python 3.12 and a preinstalled torch but no
package registry (the H200 lent to this project: torch 2.11, CUDA 13)::

    bash benchmarks/prepare_device_wheels.sh     # here, with a registry
    python3 benchmarks/device_check.py --out OUT  # there, .whl/ carried

It runs in two parts, each benchmark as a subprocess with a time limit (a
benchmark that fails or runs out of time is reported and the others still
run), the whole run within :data:`TOTAL_BUDGET_S` (8 minutes, installs
included):

1. **torch only** (no mm package needed): the steps of
   :data:`TORCH_ONLY_STEPS` in order (``bench_peripheral_conv.py`` on
   PeLK-T's four stages and two sweeps, ``fit_cost_model.py`` on the first
   sweep's JSON, ``bench_impl_tuning.py``); a new benchmark is one more
   entry there, in :data:`FULL`, :data:`SMOKE` and :data:`TIME_LIMITS`;
2. **the OpenMMLab part** (``bench_backbone.py``, UperNet needs mmseg and
   ``mmcv.ops``): if ``mmengine`` / ``mmseg`` / ``mmpretrain`` /
   ``mmcv.ops`` are not importable, it first installs the wheels of
   ``.whl/`` into ``/tmp/pelk_site`` (``pip --no-index --no-deps``) and
   builds mmcv 2.1.0 from the carried sdist with its CPU ops
   (``MMCV_WITH_OPS=1 FORCE_CUDA=0``, all cores), within what is left of
   the budget after reserving the part's benchmarks; it is skipped (and
   said so) when the install fails or the time is short, or with
   ``--no-mm`` (``--install-only`` stops after the install, so that a warm
   machine can run the benchmarks in a second call).

It writes to OUT:

- ``stage1.json`` ... ``stage4.json`` / ``.md``: ``bench_peripheral_conv.py``
  on PeLK-T's four stage tensors at 512 x 512 crops, batch 16
  (:data:`PELK_T_STAGES`: 46 / 93 / 187 / 374 convolved channels on
  128 / 64 / 32 / 16 maps, K = 51 / 49 / 47 / 13), forward and forward +
  backward, fp32 and bf16 autocast: every registered implementation (on
  CUDA with Triton: ``triton`` beside ``dense``, ``fft``, ``blocksum`` and
  ``auto``) and a cuDNN 7x7 depthwise convolution on the same tensor, with
  each method's error against a float64 reference (the prediction to check
  is ``benchmarks/traffic_model.py``, docs/performance.md);
- ``conv.json`` / ``conv.md``: ``bench_peripheral_conv.py`` over K 13 / 31 /
  51 / 101 x maps 16-128 (batch 2, 96 channels, fp32 and bf16 autocast),
  and ``conv_shapes.json`` / ``.md``: K = 51 on 64 x 64 maps over batch
  1-16, channels 48 and 384, NCHW and channels_last, fp16 autocast;
- ``fit.md``: ``fit_cost_model.py conv.json``, the CUDA entry of
  ``COST_COEFFICIENTS`` and its picks against the fastest method;
- ``tuning.json`` / ``.md``: ``bench_impl_tuning.py`` on PeLK-T's four
  layer shapes (512 x 512, batch 2, bf16 autocast, train and inference):
  what the measure-once ``auto`` picked per shape, the candidates' times,
  its first step and its per-step cost against the picked implementation;
- ``backbone.json`` / ``.md``: ``bench_backbone.py``, UperNet + PeLK-T
  (auto, dense) and + ConvNeXt-T, 512 x 512 train step at batch 2 under bf16
  autocast, whole-image 512 x 2048 inference, and 20 steps under fp16 and
  bf16 autocast with the losses;
- ``backbone_hook.json``: ``bench_backbone.py --modes hook``, the
  DynamicSparsityHook's per-step and per-update cost on that model, as
  fractions of its fp32 train step;
- ``seconds.json``: each part's wall seconds (None: failed or timed out),
  and what was skipped and why.

``--smoke`` runs the same code path on the CPU with tiny sizes (and installs
nothing when the packages are importable): ``tests/test_device_check.py``.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = Path('/tmp/pelk_site')

#: PeLK-T at 512 x 512 crops: (convolved channels, map side, kernel size)
#: of its four stages (3/8 of int(1.3 * [96, 192, 384, 768]) channels).
PELK_T_STAGES = ((46, 128, 51), (93, 64, 49), (187, 32, 47), (374, 16, 13))


def stage_args(device, batch, shrink, reps, budget, only=(1, 2, 3, 4)):
    """``bench_peripheral_conv.py`` arguments of the stages ``only``
    (``stage1`` ...); ``shrink`` divides the channels and the map side (the
    smoke run)."""
    return {
        f'stage{index}': [
            '--device', device, '--kernels',
            str(kernel_size), '--sizes',
            str(max(size // shrink, 1)), '--batch',
            str(batch), '--channels',
            str(max(channels // shrink, 1)), '--precisions', 'fp32', 'bf16',
            '--reps',
            str(reps), '--budget',
            str(budget)
        ]
        for index, (channels, size,
                    kernel_size) in enumerate(PELK_T_STAGES, start=1)
        if index in only
    }


#: The torch-only part: (result name, benchmark script), run in order with
#: the arguments of :data:`FULL` (or :data:`SMOKE`, which may leave a step
#: out); ``fit_cost_model.py`` runs on ``conv.json`` right after ``conv``.
TORCH_ONLY_STEPS = [
    ('stage1', 'bench_peripheral_conv.py'),
    ('stage2', 'bench_peripheral_conv.py'),
    ('stage3', 'bench_peripheral_conv.py'),
    ('stage4', 'bench_peripheral_conv.py'),
    ('conv', 'bench_peripheral_conv.py'),
    ('conv_shapes', 'bench_peripheral_conv.py'),
    ('tuning', 'bench_impl_tuning.py'),
]

FULL = {
    **stage_args('cuda', batch=16, shrink=1, reps=10, budget=0.5),
    'conv': [
        '--device', 'cuda', '--kernels', '13', '31', '51', '101', '--sizes',
        '16', '32', '64', '128', '--batch', '2', '--channels', '96',
        '--precisions', 'fp32', 'bf16', '--reps', '10', '--budget', '1.5'
    ],
    'conv_shapes': [
        '--device', 'cuda', '--kernels', '51', '--sizes', '64', '--batch', '1',
        '2', '8', '16', '--channels', '48', '384', '--precisions', 'fp16',
        '--layouts', 'nchw', 'channels_last', '--modes', 'fwd+bwd', '--reps',
        '10', '--budget', '1.0', '--no-errors'
    ],
    'backbone': [
        '--device', 'cuda', '--size', '512', '--batch', '2', '--amp', 'bf16',
        '--iters', '5', '--models', 'pelk', 'pelk-dense', 'convnext',
        '--infer-size', '512', '2048', '--amp-steps', '20'
    ],
    'hook': [
        '--device', 'cuda', '--size', '512', '--batch', '2', '--modes', 'hook',
        '--iters', '3'
    ],
    'tuning': [
        '--device', 'cuda', '--preset', 'pelk-t', '--amp', 'bf16', '--steps',
        '5'
    ],
}
SMOKE = {
    # the first and the last stage (the others take the same path)
    **stage_args('cpu', batch=1, shrink=16, reps=1, budget=0.1, only=(1, 4)),
    'conv': [
        '--device', 'cpu', '--kernels', '13', '31', '--sizes', '12', '--batch',
        '2', '--channels', '4', '--precisions', 'fp32', 'bf16', '--reps', '1',
        '--budget', '0.1'
    ],
    'conv_shapes': [
        '--device', 'cpu', '--kernels', '13', '--sizes', '12', '--batch', '1',
        '--channels', '4', '--precisions', 'bf16', '--layouts', 'nchw',
        'channels_last', '--modes', 'fwd+bwd', '--reps', '1', '--budget',
        '0.1', '--no-errors'
    ],
    # CPUs without native bf16 run autocast convolutions about 10x slower
    # than float32: the smoke times float32 and trains one autocast step.
    'backbone': [
        '--device', 'cpu', '--size', '32', '--batch', '2', '--iters', '1',
        '--models', 'pelk', 'convnext', '--modes', 'train', 'infer',
        '--infer-size', '32', '64', '--amp-steps', '1', '--no-memory'
    ],
    'hook': [
        '--device', 'cpu', '--size', '32', '--batch', '2', '--modes', 'hook',
        '--iters', '1'
    ],
    'tuning': ['--device', 'cpu', '--preset', 'smoke', '--steps', '1'],
}
TIME_LIMITS = {
    'stage1': 30,
    'stage2': 25,
    'stage3': 25,
    'stage4': 20,
    'conv': 110,
    'conv_shapes': 45,
    'tuning': 45,
    'backbone': 140,
    'hook': 40
}
#: The whole run, installs included: 8 of the 10 minutes a device command
#: may run.
TOTAL_BUDGET_S = 480
SMOKE_TIME_LIMIT = 1200  # a shared CPU can be slow; no device time at stake


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument(
        '--smoke',
        action='store_true',
        help='same path on the CPU with tiny sizes')
    parser.add_argument(
        '--wheels',
        default=str(ROOT / '.whl'),
        help='folder of prepare_device_wheels.sh')
    parser.add_argument(
        '--install-only',
        action='store_true',
        help='stop after installing the packages')
    parser.add_argument(
        '--no-mm',
        action='store_true',
        help='only the torch-only part (no mm packages)')
    return parser.parse_args(argv)


def mm_packages_importable():
    try:
        import mmcv.ops  # noqa: F401
    except Exception:  # ImportError, or a missing compiled extension
        return False
    return all(
        importlib.util.find_spec(name) is not None
        for name in ('mmengine', 'mmseg', 'mmpretrain'))


def install(wheels, timeout):
    """Install the carried wheels, then build mmcv with its CPU ops, within
    ``timeout`` seconds (``subprocess.TimeoutExpired`` beyond)."""
    deadline = time.perf_counter() + timeout
    wheels = Path(wheels)
    if not wheels.is_dir():
        raise SystemExit(f'mm packages missing and no {wheels}/: run '
                         'benchmarks/prepare_device_wheels.sh first')
    pip = [
        sys.executable, '-m', 'pip', 'install', '-q', '--no-index',
        '--no-deps', '--no-compile', '--no-cache-dir', '--upgrade', '--target',
        str(SITE)
    ]
    subprocess.run(
        pip + sorted(map(str, wheels.glob('*.whl'))),
        check=True,
        timeout=timeout)
    build = Path(tempfile.mkdtemp(prefix='mmcv_build_'))
    with tarfile.open(next(wheels.glob('mmcv-*.tar.gz'))) as sdist:
        sdist.extractall(build)
    source = next(build.glob('mmcv-*'))
    setup = source / 'setup.py'  # torch >= 2.1 headers need C++17
    setup.write_text(setup.read_text().replace('c++14', 'c++17'))
    env = dict(
        os.environ,
        MMCV_WITH_OPS='1',
        FORCE_CUDA='0',
        MAX_JOBS=str(os.cpu_count() or 1),
        PYTHONPATH=f'{SITE}{os.pathsep}' + os.environ.get('PYTHONPATH', ''))
    start = time.perf_counter()
    subprocess.run(
        pip + ['--no-build-isolation', str(source)],
        check=True,
        env=env,
        timeout=max(deadline - time.perf_counter(), 1))
    print(f'mmcv built in {time.perf_counter() - start:.0f} s', flush=True)


def run(name, script, args, env, limit):
    """Run one benchmark with a time limit; returns its wall seconds, or
    None if it failed or ran out of time (what it saved so far stays)."""
    command = [sys.executable, str(ROOT / 'benchmarks' / script)] + args
    start = time.perf_counter()
    print('$', ' '.join(command), flush=True)
    try:
        subprocess.run(
            command,
            check=True,
            env=env,
            timeout=limit,
            stdout=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f'{name}: FAILED ({error})', flush=True)
        return None
    seconds = time.perf_counter() - start
    print(f'{name}: {seconds:.0f} s', flush=True)
    return seconds


def main(argv=None):
    args = parse_args(argv)
    deadline = time.perf_counter() + TOTAL_BUDGET_S
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = f'{ROOT}{os.pathsep}' + env.get('PYTHONPATH', '')
    sweeps = SMOKE if args.smoke else FULL
    seconds, skipped = {}, {}

    def limit(name):
        if args.smoke:
            return SMOKE_TIME_LIMIT
        return max(min(TIME_LIMITS[name], deadline - time.perf_counter()), 1)

    if not args.install_only:
        torch_only_part(out, sweeps, env, limit, seconds)
    if args.no_mm:
        skipped['mm'] = '--no-mm'
    elif not mm_packages_importable():
        reserved = TIME_LIMITS['backbone'] + TIME_LIMITS['hook']
        budget = deadline - time.perf_counter() - reserved
        if args.smoke or args.install_only:
            budget = float('inf')
        try:
            if budget < 60:
                raise RuntimeError(f'only {budget:.0f} s left for installs')
            install(args.wheels, budget)
            sys.path.insert(0, str(SITE))
            env['PYTHONPATH'] += f'{os.pathsep}{SITE}'
        except (RuntimeError, SystemExit, subprocess.SubprocessError,
                StopIteration) as error:
            skipped['mm'] = f'install failed or skipped: {error!r}'
    if args.install_only:
        return
    if 'mm' not in skipped:
        mm_part(out, sweeps, env, limit, seconds)
    else:
        print(f'OpenMMLab part skipped: {skipped["mm"]}', flush=True)
    (out / 'seconds.json').write_text(
        json.dumps(dict(seconds, skipped=skipped), indent=1))
    if None in seconds.values():
        sys.exit(1)


def torch_only_part(out, sweeps, env, limit, seconds):
    """The steps of :data:`TORCH_ONLY_STEPS`, and the cost-model fit."""
    for name, script in TORCH_ONLY_STEPS:
        if name not in sweeps:  # a step the smoke run leaves out
            continue
        seconds[name] = run(name, script, sweeps[name] +
                            ['--save', str(out / name)], env, limit(name))
        if (out / f'{name}.md').exists():
            print((out / f'{name}.md').read_text(), flush=True)
        if name == 'conv' and (out / 'conv.json').exists():
            fit = subprocess.run([
                sys.executable,
                str(ROOT / 'benchmarks' / 'fit_cost_model.py'),
                str(out / 'conv.json')
            ],
                                 env=env,
                                 capture_output=True,
                                 text=True,
                                 timeout=60)
            (out / 'fit.md').write_text(fit.stdout + fit.stderr)
            print(fit.stdout + fit.stderr, flush=True)


def mm_part(out, sweeps, env, limit, seconds):
    """UperNet + PeLK-T against ConvNeXt-T, the sparsity hook's cost and PeLK-T
    against its peers."""
    seconds['backbone'] = run(
        'backbone', 'bench_backbone.py',
        sweeps['backbone'] + ['--save', str(out / 'backbone')], env,
        limit('backbone'))
    if (out / 'backbone.md').exists():
        print((out / 'backbone.md').read_text(), flush=True)
    seconds['hook'] = run('hook', 'bench_backbone.py', sweeps['hook'] +
                          ['--save', str(out / 'backbone')], env,
                          limit('hook'))
    if (out / 'backbone_hook.json').exists():
        print((out / 'backbone_hook.json').read_text(), flush=True)
    # PeLK-T against ConvNeXt-T / RepLKNet-31B / SLaK-T on the GPU (224, fp32
    # and bf16 inference, bf16 train step): OUT/peers_cuda_<date>.json, under
    # the backbone step's time limit.
    spec = importlib.util.spec_from_file_location(
        'bench_peers', ROOT / 'benchmarks' / 'bench_peers.py')
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    seconds['peers'] = peers.device_comparison(
        out, env, smoke=sweeps is SMOKE, time_limit=limit('backbone'))


if __name__ == '__main__':
    main()
