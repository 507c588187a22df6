"""tools/setup_env.sh: its two stacks (latest, canonical), each with its own
venv, pins, stamp and mmcv wheel cache folder; the cache is written
atomically, and a corrupt entry is deleted (and so rebuilt) instead of
installed.

The script's functions are sourced into a bash subprocess (sourcing defines
them without running the setup) and run on small zip files standing in for
wheels.
"""
import os
import os.path as osp
import random
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import ROOT

SCRIPT = osp.join(ROOT, 'tools', 'setup_env.sh')


def bash(tmp_path, snippet):
    """Run ``snippet`` after sourcing a copy of the script, PY = this Python.

    The copy lives in ``tmp_path/tools`` (with copies of setup.py and
    requirements/, so ``tmp_path`` is its repository root) and
    ``PYTHON=false``: were the setup itself to run, it would fail at once on
    a venv under ``tmp_path``, never touch this checkout's venvs.
    """
    (tmp_path / 'tools').mkdir(exist_ok=True)
    script = shutil.copy(SCRIPT, tmp_path / 'tools' / 'setup_env.sh')
    shutil.copy(osp.join(ROOT, 'setup.py'), tmp_path)
    shutil.copytree(
        osp.join(ROOT, 'requirements'),
        tmp_path / 'requirements',
        dirs_exist_ok=True)
    env = dict(os.environ, PYTHON='false', PELK_MM_CACHE=str(tmp_path / 'c'))
    return subprocess.run([
        'bash', '-c', f'source "$1"; PY="$2"; {snippet}', 'bash',
        str(script), sys.executable
    ],
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          timeout=60)


def make_wheel(path):
    payload = random.Random(0).randbytes(10_000)
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as wheel:
        wheel.writestr('mmcv/_ext.so', payload)
    return path


def test_sourcing_only_defines_functions(tmp_path):
    proc = bash(
        tmp_path, 'type main select_stack cached_wheel cache_wheel '
        'valid_wheel >/dev/null')
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == '' and not (tmp_path / '.venv').exists()


