"""Kill training runs with SIGKILL, resume them, count the exact resumes.

    python tools/analysis_tools/kill_resume_check.py [--repeats N] [--seed S]
        [--work-dir DIR] [--max-iters 8] [--interval 2]

The run is the demo config (configs/demo/upernet_pelk_demo_ade20k.py) made
tiny: 8 generated 64x64 ADE20K-layout images, ``--max-iters`` iterations,
dynamic sparsity (SNIP init, random regrowth) with a prune-and-regrow update
and a checkpoint (``max_keep_ckpts=1``) every ``--interval`` iterations, no
loader workers. It is trained once without interruption, then each repeat
trains it again through ``tools/train.py`` in a subprocess and

1. kills it (SIGKILL) while the checkpoint of a step drawn at random is
   being written: the checkpoint file (and its ``.tmp``) is made a FIFO
   that this script reads from; once some bytes have arrived the writer is
   killed, and the FIFO is replaced by a regular file holding those bytes,
   as a disk holds a file whose writer died mid-write;
2. resumes it with ``--resume`` and kills it (SIGKILL) as soon as it has
   logged an iteration drawn at random;
3. resumes it with ``--resume`` to the end.

The resumed run's last checkpoint is then compared with the uninterrupted
run's: every tensor of the state dict, the sparsity hook's masks, step and
generator, the optimizer state, the parameter schedulers and the random
states, bitwise. The kill points come from ``random.Random(seed + repeat)``.
Prints one line per repeat and ``K of N resumed exactly``; exits with 1 if
any repeat did not. See docs/fault_tolerance.md.
"""
import argparse
import os
import os.path as osp
import random
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Tuple

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CFG = osp.join(ROOT, 'configs', 'demo', 'upernet_pelk_demo_ade20k.py')
TRAIN_TOOL = osp.join(ROOT, 'tools', 'train.py')
SAVE_KILL_BYTES = 1 << 16  # bytes of the checkpoint written before the kill


def train_options(data_root: str, max_iters: int, interval: int) -> List[str]:
    """``--cfg-options`` of the tiny demo run."""
    loader = ['num_workers=0', 'persistent_workers=False']
    return [
        f'train_dataloader.dataset.data_root={data_root}',
        'train_dataloader.batch_size=2',
        *[f'train_dataloader.{kv}' for kv in loader],
        f'train_cfg.max_iters={max_iters}',
        'default_hooks.logger.interval=1',
        f'default_hooks.checkpoint.interval={interval}',
        'default_hooks.checkpoint.max_keep_ckpts=1',
        f'custom_hooks.1.update_interval={interval}',
    ]


