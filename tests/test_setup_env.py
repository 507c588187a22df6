"""The mmcv wheel cache of tools/setup_env.sh: written atomically, a corrupt
entry is deleted (and so rebuilt) instead of installed.

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

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'setup_env.sh')


def bash(tmp_path, snippet):
    """Run ``snippet`` after sourcing a copy of the script, PY = this Python.

    The copy lives in ``tmp_path/tools`` and ``PYTHON=false``: were the setup
    itself to run, it would fail at once on a venv under ``tmp_path``, never
    touch this checkout's ``.venv``.
    """
    (tmp_path / 'tools').mkdir(exist_ok=True)
    script = shutil.copy(SCRIPT, tmp_path / 'tools' / 'setup_env.sh')
    env = dict(os.environ, PYTHON='false', PELK_MM_CACHE=str(tmp_path / 'c'))
    return subprocess.run(
        ['bash', '-c', f'source "$1"; PY="$2"; {snippet}', 'bash',
         str(script), sys.executable],
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
    proc = bash(tmp_path,
                'type main cached_wheel cache_wheel valid_wheel >/dev/null')
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
