"""PeLK-T beside its peers: ConvNeXt-T, RepLKNet-31B and SLaK-T, one run.

Models (backbones with four outputs, ``out_indices=(0, 1, 2, 3)``, what
UperNet / Cascade Mask R-CNN read; no classifier head), random weights,
seeded, every one built the same way:

- ``convnext``: mmpretrain ``ConvNeXt(arch='tiny')`` (depthwise 7x7);
- ``replknet``: mmpretrain ``RepLKNet(arch='31B')`` (31 / 29 / 27 / 13
  kernels with a 5x5 branch); its deploy form is ``switch_to_deploy()``
  (each BN folded, the 5x5 merged into the large kernel);
- ``slak``: SLaK-T, :mod:`slak` (a re-implementation for benchmarking: 1.3x
  ConvNeXt-T widths, ``51x5 + 5x51 + 5x5`` depthwise branches with BN,
  kernels 51 / 49 / 47 / 13); deploy form: the branches merged into one
  depthwise ``K x K`` conv, as SLaK does;
- ``pelk``: PeLK-T (``impl='auto'``); deploy form: ``switch_to_deploy()``
  with the default ``deploy_mode='structured'`` (band sums).

BN running statistics (RepLKNet, SLaK) are drawn at random so that folding
them is not the identity; every deploy form's outputs are compared with its
training form's (eval mode) and the relative error is reported.

Figures per model, ratios to ConvNeXt-T from the same run:

- ``params`` (``mmengine.analysis.parameter_count``) of the training and
  deploy forms; ``flops`` (``mmengine.analysis.FlopAnalyzer``, one counter
  for all) at each ``--flops-sizes`` of the training form, PeLK's
  peripheral convs counted as the dense ``K x K`` convs they compute (the
  paper's convention, as ``tools/analysis_tools/get_flops.py``), and of
  the deploy form (what runs; the counter has no rule for ``avg_pool2d``,
  so the box means' additions are not in PeLK's deploy count);
- ``torch_infer``: PyTorch CPU inference of each deploy form (and PeLK-T's
  training form) at ``--infer-size``, batch 1, ``--threads`` threads;
- ``torch_train``: one training step of each training form (forward,
  backward, AdamW step; loss: the mean of the squared outputs) at
  ``--train-size``, batch ``--train-batch``;
- ``train_peak_mib``: peak resident memory of that step above the memory
  resident before it, each model in a fresh interpreter (``VmHWM`` reset
  through ``/proc/self/clear_refs``, then read after two steps: the
  optimizer state, the gradients and the activations; an interpreter of
  its own so that no other model's freed memory is reused);
- ``ort``: onnxruntime (CPU provider, ``--threads`` intra-op threads, the
  default graph optimisations) of each deploy form exported as
  ``tools/deployment/pytorch2onnx.py`` exports (TorchScript exporter, opset
  17), once with a dynamic batch axis and once static, on a
  ``(1, 3, S, S)`` input, ``S = --ort-size``; the error of onnxruntime
  against the PyTorch deploy form. The sessions are timed in
  ``--ort-processes`` fresh interpreters, all models interleaved in each:
  the same export runs at different speeds in different processes (on the
  2-core VM of ``docs/performance.md``, PeLK-T at 525-540 or 660-670 ms),
  so each process gives its medians and ratios to ConvNeXt-T, and the
  table reports the median over the processes (and every process's
  ratios).

All timings interleave the models (the order rotating every round) and
report medians; the machine may be shared, so compare the ratios of one run.
``--save DIR`` writes ``DIR/peers_cpu_<UTC date-time>.json`` with the load
average before and after, the versions and every timing. ``--quick`` runs
every part on tiny models and inputs (``tests/test_bench_peers.py``).

On a CUDA device (``--device cuda``, :func:`device_comparison` for
``benchmarks/device_check.py``) it times inference at 224 in float32 and
under bf16 autocast and a training step under bf16 autocast, with CUDA
events, and the peak of ``torch.cuda.max_memory_allocated``; no onnxruntime.

Example::

    python benchmarks/bench_peers.py --save benchmarks/results
    python benchmarks/bench_peers.py --quick
"""
import argparse
import copy
import datetime
import json
import logging
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
MODELS = ('convnext', 'replknet', 'slak', 'pelk')
LABELS = dict(
    convnext='ConvNeXt-T',
    replknet='RepLKNet-31B',
    slak='SLaK-T',
    pelk='PeLK-T')
