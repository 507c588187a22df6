"""The prepared GPU check (benchmarks/device_check.py) in its --smoke mode:
the same code path on the CPU with tiny sizes (PeLK-T's four stage shapes
shrunk, the sweeps, the tuning, the backbones), so the script never rots;
its torch-only part with every mm package hidden (the GPU machine has
none); and the cost-model fit (benchmarks/fit_cost_model.py) on synthetic
timings."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from pelk_mm.ops import sharing_grid
from pelk_mm.ops.impl_selection import COST_COEFFICIENTS
from pelk_mm.ops.peripheral_conv import triton_listed
from helpers import ROOT

sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
import device_check  # noqa: E402
import fit_cost_model  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(
    not hasattr(torch.amp, 'GradScaler'),
    reason=f'the smoke run trains under fp16 autocast on the CPU, which '
    f'needs a CPU GradScaler (torch.amp.GradScaler, torch >= 2.3); this is '
    f'torch {torch.__version__}')
def test_smoke_run_writes_every_result(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([
        sys.executable,
        osp.join(ROOT, 'benchmarks', 'device_check.py'), '--smoke', '--out',
        str(tmp_path)
    ],
                   check=True,
                   env=env,
                   timeout=3600,
                   cwd=ROOT)
    conv = json.loads((tmp_path / 'conv.json').read_text())
    methods = {row['method'] for row in conv['results']}
    assert methods == {'dense', 'fft', 'blocksum', 'auto'}
    assert {row['precision'] for row in conv['results']} == {'fp32', 'bf16'}
    for row in conv['results']:
        assert row['dense_ms'] > 0 and row['dw7x7_ms'] > 0
        assert row['max_abs_err']['out'] < 0.1
    shapes = json.loads((tmp_path / 'conv_shapes.json').read_text())
    assert {row['layout']
            for row in shapes['results']} == {'nchw', 'channels_last'}
    assert '| auto pick |' in (tmp_path / 'conv.md').read_text()
    fit = (tmp_path / 'fit.md').read_text()
    assert "'cpu': {" in fit and 'within 10% of the fastest' in fit
    backbone = json.loads((tmp_path / 'backbone.json').read_text())
    assert {(row['model'], row['mode'])
            for row in backbone['results']} == {(model, mode)
                                                for model in ('pelk',
                                                              'convnext')
                                                for mode in ('train', 'infer')}
    assert backbone['machine']['infer_size'] == [32, 64]
    assert backbone['summary']['fp16_losses_finite']
    assert backbone['summary']['bf16_losses_finite']
    assert len(backbone['amp_losses']['fp16']) == 1
    assert (tmp_path / 'backbone.md').read_text().startswith('| mode |')
    hook = json.loads((tmp_path / 'backbone_hook.json').read_text())
    cost = hook['sparsity_hook']
    assert cost['train_step'] > 0 and cost['update'] > 0
    assert cost['per_step_fraction'] == cost['per_step'] / cost['train_step']
    check_tuning(tmp_path)
    check_stages(tmp_path)
    seconds = json.loads((tmp_path / 'seconds.json').read_text())
    assert seconds.pop('skipped') == {} and None not in seconds.values()


def check_stages(out):
    """The PeLK-T stage runs of the smoke (the first and the last stage):
    every registered implementation (the Triton kernels where they are
    listed) beside the 7x7, fwd and fwd+bwd, fp32 and bf16, at the stage's
    kernel size."""
    stages = [(index, kernel_size) for index, (
        _, _, kernel_size) in enumerate(device_check.PELK_T_STAGES, start=1)
              if f'stage{index}' in device_check.SMOKE]
    assert [index for index, _ in stages] == [1, 4]
    for index, kernel_size in stages:
        stage = json.loads((out / f'stage{index}.json').read_text())
        rows = stage['results']
        assert {row['method']
                for row in rows
                } == {'dense', 'fft', 'blocksum', 'auto'
                      } | ({'triton'} if triton_listed() else set())
        assert {(row['mode'], row['precision'])
                for row in rows} == {(mode, precision)
                                     for mode in ('fwd', 'fwd+bwd')
                                     for precision in ('fp32', 'bf16')}
        for row in rows:
            assert row['kernel_size'] == kernel_size
            assert row['ms'] > 0 and row['dw7x7_ms'] > 0
            assert row['max_abs_err']['out'] < 0.1


def check_tuning(out):
    """bench_impl_tuning.py's record: a pick per shape and mode, timed once,
    with the candidates' times."""
    tuning = json.loads((out / 'tuning.json').read_text())
    assert {row['mode'] for row in tuning['results']} == {'train', 'infer'}
    for row in tuning['results']:
        assert row['pick'] in ('dense', 'fft', 'blocksum')
        assert set(row['candidates_ms']) == {'dense', 'fft', 'blocksum'}
        assert row['pick'] == min(
            row['candidates_ms'], key=row['candidates_ms'].get)
        assert row['first_step_s'] > 0 and row['dispatch_us'] > 0
    assert '| pick |' in (out / 'tuning.md').read_text()


