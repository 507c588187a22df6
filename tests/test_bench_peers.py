"""benchmarks/bench_peers.py --quick runs end to end (toy models, one round)
and writes every figure, so the peers benchmark never rots; and the SLaK-T
re-implementation's merged deploy form computes what its three branches
compute (benchmarks/slak.py)."""
import copy
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
from slak import SLAK_T, SLaK  # noqa: E402

MODELS = ('convnext', 'replknet', 'slak', 'pelk')


def test_slak_merged_equals_branches():
    torch.manual_seed(0)
    model = SLaK(
        widths=(8, 16, 24, 32),
        depths=(1, 1, 1, 1),
        kernel_sizes=(13, 11, 9, 5),
        small_kernel=3,
        layer_scale_init=1.0).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    merged = copy.deepcopy(model)
    merged.switch_to_deploy()
    convs = [
        m for m in merged.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1
    ]
    assert [c.kernel_size for c in convs] == [(13, 13), (11, 11), (9, 9),
                                              (5, 5)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for out, ref in zip(merged(x), model(x)):
            assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_slak_t_widths_and_kernels():
    assert SLAK_T == dict(
        widths=(124, 249, 499, 998),
        depths=(3, 3, 9, 3),
        kernel_sizes=(51, 49, 47, 13),
        small_kernel=5)
    with pytest.raises(ValueError, match='`widths`, `depths`'):
        SLaK(depths=(3, 3, 9))


@pytest.mark.slow
def test_quick_run_writes_every_figure(tmp_path):
    pytest.importorskip('onnxruntime')
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([
        sys.executable,
        os.path.join(ROOT, 'benchmarks', 'bench_peers.py'), '--quick',
        '--save',
        str(tmp_path)
    ],
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    (path, ) = tmp_path.glob('peers_cpu_*.json')
    result = json.loads(path.read_text())
    rows = result['results']
    assert result['models'] == list(MODELS)
    for name in MODELS:
        assert rows['deploy_vs_train_rel_error'][name] < 1e-4
        cx = rows['complexity'][name]
        assert cx['params_M'] > 0 and cx['flops_G_64'] > 0
        assert rows['memory'][name]['peak_above_mib'] > 0
        for kind in ('dynamic', 'static'):
            assert rows['ort']['ort_vs_torch_rel_error'][
                f'{name}/{kind}'] < 1e-4
    # the merged SLaK kernel is dense K x K: more FLOPs than its stripes
    assert (rows['complexity']['slak']['flops_deploy_G_64']
            > rows['complexity']['slak']['flops_G_64'])
    infer, train = rows['torch_infer_fp32'], rows['torch_train_fp32']
    assert set(infer['median_s']) == {f'{n}/deploy'
                                      for n in MODELS} | {'pelk/train-form'}
    assert infer['ratios']['convnext/deploy'] == 1.0
    assert set(train['ratios']) == set(MODELS)
    assert rows['ort']['ratios']['convnext/static'] == 1.0
    assert infer['ratios']['pelk/train-form'] == pytest.approx(
        infer['median_s']['pelk/train-form'] /
        infer['median_s']['convnext/deploy'])
    # onnxruntime timed in two fresh interpreters (--quick), every export
    # once in each; the reported ratio is the median of theirs
    processes = rows['ort']['processes']
    assert len(processes) == 2
    for process in processes:
        assert {
            k: len(t)
            for k, t in process['times_s'].items()
        } == {
            f'{n}/{kind}': 1
            for n in MODELS
            for kind in ('dynamic', 'static')
        }
    assert rows['ort']['ratios']['pelk/dynamic'] == pytest.approx(
        statistics.median(p['ratios']['pelk/dynamic'] for p in processes))
    assert 'onnxruntime per process' in done.stdout
    assert result['paper_table8_a100_fp32_224_img_s']['PeLK-T'] == 1138
    assert '| PeLK-T |' in done.stdout