#: The paper's Table 8: ImageNet inference throughput, A100, float32,
#: 224 x 224 (MegEngine kernels), images per second.
PAPER_TABLE8_IMG_S = {'PeLK-T': 1138, 'SLaK-T': 754, 'PeLK-101-T': 1077}
#: ``--quick``: the same model classes at toy sizes.
QUICK_ARCHS = dict(
    convnext=dict(depths=[1, 1, 1, 1], channels=[8, 16, 24, 32]),
    replknet=dict(
        large_kernel_sizes=[13, 11, 9, 5],
        layers=[1, 1, 1, 1],
        channels=[8, 16, 24, 32],
        small_kernel=3,
        dw_ratio=1),
    slak=dict(
        widths=(8, 16, 24, 32),
        depths=(1, 1, 1, 1),
        kernel_sizes=(13, 11, 9, 5),
        small_kernel=3),
    pelk=dict(
        depths=[1, 1, 1, 1],
        channels=[16, 16, 24, 32],
        kernel_sizes=[13, 11, 9, 5],
        center_sizes=3))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--infer-size', type=int, default=224)
    parser.add_argument('--infer-batch', type=int, default=1)
    parser.add_argument(
        '--amp',
        nargs='+',
        default=['fp32'],
        choices=['fp32', 'bf16', 'fp16'],
        help='inference precisions (autocast)')
    parser.add_argument(
        '--train-amp', default='fp32', choices=['fp32', 'bf16', 'fp16'])
    parser.add_argument('--train-size', type=int, default=224)
    parser.add_argument('--train-batch', type=int, default=2)
    parser.add_argument('--ort-size', type=int, default=512)
    parser.add_argument(
        '--flops-sizes', type=int, nargs='+', default=[224, 512])
    parser.add_argument(
        '--iters', type=int, default=3, help='timed rounds per part')
    parser.add_argument(
        '--parts',
        nargs='+',
        default=['ort', 'torch_infer', 'torch_train', 'complexity', 'memory'],
        choices=['complexity', 'torch_infer', 'torch_train', 'memory', 'ort'])
    parser.add_argument(
        '--quick',
        action='store_true',
        help='toy models and inputs, one round: checks that it runs')
    parser.add_argument(
        '--save', metavar='DIR', help='write DIR/peers_<device>_<date>.json')
    parser.add_argument(
        '--ort-processes',
        type=int,
        default=3,
        help='fresh interpreters that time the onnxruntime sessions, each '
        'all models interleaved (timings differ between processes)')
    parser.add_argument(
        '--memory-of', choices=MODELS,
        help=argparse.SUPPRESS)  # the fresh interpreter of one memory figure
    parser.add_argument(
        '--ort-of', metavar='MANIFEST',
        help=argparse.SUPPRESS)  # a fresh interpreter timing the exports
    args = parser.parse_args(argv)
    if args.ort_processes < 1:
        parser.error(f'--ort-processes must be at least 1, got '
                     f'{args.ort_processes}')
    if args.quick:
        args.infer_size = args.train_size = args.ort_size = 64
        args.flops_sizes = [64]
        args.iters = 1
        args.ort_processes = min(args.ort_processes, 2)
    return args