def test_cache_wheel_renames_a_checked_copy_into_place(tmp_path):
    built = make_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    cache = tmp_path / 'cache' / 'wheels'
    proc = bash(tmp_path,
                f'cache_wheel "{built}" "{cache}" && cached_wheel "{cache}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cache / built.name)
    assert sorted(p.name for p in cache.iterdir()) == [built.name]
    assert (cache / built.name).read_bytes() == built.read_bytes()


def test_cache_wheel_refuses_a_corrupt_build(tmp_path):
    built = make_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    built.write_bytes(built.read_bytes()[:-200])  # truncated
    cache = tmp_path / 'cache'
    proc = bash(tmp_path, f'cache_wheel "{built}" "{cache}"')
    assert proc.returncode != 0
    assert list(cache.iterdir()) == []


def test_corrupt_cached_wheel_is_deleted_not_used(tmp_path):
    good = make_wheel(tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    data = bytearray(good.read_bytes())
    flipped = bytearray(data)
    flipped[200] ^= 0xFF  # inside the stored member: CRC mismatch
    cache = tmp_path / 'cache'
    cache.mkdir()
    cached = cache / good.name
    (cache / '.incoming.abc123').write_bytes(b'partial')  # interrupted copy
    for corrupt in (data[:len(data) // 2], flipped):  # truncated, bit flip
        cached.write_bytes(bytes(corrupt))
        proc = bash(tmp_path, f'cached_wheel "{cache}"')
        assert proc.returncode == 1 and proc.stdout == ''  # so: rebuild
        assert 'corrupt' in proc.stderr and not cached.exists()

    cached.write_bytes(bytes(data))
    proc = bash(tmp_path, f'cached_wheel "{cache}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(cached)


STACKS = {
    # stack: venv, torch, torchvision, mmcv built with its C++ standard raised
    'latest': ('.venv', '2.14.1', '0.29.1', '1'),
    'canonical': ('.venv-canonical', '2.1.2', '0.16.2', '0'),
}


@pytest.mark.parametrize('stack', sorted(STACKS))
def test_select_stack(tmp_path, stack):
    proc = bash(
        tmp_path, f'select_stack {stack} && PY="$2" && echo "$VENV" '
        '"$TORCH_VERSION" "$TORCHVISION_VERSION" "$MMCV_CXX20" '
        '"$REQUIREMENTS" && wheel_cache_dir')
    assert proc.returncode == 0, proc.stderr
    settings, wheels = proc.stdout.splitlines()
    venv, torch, torchvision, cxx20 = STACKS[stack]
    assert settings.split() == [
        str(tmp_path / venv), torch, torchvision, cxx20,
        str(tmp_path / 'requirements' / f'{stack}.txt')
    ]
    pytag = f'cp{sys.version_info[0]}{sys.version_info[1]}'
    assert wheels == str(tmp_path / 'c' / 'wheels' /
                         f'mmcv-2.1.0-torch{torch}-{pytag}')


def test_unknown_stack_is_refused(tmp_path):
    proc = bash(tmp_path, 'main nightly')
    assert proc.returncode == 2
    assert "unknown stack 'nightly'" in proc.stderr
    assert "'latest' (default) or 'canonical'" in proc.stderr


def test_requirements_pin_the_mm_packages_on_both_stacks():
    for stack in STACKS:
        with open(osp.join(ROOT, 'requirements', f'{stack}.txt')) as f:
            pins = {
                line.split('==')[0]: line.split('==')[1]
                for line in f.read().splitlines() if '==' in line
            }
        assert {
            name: pins[name]
            for name in ('mmengine', 'mmsegmentation', 'mmdet', 'mmpretrain')
        } == {
            'mmengine': '0.10.7',
            'mmsegmentation': '1.2.2',
            'mmdet': '3.3.0',
            'mmpretrain': '1.2.0'
        }


@pytest.mark.parametrize('stack', sorted(STACKS))
def test_each_stack_has_its_own_stamp(tmp_path, stack):
    """Only the stack's own current stamp makes the setup return at once.

    The venvs are stand-ins whose python exits 3: a setup that does not stop
    at the stamp fails at its first pip call instead of installing.
    """
    for venv, *_ in STACKS.values():
        (tmp_path / venv / 'bin').mkdir(parents=True)
        python = tmp_path / venv / 'bin' / 'python'
        python.write_text('#!/bin/sh\nexit 3\n')
        python.chmod(0o755)
    stamps = {}
    for name, (venv, *_) in STACKS.items():
        proc = bash(tmp_path, f'select_stack {name} && stamp_hash')
        assert proc.returncode == 0, proc.stderr
        stamps[name] = tmp_path / venv / '.pelk_mm_stamp', proc.stdout
    assert stamps['latest'][1] != stamps['canonical'][1]  # own requirements

    other = next(name for name in STACKS if name != stack)
    stamps[other][0].write_text(stamps[other][1])
    proc = bash(tmp_path, f'main {stack}')
    assert proc.returncode == 3 and 'up to date' not in proc.stderr

    stamps[stack][0].write_text(stamps[stack][1])
    proc = bash(tmp_path, f'main {stack}')
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == (f'[setup_env] {stack} stack up to date '
                           f'({tmp_path / STACKS[stack][0]})\n')


@pytest.mark.parametrize(
    'codes, status, failed',
    [
        ((0, 0, 0), 0, None),
        ((0, 5, 0), 1,
         'canonical (exit code 1)'),  # no tests collected: failed
        ((2, 0, 0), 2, 'latest (exit code 2)'),
        ((1, 3, 0), 1, 'latest (exit code 1) canonical (exit code 3)'),
        ((0, 0, 1), 1, 'lint (exit code 1)'),
    ])
def test_ci_runs_both_stacks_and_lint_and_names_the_failed_one(
        tmp_path, codes, status, failed):
    """.ci/run on stand-ins: a setup script that succeeds, venv pythons that
    exit with the given pytest codes (latest, canonical) and a lint script
    that exits with the last code."""
    (tmp_path / '.ci').mkdir()
    shutil.copy(osp.join(ROOT, '.ci', 'run'), tmp_path / '.ci' / 'run')
    (tmp_path / 'tools').mkdir()
    (tmp_path / 'tools' / 'setup_env.sh'
     ).write_text('echo "setup $1" >> "$(dirname "$0")/../calls"\n')
    (tmp_path / 'tools' / 'lint.sh').write_text(
        f'echo "lint $PYTHON" >> "$(dirname "$0")/../calls"\n'
        f'exit {codes[2]}\n')
    for venv, code in zip(('.venv', '.venv-canonical'), codes):
        (tmp_path / venv / 'bin').mkdir(parents=True)
        python = tmp_path / venv / 'bin' / 'python'
        python.write_text(f'#!/bin/sh\necho "{venv} $*" >> calls\n'
                          f'exit {code}\n')
        python.chmod(0o755)
    proc = subprocess.run(['bash', str(tmp_path / '.ci' / 'run')],
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          timeout=60)
    assert proc.returncode == status, proc.stderr
    assert (tmp_path / 'calls').read_text().splitlines() == [
        'setup latest', '.venv -m pytest tests', 'setup canonical',
        '.venv-canonical -m pytest tests', 'lint .venv/bin/python'
    ]
    if failed is None:
        assert 'CI: passed on both stacks' in proc.stderr
    else:
        assert f'CI: FAILED on: {failed}\n' in proc.stderr