def test_torch_only_part_needs_no_mm_package(tmp_path):
    """--no-mm with mmengine, mmcv, mmseg, mmdet, mmpretrain hidden: the
    convolution sweeps, the fit and the tuned dispatch still run."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [osp.join(ROOT, 'tests', 'torch_only'), ROOT]))
    subprocess.run([
        sys.executable,
        osp.join(ROOT, 'benchmarks', 'device_check.py'), '--smoke', '--no-mm',
        '--out',
        str(tmp_path)
    ],
                   check=True,
                   env=env,
                   timeout=1800,
                   cwd=ROOT)
    check_tuning(tmp_path)
    check_stages(tmp_path)
    assert (tmp_path / 'conv.json').exists() and (tmp_path / 'fit.md').exists()
    assert not (tmp_path / 'backbone.json').exists()
    seconds = json.loads((tmp_path / 'seconds.json').read_text())
    assert seconds['skipped'] == {'mm': '--no-mm'}


@pytest.mark.skipif(
    hasattr(torch.amp, 'GradScaler'),
    reason=f'torch {torch.__version__} has a CPU GradScaler')
def test_fp16_without_a_cpu_grad_scaler_names_the_torch_needed():
    import bench_backbone
    with pytest.raises(RuntimeError, match=r'fp16 on cpu .* torch >= 2\.3'):
        bench_backbone.grad_scaler(torch.device('cpu'), enabled=True)
    bench_backbone.grad_scaler(torch.device('cpu'), enabled=False)  # fp32


def _synthetic_rows(coefficients):
    """Timings that the model with ``coefficients`` predicts exactly."""
    rows = []
    for mode in ('fwd', 'fwd+bwd'):
        for kernel_size in (13, 31, 51, 101):
            grid = sharing_grid(kernel_size, 7 if kernel_size >= 101 else 5)
            for size in (8, 16, 32, 64, 128):
                for batch, channels in ((1, 48), (2, 96)):
                    key = (mode, batch, channels, size, grid)
                    for impl in fit_cost_model.IMPLS:
                        seconds = sum(c * f for c, f in zip(
                            coefficients[mode][impl],
                            fit_cost_model.features(impl, key)))
                        rows.append(
                            dict(
                                method=impl,
                                mode=mode,
                                batch=batch,
                                channels=channels,
                                size=size,
                                grid=list(grid),
                                ms=seconds * 1e3,
                                precision='fp32',
                                layout='nchw'))
    return rows


def test_fit_recovers_known_coefficients():
    truth = COST_COEFFICIENTS['cpu']
    table = fit_cost_model.cells(_synthetic_rows(truth))
    fitted = fit_cost_model.fit(table)
    for mode, impls in truth.items():
        for impl, coeffs in impls.items():
            assert fitted[mode][impl] == pytest.approx(
                coeffs, rel=1e-6, abs=1e-20), (mode, impl)
    report = fit_cost_model.picks(table, fitted, 0.10)
    assert len(report) == 80 and all(row['ok'] for row in report)


def test_fit_flags_a_wrong_pick():
    """A model that always prefers dense is reported over 10 % where dense
    is measured much slower."""
    truth = COST_COEFFICIENTS['cpu']
    table = fit_cost_model.cells(_synthetic_rows(truth))
    dense_only = {
        mode: {
            impl: (0.0, 0.0, 1.0 if impl != 'dense' else 0.0)
            for impl in fit_cost_model.IMPLS
        }
        for mode in truth
    }
    report = fit_cost_model.picks(table, dense_only, 0.10)
    assert any(not row['ok'] for row in report)
    assert all(row['pick'] == 'dense' for row in report)