def _quiet_init(model):
    """``init_weights`` without the per-tensor log of mmengine."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)


@torch.no_grad()
def _randomise_bn_statistics(model, generator):
    """Draw BN running statistics and set every layer scale to 1, so that
    the deploy-vs-training comparison sees each folded branch."""
    for name, param in model.named_parameters():
        if name.endswith('gamma') or 'layer_scale' in name:
            param.fill_(1.0)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            shape = module.running_mean.shape
            module.running_mean.copy_(0.1 *
                                      torch.randn(shape, generator=generator))
            module.running_var.copy_(
                torch.rand(shape, generator=generator) + 0.5)


def build(name, quick=False):
    """The training form of ``name`` and its deploy form (same weights), in
    eval mode; seeded, so every call builds the same weights."""
    torch.manual_seed(0)
    kwargs = dict(out_indices=(0, 1, 2, 3))
    if name == 'convnext':
        from mmpretrain.models import ConvNeXt
        model = ConvNeXt(
            arch=QUICK_ARCHS[name] if quick else 'tiny',
            gap_before_final_norm=False,
            **kwargs)
        _quiet_init(model)
    elif name == 'replknet':
        from mmpretrain.models import RepLKNet
        model = RepLKNet(
            arch=QUICK_ARCHS[name] if quick else '31B',
            norm_intermediate_features=True,
            **kwargs)
        _quiet_init(model)
    elif name == 'slak':
        sys.path.insert(0, HERE)
        from slak import SLaK
        model = SLaK(**(QUICK_ARCHS[name] if quick else {}))
    elif name == 'pelk':
        from pelk_mm import PeLK
        model = PeLK(
            arch=QUICK_ARCHS[name] if quick else 'tiny',
            gap_before_final_norm=False,
            init_cfg=None,
            **kwargs)
        _quiet_init(model)
    else:
        raise ValueError(f'`name` must be one of {MODELS}, got {name!r}')
    _randomise_bn_statistics(model, torch.Generator().manual_seed(1))
    model.eval()
    deploy = copy.deepcopy(model)
    if name != 'convnext':  # ConvNeXt-T has nothing to fold
        deploy.switch_to_deploy()
    deploy.eval()
    return model, deploy


def _outputs(model, x):
    out = model(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def relative_error(outputs, references):
    """Max over outputs of max abs error / max abs reference."""
    return max(
        float(abs(o - r).max() / abs(r).max())
        for o, r in zip(outputs, references))


def complexity(train, deploy, name, sizes):
    """Parameters and FLOPs (GFLOPs: multiply-adds, mmengine's unit) of
    both forms; PeLK's training form counted with dense kernels."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    counted = copy.deepcopy(train)
    if name == 'pelk':
        from pelk_mm import PeripheralConv2d
        for module in counted.modules():
            if isinstance(module, PeripheralConv2d):
                module.impl = 'dense'
    row = dict(
        params_M=parameter_count(train)[''] / 1e6,
        params_deploy_M=parameter_count(deploy)[''] / 1e6)
    for size in sizes:
        x = torch.zeros(1, 3, size, size)
        for key, model in (('flops', counted), ('flops_deploy', deploy)):
            analyzer = FlopAnalyzer(model, (x, ))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            row[f'{key}_G_{size}'] = analyzer.total() / 1e9
    return row


class Clock:
    """Wall time of a call, synchronising a CUDA device around it."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'

    def __call__(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def interleaved(calls, iters, clock):
    """Medians of ``calls`` (name -> fn), one warm-up each, then ``iters``
    rounds in an order rotating every round; also every time."""
    names = list(calls)
    for name in names:
        calls[name]()
    times = {name: [] for name in names}
    for round_ in range(iters):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(clock(calls[name]))
    return dict(
        median_s={
            n: statistics.median(t)
            for n, t in times.items()
        },
        times_s=times)


def train_step(model, batch, size, device, amp=None):
    """A closure running forward, backward and one AdamW step."""
    model = model.to(device)
    model.train()  # mmpretrain's ConvNeXt.train returns None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(
        batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    x = x.to(device)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = sum(o.float().pow(2).mean() for o in _outputs(model, x))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def infer_call(model, batch, size, device, amp=None):
    model = model.to(device)
    model.eval()
    x = torch.randn(
        batch, 3, size, size,
        generator=torch.Generator().manual_seed(3)).to(device)

    @torch.no_grad()
    def call():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _outputs(model, x)

    return call


def _status_mib(key):
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # kB


def memory_of(args):
    """Run in a fresh interpreter: peak RSS of two training steps above the
    RSS before them, printed as JSON."""
    train, _ = build(args.memory_of, args.quick)
    step = train_step(train, args.train_batch, args.train_size,
                      torch.device('cpu'))
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')  # VmHWM := the current RSS
    before = _status_mib('VmRSS')
    step()
    step()
    print(
        json.dumps(
            dict(
                rss_before_mib=before,
                peak_mib=_status_mib('VmHWM'),
                peak_above_mib=_status_mib('VmHWM') - before,
                ru_maxrss_mib=resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss / 1024)))


def fresh_interpreter(flags):
    """Run this script with ``flags`` in a fresh interpreter; return its
    last line of output, parsed as JSON."""
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    done = subprocess.run([sys.executable, __file__, *flags],
                          env=env,
                          capture_output=True,
                          text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_memory(names, args):
    """``memory_of`` for every model, each in a fresh interpreter."""
    return {
        name:
        fresh_interpreter([
            '--memory-of', name, '--threads',
            str(args.threads), '--train-size',
            str(args.train_size), '--train-batch',
            str(args.train_batch)
        ] + (['--quick'] if args.quick else []))
        for name in names
    }


def ort_input(size):
    """The onnxruntime input: seeded ``(1, 3, size, size)`` float32."""
    import numpy as np
    return np.random.default_rng(0).standard_normal((1, 3, size, size),
                                                    dtype=np.float32)


def ort_of(args):
    """Run in a fresh interpreter: time the exports of a manifest (key ->
    ONNX file) interleaved, print the times as JSON."""
    sys.path.insert(0, HERE)
    from bench_onnx import session
    with open(args.ort_of) as manifest:
        paths = json.load(manifest)
    x = ort_input(args.ort_size)
    sessions = {
        key: session(path, args.threads)
        for key, path in paths.items()
    }
    calls = {
        key: (lambda s=s: s.run(None, {'input': x}))
        for key, s in sessions.items()
    }
    timed = interleaved(calls, args.iters, Clock(torch.device('cpu')))
    print(json.dumps(timed['times_s']))


def ort_part(deploys, args):
    """onnxruntime of every deploy form, dynamic-batch and static exports;
    each export's error against PyTorch; the timings from
    ``--ort-processes`` fresh interpreters (:func:`ort_of`): per process
    the medians and the ratios to ConvNeXt-T, and over the processes the
    median of each."""
    sys.path.insert(0, HERE)
    from bench_onnx import export, export_tool, session
    tool = export_tool()
    size = (args.ort_size, args.ort_size)
    x = ort_input(args.ort_size)
    paths, errors = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        with torch.no_grad():
            for name, model in deploys.items():
                reference = [
                    o.numpy() for o in _outputs(model, torch.from_numpy(x))
                ]
                for dynamic in (True, False):
                    key = f'{name}/{"dynamic" if dynamic else "static"}'
                    paths[key] = osp.join(workdir,
                                          key.replace('/', '_') + '.onnx')
                    export(model, size, paths[key], tool, dynamic=dynamic)
                    errors[key] = relative_error(
                        session(paths[key],
                                args.threads).run(None, {'input': x}),
                        reference)
        manifest = osp.join(workdir, 'manifest.json')
        with open(manifest, 'w') as out:
            json.dump(paths, out)
        processes = []
        for _ in range(args.ort_processes):
            times = fresh_interpreter([
                '--ort-of', manifest, '--threads',
                str(args.threads), '--ort-size',
                str(args.ort_size), '--iters',
                str(args.iters)
            ])
            medians = {k: statistics.median(t) for k, t in times.items()}
            processes.append(
                dict(
                    times_s=times,
                    median_s=medians,
                    ratios=ratios_to_convnext(medians)))
    return dict(
        median_s={
            key: statistics.median(p['median_s'][key] for p in processes)
            for key in paths
        },
        ratios={
            key: statistics.median(p['ratios'][key] for p in processes)
            for key in processes[0]['ratios']
        },
        processes=processes,
        ort_vs_torch_rel_error=errors)


AMP = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def ratios_to_convnext(medians):
    """``median / median of ConvNeXt-T`` per key ``name[...]``."""
    base = {
        key.replace('convnext', '', 1): value
        for key, value in medians.items() if key.startswith('convnext')
    }
    out = {}
    for key, value in medians.items():
        name = key.split('/')[0]
        suffix = key[len(name):]
        if suffix in base:
            out[key] = value / base[suffix]
    return out


def torch_parts(trains, deploys, args, device, part):
    """``part`` ``'torch_infer'``: PyTorch inference of the deploy forms (and
    PeLK's training form) per ``--amp``; ``'torch_train'``: the training
    step of the training forms; interleaved."""
    clock = Clock(device)
    result = {}
    amps = args.amp
    if part == 'torch_infer':
        for amp in amps:
            calls = {}
            for name, model in deploys.items():
                calls[f'{name}/deploy'] = infer_call(model, args.infer_batch,
                                                     args.infer_size, device,
                                                     AMP[amp])
            if 'pelk' in trains:
                calls['pelk/train-form'] = infer_call(trains['pelk'],
                                                      args.infer_batch,
                                                      args.infer_size, device,
                                                      AMP[amp])
            timed = interleaved(calls, args.iters, clock)
            timed['img_s'] = {
                k: args.infer_batch / v
                for k, v in timed['median_s'].items()
            }
            timed['ratios'] = ratios_to_convnext(timed['median_s'])
            if 'convnext' in deploys and 'pelk' in trains:
                # ConvNeXt-T has one form: PeLK's training form against it
                timed['ratios']['pelk/train-form'] = (
                    timed['median_s']['pelk/train-form'] /
                    timed['median_s']['convnext/deploy'])
            result[f'torch_infer_{amp}'] = timed
            for model in list(deploys.values()) + list(trains.values()):
                model.cpu()
    if part == 'torch_train':
        amp = args.train_amp
        calls = {
            name:
            train_step(
                copy.deepcopy(model), args.train_batch, args.train_size,
                device, AMP[amp])
            for name, model in trains.items()
        }
        timed = interleaved(calls, args.iters, clock)
        timed['ratios'] = ratios_to_convnext(timed['median_s'])
        if device.type == 'cuda':
            timed['peak_mib'] = {}
            for name, call in calls.items():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                call()
                torch.cuda.synchronize()
                timed['peak_mib'][name] = (
                    torch.cuda.max_memory_allocated(device) - base) / 2**20
        del calls
        result[f'torch_train_{amp}'] = timed
    return result


def markdown(result):
    """The table of the run: one row per model."""
    names = result['models']
    rows = result['results']
    cx = rows.get('complexity', {})
    infer = next((v for k, v in rows.items() if k.startswith('torch_infer')),
                 None)
    train = next((v for k, v in rows.items() if k.startswith('torch_train')),
                 None)
    mem = rows.get('memory', {})
    ort = rows.get('ort')
    sizes = result['run']['flops_sizes']
    head = ['model', 'params M (deploy)'] + [
        f'GFLOPs {s} (deploy)' for s in sizes
    ] + [
        'torch infer ms (x)', 'PeLK train form ms (x)', 'torch train s (x)',
        'train peak MiB (x)', 'ORT dynamic ms (x)', 'ORT static ms (x)'
    ]
    lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']

    def cell(part, key, scale, fmt):
        if part is None or key not in part['median_s']:
            return '-'
        ratio = part['ratios'].get(key, float('nan'))
        return f'{part["median_s"][key] * scale:{fmt}} ({ratio:.2f})'

    for name in names:
        c = cx.get(name, {})
        cells = [
            LABELS[name], f'{c.get("params_M", float("nan")):.1f} '
            f'({c.get("params_deploy_M", float("nan")):.1f})'
        ] + [
            f'{c.get(f"flops_G_{s}", float("nan")):.2f} '
            f'({c.get(f"flops_deploy_G_{s}", float("nan")):.2f})'
            for s in sizes
        ]
        cells.append(cell(infer, f'{name}/deploy', 1e3, '.0f'))
        cells.append(
            cell(infer, 'pelk/train-form', 1e3, '.0f') if name ==
            'pelk' else '-')
        cells.append(cell(train, name, 1, '.2f'))
        if name in mem:
            base = mem.get('convnext', {}).get('peak_above_mib')
            ratio = mem[name]['peak_above_mib'] / base if base else float(
                'nan')
            cells.append(f'{mem[name]["peak_above_mib"]:.0f} ({ratio:.2f})')
        else:
            cells.append('-')
        for kind in ('dynamic', 'static'):
            cells.append(cell(ort, f'{name}/{kind}', 1e3, '.0f'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    if ort and 'convnext' in names:  # ratios need ConvNeXt-T
        lines.append('')
        lines.append('onnxruntime per process (ratios to ConvNeXt-T, dynamic '
                     '/ static): ' +
                     '; '.join(f'{LABELS[name]} ' + ', '.join(
                         f'{p["ratios"][f"{name}/dynamic"]:.2f} / '
                         f'{p["ratios"][f"{name}/static"]:.2f}'
                         for p in ort['processes'])
                               for name in names if name != 'convnext'))
    sys.path.insert(0, HERE)
    from run_record import with_run_line
    return with_run_line(lines, result)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        return memory_of(args)
    if args.ort_of:
        return ort_of(args)
    device = torch.device(args.device)
    import pelk_mm  # noqa: F401  (registers PeLK)
    if device.type != 'cpu':
        args.parts = [
            p for p in args.parts if p in ('torch_infer', 'torch_train')
        ]
    sys.path.insert(0, HERE)
    from run_record import run_record, run_start
    started, load_before = run_start()
    trains, deploys, results = {}, {}, {}
    for name in args.models:
        trains[name], deploys[name] = build(name, args.quick)
    x = torch.randn(
        1,
        3,
        args.infer_size,
        args.infer_size,
        generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        results['deploy_vs_train_rel_error'] = {
            name:
            relative_error(
                _outputs(deploys[name], x), _outputs(trains[name], x))
            for name in args.models
        }
    import mmengine
    run = run_record(
        started,
        load_before,
        device=(torch.cuda.get_device_name(device)
                if device.type == 'cuda' else 'cpu'),
        threads=args.threads,
        iters=args.iters,
        quick=args.quick,
        parts=args.parts,
        infer=dict(size=args.infer_size, batch=args.infer_batch, amp=args.amp),
        train=dict(
            size=args.train_size, batch=args.train_batch, amp=args.train_amp),
        ort_size=args.ort_size,
        flops_sizes=args.flops_sizes,
        mmengine=mmengine.__version__)
    if 'ort' in args.parts:
        import onnxruntime
        run['onnxruntime'] = onnxruntime.__version__
    result = dict(
        run=run,
        models=list(args.models),
        paper_table8_a100_fp32_224_img_s=PAPER_TABLE8_IMG_S,
        results=results)
    path = None
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        path = osp.join(
            args.save, f'peers_{device.type}_'
            f'{started.strftime("%Y-%m-%dT%H%M")}.json')
    for part in args.parts:  # in the order given; saved after each
        if part == 'complexity':
            results['complexity'] = {
                name:
                complexity(trains[name], deploys[name], name, args.flops_sizes)
                for name in args.models
            }
        elif part in ('torch_infer', 'torch_train'):
            results.update(torch_parts(trains, deploys, args, device, part))
        elif part == 'memory':
            results['memory'] = train_memory(args.models, args)
        elif part == 'ort':
            results['ort'] = ort_part(deploys, args)
        run['seconds'] = round((datetime.datetime.now(datetime.timezone.utc) -
                                started).total_seconds())
        run['load_average_after'] = os.getloadavg()
        if path:
            with open(path, 'w') as out:
                json.dump(result, out, indent=1)
    print(markdown(result))
    if path:
        print(f'saved {path}')
    return result


# ---------------------------------------------------------------------------
# The GPU comparison, called by benchmarks/device_check.py
# ---------------------------------------------------------------------------
#: Arguments of the GPU run: inference at 224 (batch 64, as throughput is
#: measured) in float32 and bf16 autocast; the training step at 224, batch
#: 32, bf16 autocast.
DEVICE_ARGS = [
    '--device', 'cuda', '--parts', 'torch_infer', 'torch_train',
    '--infer-size', '224', '--infer-batch', '64', '--amp', 'fp32', 'bf16',
    '--train-size', '224', '--train-batch', '32', '--train-amp', 'bf16',
    '--iters', '10'
]
SMOKE_DEVICE_ARGS = [
    '--device', 'cpu', '--parts', 'torch_infer', 'torch_train', '--quick',
    '--amp', 'fp32', 'bf16', '--train-amp', 'fp32'
]


def device_comparison(out, env, smoke=False, time_limit=120):
    """Run the peers' GPU comparison (:data:`DEVICE_ARGS`; ``smoke``: the
    same parts on the CPU at toy sizes) as a subprocess with a time limit,
    saving its JSON under ``out``.

    Args:
        out (str | Path): Folder of the results (``peers_<device>_*.json``).
        env (dict): Environment of the subprocess.
        smoke (bool): Toy sizes on the CPU. Defaults to False.
        time_limit (float): Seconds before it is stopped. Defaults to 120.

    Returns:
        float | None: Its wall seconds, None if it failed or timed out.
    """
    command = [sys.executable, __file__
               ] + (SMOKE_DEVICE_ARGS
                    if smoke else DEVICE_ARGS) + ['--save', str(out)]
    print('$', ' '.join(command), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            env=env,
            timeout=time_limit,
            check=True,
            capture_output=True,
            text=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        print(f'peers: FAILED ({error})', flush=True)
        return None
    print(done.stdout, flush=True)
    return time.perf_counter() - start


if __name__ == '__main__':
    main()
