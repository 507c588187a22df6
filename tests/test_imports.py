"""What ``import pelk_mm`` needs and does: torch alone for the operator and
the network (``pelk_mm.models``), the OpenMMLab registrations when mmengine is
installed, nothing demo-related.

Each case runs in a fresh interpreter. ``tests/torch_only/sitecustomize.py``
hides installed packages from it: the installed OpenMMLab stack looks absent.
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from helpers import ROOT

TORCH_ONLY = osp.join(ROOT, 'tests', 'torch_only')
MM_AND_PIL = ('mmengine', 'mmcv', 'mmseg', 'mmdet', 'mmpretrain', 'PIL')


def run_python(code, hide=None):
    """Run ``code`` in a fresh interpreter; ``hide``: packages to hide."""
    env = dict(os.environ)
    path = [ROOT, env.get('PYTHONPATH', '')]
    if hide is not None:
        path.insert(0, TORCH_ONLY)
        env['PELK_MM_HIDE'] = ','.join(hide)
    env['PYTHONPATH'] = os.pathsep.join(p for p in path if p)
    return subprocess.run([sys.executable, '-c', code],
                          cwd=ROOT,
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          timeout=300)


def loaded(prefixes):
    """Code printing, as JSON, the loaded modules under ``prefixes``."""
    return (f'import json, sys; print(json.dumps(sorted(m for m in sys.modules'
            f' if m.split(".")[0] in {prefixes!r} or m.startswith('
            f'"pelk_mm.demo"))))')


def test_simulation_hides_packages():
    code = ('import importlib.util\n'
            'assert importlib.util.find_spec("mmengine") is None\n'
            'try:\n'
            '    import PIL.Image\n'
            'except ModuleNotFoundError as e:\n'
            '    print(e.name)\n')
    proc = run_python(code, hide=MM_AND_PIL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ['PIL']


def test_ops_with_torch_alone():
    code = '\n'.join([
        'import torch',
        'import pelk_mm.ops',
        'from pelk_mm.ops import PeripheralConv2d',
        'torch.manual_seed(0)',
        'conv = PeripheralConv2d(4, kernel_size=13, center_size=3, bias=True)',
        'x = torch.randn(2, 4, 9, 11, requires_grad=True)',
        'h = torch.randn(4, 13, 13)',
        'conv(x, pos_embed=h).square().sum().backward()',
        'ref = torch.nn.functional.conv2d(x, conv.dense_weight(), padding=6,',
        '                                 groups=4)',
        'ref = ref + (conv.bias + (conv.dense_weight()[:, 0] * h).sum((1, 2))',
        '             ).view(1, -1, 1, 1)',
        'torch.testing.assert_close(conv(x, pos_embed=h), ref)',
        'assert x.grad.shape == x.shape and conv.weight.grad.abs().sum() > 0',
        'import pelk_mm',
        'assert pelk_mm.PeripheralConv2d is PeripheralConv2d',
        'assert not hasattr(pelk_mm, "PeLK")',
        loaded(MM_AND_PIL),
    ])
    proc = run_python(code, hide=MM_AND_PIL)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


@pytest.mark.slow
def test_import_registers_openmmlab_side():
    code = '\n'.join([
        'import pelk_mm',
        'from mmengine.registry import HOOKS, MODELS, '
        'OPTIM_WRAPPER_CONSTRUCTORS',
        'assert MODELS.get("PeLK") is pelk_mm.PeLK',
        'assert HOOKS.get("DynamicSparsityHook") is '
        'pelk_mm.DynamicSparsityHook',
        'assert OPTIM_WRAPPER_CONSTRUCTORS.get('
        '"PeLKLearningRateDecayOptimizerConstructor") is '
        'pelk_mm.PeLKLearningRateDecayOptimizerConstructor',
        '# loaders replaced by the import: tests/test_compat.py',
        loaded(()),
    ])
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []  # no demo modules


def test_broken_openmmlab_install_is_not_hidden():
    """mmengine there but mmcv missing: ``import pelk_mm`` fails on mmcv."""
    proc = run_python('import pelk_mm', hide=['mmcv'])
    assert proc.returncode != 0
    assert "ModuleNotFoundError: No module named 'mmcv'" in proc.stderr


def test_network_with_torch_alone():
    """``import pelk_mm.models``: build, initialise, deploy a PeLK."""
    code = '\n'.join([
        'import torch',
        'from pelk_mm.models import PeLK',
        'torch.manual_seed(0)',
        'arch = dict(depths=[1, 1], channels=[16, 24], kernel_sizes=[9, 5],',
        '            center_sizes=3)',
        'net = PeLK(arch, out_indices=(0, 1), drop_path_rate=0.1).eval()',
        'net.init_weights()',
        'x = torch.randn(2, 3, 32, 32)',
        'ref = net(x)',
        'shapes = [tuple(o.shape) for o in ref]',
        'assert shapes == [(2, 16, 8, 8), (2, 24, 4, 4)], shapes',
        'net.switch_to_deploy()',
        'for a, b in zip(net(x), ref):',
        '    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)',
        loaded(MM_AND_PIL),
    ])
    proc = run_python(code, hide=MM_AND_PIL)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_readme_plain_pytorch_example():
    """The README's plain-PyTorch block trains a PeLK classifier for a step
    with torch alone."""
    with open(osp.join(ROOT, 'README.md')) as f:
        blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
    example = [b for b in blocks if 'class PeLKClassifier' in b]
    assert len(example) == 1
    stepped = '\n'.join([
        'assert torch.isfinite(loss)',
        '# the step reached every parameter, positional embeddings included',
        'assert len(optimizer.state) == len(params) > 0',
        'assert all(s["step"] == 1 for s in optimizer.state.values())',
    ])
    proc = run_python(
        example[0] + '\n' + stepped + '\n' + loaded(MM_AND_PIL),
        hide=MM_AND_PIL)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []
