"""tools/analysis_tools/get_flops.py, run as a user runs it."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from helpers import ROOT, SMALL_ARCH

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'get_flops.py')

DEPTHS = SMALL_ARCH['depths']
CHANNELS = SMALL_ARCH['channels']
KERNELS = SMALL_ARCH['kernel_sizes']
CENTER = SMALL_ARCH['center_sizes']
NUM_CLASSES = 10

CONFIG = f"""
default_scope = 'mmpretrain'
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='PeLK',
        arch={SMALL_ARCH!r}),
    head=dict(type='LinearClsHead', num_classes={NUM_CLASSES},
              in_channels={CHANNELS[-1]}))
"""


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp('cfg') / 'tiny_pelk_cls.py'
    path.write_text(CONFIG)
    return path


def run_tool(*args):
    proc = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def expected_counts(height, width):
    """Parameters and multiply-accumulates of the config, by hand."""
    from pelk_mm import sharing_grid
    weights_2d_4d = 3 * 16 * CHANNELS[0] + CHANNELS[-1] * NUM_CLASSES
    other = 3 * CHANNELS[0] + 2 * CHANNELS[-1] + NUM_CLASSES
    macs = 3 * 16 * CHANNELS[0] * (height // 4) * (width // 4)
    macs += CHANNELS[-1] * NUM_CLASSES
    h, w = height // 4, width // 4
    for i, (depth, c, k) in enumerate(zip(DEPTHS, CHANNELS, KERNELS)):
        if i:
            h, w = h // 2, w // 2
            weights_2d_4d += 4 * CHANNELS[i - 1] * c
            other += 2 * CHANNELS[i - 1] + c
            macs += 4 * CHANNELS[i - 1] * c * h * w
        g = int(c * 3 / 8)
        bands = len(sharing_grid(k, CENTER))
        weights_2d_4d += depth * (g * bands**2 + 8 * c * c)
        other += depth * (g + 2 * c + 4 * c + c + c) + g * k * k
        macs += depth * (g * k * k + 8 * c * c) * h * w
    return weights_2d_4d, other, macs


@pytest.mark.slow
def test_get_flops_json(config):
    result = json.loads(
        run_tool(config, '--shape', 64, 64, '--json').strip().splitlines()[-1])
    assert {'params_dense_M', 'params_effective_M', 'flops_G'} <= set(result)
    assert result['input_shape'] == [64, 64]
    weights, other, macs = expected_counts(64, 64)
    assert result['params_dense_M'] * 1e6 == pytest.approx(
        weights + other, abs=0.5)
    # 40 % of the 2-D / 4-D weights removed: the uniform masks keep exactly
    # round(0.6 * weights) of them in total (per layer within one weight)
    assert result['params_effective_M'] * 1e6 == pytest.approx(
        other + round(0.6 * weights), abs=0.5)
    # convolutions and linears dominate; norms, GELU, the PE term add a bit
    assert macs <= result['flops_G'] * 1e9 <= 1.15 * macs
    # every conv / linear is masked: 40 % of their multiply-adds removed
    assert result['flops_effective_G'] * 1e9 == pytest.approx(
        result['flops_G'] * 1e9 - 0.4 * macs, rel=1e-3)


@pytest.mark.slow
def test_get_flops_text_and_options(config):
    # 3000 classes instead of 10: +0.12 M head parameters, far above the
    # 0.005 M rounding of the 2-decimal text output
    out = run_tool(config, '--shape', 32, '--sparsity', 0, '--cfg-options',
                   'model.head.num_classes=3000')
    assert 'Input shape: 32x32' in out
    dense = float(out.split('Params (dense): ')[1].split()[0])
    effective = float(
        out.split('Params (effective, 0% sparsity): ')[1].split()[0])
    assert dense == effective
    weights, other, _ = expected_counts(32, 32)
    head_change = (CHANNELS[-1] + 1) * (3000 - NUM_CLASSES)
    assert head_change / 1e6 > 0.1
    assert dense == pytest.approx(
        (weights + other + head_change) / 1e6, abs=0.0051)
