"""benchmarks/bench_boxsum_layouts.py runs end to end on tiny shapes and
writes what it reports: both layouts timed in both runtimes, the ratios, and
the layout the op picks for each shape."""
import json
import os
import sys

import pytest

from helpers import ROOT

pytest.importorskip('onnxruntime')
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import bench_boxsum_layouts  # noqa: E402

from pelk_mm.ops import sharing_grid  # noqa: E402
from pelk_mm.ops.boxsum_conv import uses_band_matrices  # noqa: E402


def test_runs_and_saves(tmp_path, capsys):
    bench_boxsum_layouts.main([
        '--shapes', '3:12:13', '2:100:31', '--iters', '1', '--save',
        str(tmp_path)
    ])
    saved = sorted(os.listdir(tmp_path))
    assert [os.path.splitext(name)[1] for name in saved] == ['.json', '.md']
    result = json.loads((tmp_path / saved[0]).read_text())
    rows = result['results']
    assert [(r['channels'], r['side'], r['kernel_size'])
            for r in rows] == [(3, 12, 13), (2, 100, 31)]
    for row in rows:
        assert set(row['median_s']) == {
            'ort_matrices', 'ort_means', 'torch_matrices', 'torch_means'
        }
        assert all(len(t) == 1 for t in row['times_s'].values())
        grid = sharing_grid(row['kernel_size'], 5)
        assert row['picked'] == ('matrices' if uses_band_matrices(
            grid, row['side'], row['side']) else 'means')
        assert row['ratios']['ort'] == pytest.approx(
            row['median_s']['ort_matrices'] / row['median_s']['ort_means'])
    assert [r['picked'] for r in rows] == ['matrices', 'means']
    assert '| 3 | 12 | 13 |' in capsys.readouterr().out


def test_bad_shapes_are_refused(capsys):
    with pytest.raises(SystemExit):
        bench_boxsum_layouts.main(['--shapes', '3:12'])
    assert '--shapes takes C:H:K triples' in capsys.readouterr().err
