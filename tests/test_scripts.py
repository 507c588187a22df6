"""The launchers fail safely: strict mode, argument checks, usage message.

Each script runs as a subprocess. Wrong arguments must exit non-zero with the
usage text before anything is launched; good ones must build exactly the
launch command. ``PYTHON=echo`` (torchrun) and a fake ``srun`` on ``PATH``
print that command instead of running it.
"""
import os
import os.path as osp
import subprocess

import pytest

from helpers import ROOT

CONFIG = 'configs/pelk_t_in1k.py'

# script, its positional arguments (valid), usage text
SCRIPTS = {
    'dist_train.sh': ([CONFIG, '2'], 'CONFIG NUM_PROCS'),
    'dist_test.sh': ([CONFIG, 'ckpt.pth', '2'], 'CONFIG CHECKPOINT NUM_PROCS'),
    'slurm_train.sh': (['part', 'job', CONFIG], 'PARTITION JOB_NAME CONFIG'),
    'slurm_test.sh': (['part', 'job', CONFIG,
                       'ckpt.pth'], 'PARTITION JOB_NAME CONFIG CHECKPOINT'),
}


def run(script, args, tmp_path, **env):
    fake_srun = tmp_path / 'srun'
    fake_srun.write_text('#!/bin/sh\necho srun "$@"\n')
    fake_srun.chmod(0o755)
    environ = dict(
        os.environ,
        PYTHON='echo',
        PATH=f'{tmp_path}:{os.environ["PATH"]}',
        **env)
    for name in ('NNODES', 'NODE_RANK', 'PORT', 'GPUS', 'GPUS_PER_NODE',
                 'CPUS_PER_TASK', 'SRUN_ARGS'):
        if name not in env:
            environ.pop(name, None)
    return subprocess.run(['bash', f'tools/{script}', *args],
                          cwd=ROOT,
                          env=environ,
                          capture_output=True,
                          text=True)


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_strict_mode(script):
    with open(osp.join(ROOT, 'tools', script)) as f:
        assert 'set -euo pipefail' in f.read()


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_missing_arguments(script, tmp_path):
    args, usage = SCRIPTS[script]
    for n in range(len(args)):
        proc = run(script, args[:n], tmp_path)
        assert proc.returncode == 2, (n, proc.stdout, proc.stderr)
        assert 'Usage: ' in proc.stderr and usage in proc.stderr
        assert f'got {n} argument(s)' in proc.stderr
        assert proc.stdout == ''  # nothing launched


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_valid_arguments_launch(script, tmp_path):
    args, _ = SCRIPTS[script]
    proc = run(script, args + ['--cfg-options', 'a=1'], tmp_path)
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.split()
    tool = 'train.py' if 'train' in script else 'test.py'
    i = next(i for i, word in enumerate(command) if word.endswith(tool))
    expected = [CONFIG] + (['ckpt.pth'] if 'test' in script else [])
    assert command[i + 1:i + 1 + len(expected)] == expected
    assert command[-2:] == ['--cfg-options', 'a=1']
    if script.startswith('dist'):
        assert command[:2] == ['-m', 'torch.distributed.run']
        assert '--nproc_per_node=2' in command
    else:
        assert command[0] == 'srun' and '--ntasks=8' in command


@pytest.mark.parametrize('script,env,message', [
    ('dist_train.sh', {}, None),
    ('dist_train.sh', dict(NNODES='0'), 'NNODES must be a positive integer'),
    ('dist_test.sh', dict(NNODES='2', NODE_RANK='2'), 'NODE_RANK must be'),
    ('dist_test.sh', dict(PORT='http'), 'PORT must be an integer'),
    ('slurm_train.sh', dict(GPUS='eight'), 'GPUS must be a positive integer'),
    ('slurm_test.sh', dict(CPUS_PER_TASK='0'),
     'CPUS_PER_TASK must be a positive integer'),
])
def test_bad_environment(script, env, message, tmp_path):
    args, _ = SCRIPTS[script]
    proc = run(script, args, tmp_path, **env)
    if message is None:  # the control: the same call without the bad value
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and message in proc.stderr
        assert proc.stdout == ''


@pytest.mark.parametrize('script', sorted(SCRIPTS))
@pytest.mark.parametrize('bad', ['0', '-1', 'two', '1.5', ''])
def test_bad_num_procs_or_config(script, bad, tmp_path):
    args, _ = SCRIPTS[script]
    args = list(args)
    if script.startswith('dist'):
        args[-1] = bad  # NUM_PROCS
        message = f"NUM_PROCS must be a positive integer, got '{bad}'"
    else:
        args[2] = f'configs/missing{bad}.py'  # CONFIG
        message = f"CONFIG 'configs/missing{bad}.py' is not a file"
    proc = run(script, args, tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert 'Usage: ' in proc.stderr and proc.stdout == ''
