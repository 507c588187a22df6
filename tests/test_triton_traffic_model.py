"""benchmarks/traffic_model.py: the bytes / multiply-adds model behind the
table in docs/performance.md runs, and its counts follow from the
implementations' definitions."""
import json
import os.path as osp
import sys

from pelk_mm.ops import sharing_grid
from helpers import ROOT

sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
import traffic_model  # noqa: E402


def test_script_prints_the_table_and_json(capsys):
    traffic_model.main([])
    table = capsys.readouterr().out
    assert len(table.strip().splitlines()) == 2 + 4 * len(traffic_model.IMPLS)
    assert open(osp.join(ROOT, 'docs', 'performance.md')).read().count(
        table.splitlines()[0]) == 1
    traffic_model.main(['--json'])
    rows = json.loads(capsys.readouterr().out)['rows']
    assert {row['stage'] for row in rows} == {1, 2, 3, 4}


def test_counts():
    rows = {(row['stage'], row['impl']): row for row in traffic_model.model()}
    for stage, _, size, kernel_size in traffic_model.STAGES:
        seven = rows[stage, 'dw7x7']
        assert seven['fwd|fp32|bytes'] == 8 and seven['fwd|bf16|bytes'] == 4
        assert seven['fwd+bwd|fmas'] == 3 * 49
        assert rows[stage, 'dense']['fwd+bwd|fmas'] == 3 * kernel_size**2
        triton = rows[stage, 'triton']
        assert triton['fwd|fp32|bytes'] == 8  # read x, write y
        forward, weight = traffic_model.triton_ops(
            size, sharing_grid(kernel_size, 5))
        assert triton['fwd|fmas'] == forward
        assert triton['fwd+bwd|fmas'] == 2 * forward + weight + 2
        for impl in traffic_model.IMPLS:
            row = rows[stage, impl]
            for mode in ('fwd', 'fwd+bwd'):
                for precision in ('fp32', 'bf16'):
                    h100 = row[f'{mode}|{precision}|H100 SXM|ms']
                    h200 = row[f'{mode}|{precision}|H200 SXM|ms']
                    assert 0 < h200 <= h100  # more bandwidth, same rates
