"""On top of an installed OpenMMLab stack, pelk-mm installs only itself.

setup.py's floors (torch >= 2.1, mmcv >= 2.0, < 2.2, ...) must admit the stack
this suite runs on, so that ``pip install -e .[seg]`` in a user's existing
environment neither replaces their torch nor their mmcv (whose compiled ops
are linked against that torch). The check: a throwaway venv whose
``site-packages`` holds a ``.pth`` file that adds this interpreter's
``site-packages`` (so it sees the stack as installed, and whatever pip would
install would go to the throwaway venv), and ``pip install --dry-run
--no-index --report`` there: the report must list pelk-mm alone.
``--no-index`` keeps it offline; a requirement that the stack does not
satisfy then fails the resolve, and the test with it.
"""
import importlib.metadata
import json
import os.path as osp
import site
import subprocess
import venv

import pytest
from packaging.requirements import Requirement

from helpers import ROOT


@pytest.fixture(scope='module')
def stack_python(tmp_path_factory):
    """A venv without packages of its own that sees this interpreter's."""
    root = tmp_path_factory.mktemp('stack_venv')
    venv.create(root, with_pip=False)
    python = str(root / 'bin' / 'python')
    purelib = subprocess.run([
        python, '-c', 'import sysconfig; '
        "print(sysconfig.get_path('purelib'))"
    ],
                             check=True,
                             stdout=subprocess.PIPE,
                             text=True).stdout.strip()
    with open(osp.join(purelib, 'stack.pth'), 'w') as f:
        f.write(f'import site; list(map(site.addsitedir, '
                f'{site.getsitepackages()!r}))\n')
    return python


def dry_run(python, report, *args):
    """``pip install --dry-run`` offline; returns the report's installs."""
    proc = subprocess.run([
        python, '-m', 'pip', 'install', '--dry-run', '--no-index',
        '--no-build-isolation', '--disable-pip-version-check', '--report',
        str(report), *args
    ],
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout
    return json.loads(report.read_text())['install']


def not_installed(requires_dist, extra):
    """The requirements of ``extra`` (and the base) not installed here."""
    missing = []
    for line in requires_dist:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({'extra': extra}):
            try:
                importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(req.name)
    return missing


def test_the_throwaway_venv_sees_this_stack(stack_python):
    versions = subprocess.run([
        stack_python, '-c', 'import importlib.metadata as m; '
        "print(m.version('torch'), m.version('mmcv'))"
    ],
                              check=True,
                              stdout=subprocess.PIPE,
                              text=True).stdout.split()
    assert versions == [
        importlib.metadata.version(name) for name in ('torch', 'mmcv')
    ]


@pytest.mark.parametrize('extra', ['seg', 'det', 'all'])
def test_dry_run_installs_only_pelk_mm(stack_python, tmp_path, extra):
    # pelk-mm's own metadata (requires_dist) from setup.py, as pip reads it.
    (meta, ) = dry_run(stack_python, tmp_path / 'meta.json', '--no-deps', '-e',
                       ROOT)
    missing = not_installed(meta['metadata']['requires_dist'], extra)
    if missing:
        pytest.skip(f'[{extra}] lists {missing}, not installed here')
    installs = dry_run(stack_python, tmp_path / 'report.json', '-e',
                       f'{ROOT}[{extra}]')
    assert [item['metadata']['name'] for item in installs] == ['pelk-mm']
    # pip >= 23.1 reports the extras it resolved (pip 23.0 has no such key)
    assert installs[0].get('requested_extras', [extra]) == [extra]
