"""Import time of ``pelk_mm.ops`` on top of torch, in fresh interpreters.

Every repetition starts ``python -X importtime -c "import torch"`` and
``python -X importtime -c "import pelk_mm.ops"`` (interleaved) and reads
Python's own import timer. Reported, as medians over the repetitions:

- ``torch_s``: ``import torch`` alone (its cumulative time);
- ``ops_s``: ``import pelk_mm.ops``, torch included (``pelk_mm``'s cumulative);
- ``on_top_of_torch_s``: within the same ``import pelk_mm.ops`` run, what it
  costs beyond the ``torch`` import nested in it. This within-run difference
  is the number that matters, and it is far less noisy than the difference of
  the two medians on a busy machine.

``--torch-only`` runs the interpreters with ``tests/torch_only`` first on
``PYTHONPATH``, which hides mmengine, mmcv, mmseg, mmdet, mmpretrain and PIL
(a plain PyTorch environment); without it, an installed OpenMMLab stack makes
``import pelk_mm.ops`` run the registrations of ``pelk_mm/__init__.py`` too.

Examples::

    python benchmarks/bench_import.py --torch-only
    python benchmarks/bench_import.py --reps 7 --json
"""
import argparse
import json
import os
import os.path as osp
import re
import statistics
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
LINE = re.compile(r'import time:\s+\d+ \|\s+(\d+) \| *(\S+)')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--torch-only',
        action='store_true',
        help='hide the OpenMMLab packages and PIL')
    parser.add_argument(
        '--reps',
        type=int,
        default=5,
        help='fresh interpreters per statement (default 5)')
    parser.add_argument(
        '--json',
        action='store_true',
        help='print one JSON object instead of the summary')
    return parser.parse_args(argv)


def import_times(statement, torch_only):
    """Cumulative seconds of every module that ``statement`` imports."""
    env = dict(os.environ)
    path = [ROOT, env.get('PYTHONPATH', '')]
    if torch_only:
        path.insert(0, osp.join(ROOT, 'tests', 'torch_only'))
    env['PYTHONPATH'] = os.pathsep.join(p for p in path if p)
    proc = subprocess.run(
        [sys.executable, '-X', 'importtime', '-c', statement],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True)
    times = {}
    for match in LINE.finditer(proc.stderr):
        times[match.group(2)] = int(match.group(1)) / 1e6
    return times


def main(argv=None):
    args = parse_args(argv)
    torch_s, ops_s, on_top = [], [], []
    for _ in range(args.reps):
        torch_s.append(import_times('import torch', args.torch_only)['torch'])
        times = import_times('import pelk_mm.ops', args.torch_only)
        ops_s.append(times['pelk_mm'])
        on_top.append(times['pelk_mm'] - times['torch'])
    result = dict(
        torch_only=args.torch_only,
        reps=args.reps,
        torch_s=round(statistics.median(torch_s), 3),
        ops_s=round(statistics.median(ops_s), 3),
        on_top_of_torch_s=round(statistics.median(on_top), 3),
        on_top_of_torch_max_s=round(max(on_top), 3))
    if args.json:
        print(json.dumps(result))
        return
    env = ('torch only (tests/torch_only)'
           if args.torch_only else 'as installed')
    print(f'{env}, median of {args.reps} fresh interpreters:\n'
          f'  import torch              {result["torch_s"]:.3f} s\n'
          f'  import pelk_mm.ops        {result["ops_s"]:.3f} s\n'
          f'  pelk_mm.ops beyond torch  {result["on_top_of_torch_s"]:.3f} s '
          f'(max {result["on_top_of_torch_max_s"]:.3f} s)')


if __name__ == '__main__':
    main()