class Training:
    """``tools/train.py`` as a subprocess whose output is collected."""

    def __init__(self, work_dir: str, options: List[str], resume: bool):
        resume_flag = ['--resume'] if resume else []
        command = [
            sys.executable, TRAIN_TOOL, DEMO_CFG, '--work-dir', work_dir,
            *resume_flag, '--cfg-options', *options
        ]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS='1'),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True)
        self.lines: List[str] = []
        self.seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()
        with self.seen:
            self.lines.append(None)  # end of output
            self.seen.notify_all()

    def wait_for_line(self, pattern: str, timeout: float) -> bool:
        """Block until a line matching the regular expression ``pattern`` is
        printed (True) or the output ends (False)."""
        with self.seen:
            checked = 0
            while True:
                for line in self.lines[checked:]:
                    if line is None:
                        return False
                    if re.search(pattern, line):
                        return True
                checked = len(self.lines)
                if not self.seen.wait(timeout):
                    raise TimeoutError(f'no {pattern!r} within {timeout} s')

    def finish(self, timeout: float = 600) -> Tuple[int, str]:
        """``(return code, output)`` once the process has exited."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code, ''.join(line for line in self.lines if line)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)


def train(work_dir: str, options: List[str], resume: bool = False) -> str:
    """A run to the end; its output. Raises ``RuntimeError`` on failure."""
    code, log = Training(work_dir, options, resume).finish()
    if code != 0:
        raise RuntimeError(f'training exited with {code}:\n{log[-4000:]}')
    return log


def kill_after_iter(work_dir: str, options: List[str], resume: bool,
                    iteration: int) -> str:
    """SIGKILL the run as soon as it has logged ``iteration``."""
    run = Training(work_dir, options, resume)
    logged = run.wait_for_line(rf'Iter\(train\) \[ *{iteration}/', timeout=600)
    run.kill()
    code, log = run.finish()
    if not logged or code != -signal.SIGKILL:
        raise RuntimeError(f'expected a run killed after iteration '
                           f'{iteration}, got exit {code}:\n{log[-4000:]}')
    return log


def kill_during_save(work_dir: str, options: List[str], resume: bool,
                     step: int) -> str:
    """SIGKILL the run while it writes ``iter_{step}.pth``: see step 1 of
    the module docstring."""
    os.makedirs(work_dir, exist_ok=True)
    final = osp.join(work_dir, f'iter_{step}.pth')
    fifos = [final, final + '.tmp']
    for fifo in fifos:
        os.mkfifo(fifo)
    readers = {
        os.open(fifo, os.O_RDONLY | os.O_NONBLOCK): fifo
        for fifo in fifos
    }
    run = Training(work_dir, options, resume)
    written, target = b'', None
    try:
        while len(written) < SAVE_KILL_BYTES and run.proc.poll() is None:
            ready, _, _ = select.select(list(readers), [], [], 1.0)
            for fd in ready:
                chunk = os.read(fd, SAVE_KILL_BYTES - len(written))
                if chunk:
                    written += chunk
                    target = readers[fd]
                else:  # no writer yet
                    time.sleep(0.01)
        run.kill()
        code, log = run.finish()
    finally:
        for fd in readers:
            os.close(fd)
        for fifo in fifos:
            os.remove(fifo)
    if target is None or code != -signal.SIGKILL:
        raise RuntimeError(f'expected a run killed while writing {final}, '
                           f'got exit {code}:\n{log[-4000:]}')
    with open(target, 'wb') as f:  # what the disk holds after the kill
        f.write(written)
    return log


def load(path: str) -> dict:
    # a checkpoint this script's runs wrote: trusted
    return torch.load(path, map_location='cpu', weights_only=False)


def differences(expected, actual, where: str = 'checkpoint') -> List[str]:
    """Where ``actual`` differs from ``expected``: tensors bitwise (values
    and dtype), containers recursively, everything else by ``==``."""
    if isinstance(expected, torch.Tensor):
        same = (
            isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype
            and expected.shape == actual.shape
            and torch.equal(expected, actual))
        return [] if same else [where]
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            return [f'{where} (keys)']
        return [
            d for key in expected
            for d in differences(expected[key], actual[key], f'{where}.{key}')
        ]
    if isinstance(expected, (list, tuple)):
        if type(expected) is not type(actual) or len(expected) != len(actual):
            return [f'{where} (length)']
        return [
            d for i, (e, a) in enumerate(zip(expected, actual))
            for d in differences(e, a, f'{where}[{i}]')
        ]
    return [] if expected == actual else [where]


COMPARED = ('state_dict', 'sparsity', 'optimizer', 'param_schedulers',
            'random_state')


def compare(expected_path: str, actual_path: str) -> List[str]:
    """The differences between two checkpoints in :data:`COMPARED` and the
    iteration in ``meta``."""
    expected, actual = load(expected_path), load(actual_path)
    found = []
    for key in COMPARED:
        if key not in expected:
            found.append(f'{key} missing from the uninterrupted run')
        else:
            found += differences(expected[key], actual.get(key), key)
    if expected['meta']['iter'] != actual['meta']['iter']:
        found.append('meta.iter')
    return found


def repeat(reference: str, work_dir: str, options: List[str], max_iters: int,
           interval: int, rng: random.Random) -> Tuple[str, List[str]]:
    """One repeat (steps 1-3 of the module docstring): ``(what was done,
    differences from the reference checkpoint)``."""
    save_step = rng.randrange(interval, max_iters, interval)
    kill_during_save(work_dir, options, False, save_step)
    resumed_from = save_step - interval
    kill_iter = rng.randrange(resumed_from + 1, max_iters)
    kill_after_iter(work_dir, options, True, kill_iter)
    train(work_dir, options, resume=True)
    what = (f'killed while saving iter_{save_step}.pth, resumed, killed '
            f'after iteration {kill_iter}, resumed')
    return what, compare(reference, osp.join(work_dir,
                                             f'iter_{max_iters}.pth'))


def check(repeats: int,
          seed: int,
          work_dir: str,
          max_iters: int = 8,
          interval: int = 2,
          log=print) -> int:
    """Train the reference, run ``repeats`` repeats; the number of exact
    resumes."""
    from pelk_mm.demo import make_ade20k_demo
    if max_iters < 2 * interval or max_iters % interval:
        raise ValueError('--max-iters must be a multiple of --interval and '
                         f'at least twice it, got {max_iters} and {interval}')
    data = make_ade20k_demo(
        osp.join(work_dir, 'data'), 8, 1, size=(64, 64), seed=0)
    options = train_options(data, max_iters, interval)
    reference_dir = osp.join(work_dir, 'uninterrupted')
    train(reference_dir, options)
    reference = osp.join(reference_dir, f'iter_{max_iters}.pth')
    exact = 0
    for i in range(repeats):
        what, found = repeat(reference, osp.join(work_dir, f'repeat_{i}'),
                             options, max_iters, interval,
                             random.Random(seed + i))
        exact += not found
        log(f'repeat {i}: {what}: ' +
            ('exact' if not found else 'differs in ' + ', '.join(found[:8])))
    log(f'{exact} of {repeats} resumed exactly')
    return exact


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--work-dir', help='where the runs go (default: a temporary dir)')
    parser.add_argument('--max-iters', type=int, default=8)
    parser.add_argument('--interval', type=int, default=2)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.repeats < 1:
        raise SystemExit('--repeats must be a positive integer')
    with tempfile.TemporaryDirectory() as tmp:
        exact = check(args.repeats, args.seed, args.work_dir or tmp,
                      args.max_iters, args.interval)
    sys.exit(0 if exact == args.repeats else 1)


if __name__ == '__main__':
    main()
