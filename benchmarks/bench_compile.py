"""torch.compile of a PeLK backbone: compile time and compiled / eager step.

A training step is forward, a fixed random projection of the last feature
map as the loss, and backward. Measured in one process, in this order:

1. Dynamo's graph breaks over the whole backbone (``torch._dynamo.explain``
   on one forward);
2. the eager step: median of ``--steps`` steps after one warm-up;
3. the first compiled step (``torch.compile(model)``, inductor by default),
   compile included: the compile time, with a fresh inductor cache
   (``TORCHINDUCTOR_CACHE_DIR`` is pointed at an empty folder unless
   ``--warm-cache``);
4. the compiled step: median of ``--steps`` steps, interleaved with eager
   steps so both see the same load; the ratio compiled / eager.

Examples::

    python benchmarks/bench_compile.py                    # CPU, small arch
    python benchmarks/bench_compile.py --device cuda --size 256 --batch 8 \\
        --save results/compile_cuda
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ARCHS = {
    # K as PeLK-T's stages, fewer and narrower blocks (a 2-core CPU)
    'small':
    dict(
        depths=[1, 1, 2, 1],
        channels=[32, 64, 128, 256],
        kernel_sizes=[51, 49, 47, 13],
        center_sizes=5),
    'tiny':
    'tiny',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--arch', default='small', choices=sorted(ARCHS))
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--backend', default='inductor')
    parser.add_argument(
        '--warm-cache',
        action='store_true',
        help='keep the default inductor cache')
    parser.add_argument('--save', default=None, help='write PREFIX.json')
    return parser.parse_args(argv)


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def main(argv=None):
    args = parse_args(argv)
    if not args.warm_cache:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(
            prefix='inductor_')
    from pelk_mm import PeLK  # after the cache folder is set
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = PeLK(arch=ARCHS[args.arch], layer_scale_init_value=1.0).to(device)
    model.init_weights()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    projection = torch.randn(args.batch, model.channels[-1], device=device)

    def step(fn):
        _sync(device)
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        (fn(x)[-1] * projection).sum().backward()
        _sync(device)
        return time.perf_counter() - start

    explanation = torch._dynamo.explain(model)(x)
    breaks = [
        str(reason.reason).split('\n')[0][:160]
        for reason in explanation.break_reasons
    ]
    torch._dynamo.reset()
    step(model)  # warm-up
    compiled = torch.compile(model, backend=args.backend)
    first = step(compiled)
    eager_s, compiled_s = [], []
    for index in range(args.steps):
        pair = [(model, eager_s), (compiled, compiled_s)]
        for fn, times in pair[::1 if index % 2 else -1]:
            times.append(step(fn))
    eager = statistics.median(eager_s)
    fast = statistics.median(compiled_s)
    result = dict(
        machine=dict(
            torch=torch.__version__,
            python=platform.python_version(),
            device=str(device),
            threads=args.threads,
            date=time.strftime('%Y-%m-%d'),
            load_1min=os.getloadavg()[0]),
        args=vars(args),
        graph_breaks=explanation.graph_break_count,
        break_reasons=breaks,
        first_compiled_step_s=first,
        eager_step_s=eager,
        compiled_step_s=fast,
        compiled_over_eager=fast / eager)
    text = json.dumps(result, indent=1)
    if args.save:
        with open(args.save + '.json', 'w') as file:
            file.write(text)
    sys.stdout.write(text + '\n')


if __name__ == '__main__':
    main()
