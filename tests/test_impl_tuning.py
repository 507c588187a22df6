"""``impl='auto'`` measuring once per signature (pelk_mm.ops.impl_tuning).

The CPU has calibrated coefficients, so these tests force the timing mode
(``'measure'``) and inject a fake clock that each candidate advances by a
chosen cost: which implementation is fastest is then known exactly."""
import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch

from pelk_mm import PERIPHERAL_CONV_IMPLS, PeripheralConv2d, sharing_grid
from pelk_mm.ops import impl_tuning
from pelk_mm.ops.impl_selection import select_impl
from pelk_mm.ops.impl_tuning import (ImplTuner, choose_impl, set_tuning_mode,
                                     signature, using_tuner)
from helpers import ROOT

GRID = sharing_grid(13, 5)


class FakeClock:
    """Seconds that only the wrapped candidates advance."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def measuring(monkeypatch):
    """Mode 'measure' with a fake-clocked tuner; yields ``(tuner, costs,
    calls)``: set ``costs[name]`` (seconds per call), read ``calls``."""
    clock, calls = FakeClock(), Counter()
    costs = {'dense': 3.0, 'fft': 1.0, 'blocksum': 2.0}
    for name, fn in list(impl_tuning.CANDIDATES.items()):

        def timed(x, weight, grid, fn=fn, name=name):
            calls[name] += 1
            clock.now += costs[name]
            return fn(x, weight, grid)

        monkeypatch.setitem(impl_tuning.CANDIDATES, name, timed)
    previous = set_tuning_mode('measure')
    try:
        with using_tuner(ImplTuner(clock=clock, warmup=1, repeats=2)) as tuner:
            yield tuner, costs, calls
    finally:
        set_tuning_mode(previous)


def inputs(shape=(2, 3, 10, 12), grid=GRID, dtype=torch.float32, grad=True):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(grad)
    weight = torch.randn(
        shape[1], 1, len(grid), len(grid), generator=gen,
        dtype=dtype).requires_grad_(grad)
    return x, weight


@pytest.mark.parametrize('fastest', ['dense', 'fft', 'blocksum'])
def test_fastest_is_chosen(measuring, fastest):
    tuner, costs, _ = measuring
    costs.update({name: 5.0 for name in costs}, **{fastest: 0.5})
    x, weight = inputs()
    assert choose_impl(x, weight, GRID) == fastest
    entry = tuner.choices[signature(x, weight, GRID).key()]
    assert entry['ms'] == {name: cost * 1e3 for name, cost in costs.items()}


@pytest.mark.parametrize('fastest', ['dense', 'fft', 'blocksum'])
def test_results_equal_dense(measuring, fastest):
    _, costs, _ = measuring
    costs.update({name: 5.0 for name in costs}, **{fastest: 0.5})
    x, weight = inputs()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    outs = {}
    for impl in ('auto', 'dense'):
        out = PERIPHERAL_CONV_IMPLS[impl](x, weight, GRID)
        outs[impl] = (out, ) + torch.autograd.grad(out, (x, weight), grad_out)
    assert choose_impl(x, weight, GRID) == fastest
    for got, want in zip(outs['auto'], outs['dense']):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_signature_timed_once(measuring):
    tuner, _, calls = measuring
    x, weight = inputs()
    conv = PeripheralConv2d(3, 13)
    for _ in range(3):
        conv(x).sum().backward()
    assert tuner.measured == 1
    assert calls == {'dense': 3, 'fft': 3, 'blocksum': 3}  # 1 + 2 each
    variants = [
        inputs(shape=(2, 3, 10, 13)),  # another map size
        inputs(shape=(1, 3, 10, 12)),  # another batch
        inputs(dtype=torch.float64),
        (x.contiguous(memory_format=torch.channels_last), weight),
    ]
    for other_x, other_weight in variants:
        choose_impl(other_x, other_weight, GRID)
    with torch.no_grad():  # no backward will follow
        choose_impl(x, weight, GRID)
    choose_impl(*inputs(grad=False), GRID)  # the same: kept
    with torch.autocast('cpu', dtype=torch.bfloat16):
        choose_impl(x, weight, GRID)
    choose_impl(x, weight, sharing_grid(13, 3))  # another grid
    assert tuner.measured == 1 + len(variants) + 3
    measured = dict(calls)
    for other_x, other_weight in variants:  # every one is now kept
        choose_impl(other_x, other_weight, GRID)
    conv(x)
    assert tuner.measured == 1 + len(variants) + 3 and calls == measured


def test_saved_file_reused_without_timing(measuring, tmp_path):
    tuner, costs, calls = measuring
    costs['blocksum'] = 0.1
    x, weight = inputs()
    assert choose_impl(x, weight, GRID) == 'blocksum'
    path = tmp_path / 'choices.json'
    impl_tuning.save_choices(str(path))
    costs['dense'] = 0.01  # would now win, if anything were timed
    timed = dict(calls)
    with using_tuner(ImplTuner(clock=None)) as fresh:  # a clock would fail
        assert impl_tuning.load_choices(str(path)) == 1
        assert choose_impl(x, weight, GRID) == 'blocksum'
        assert fresh.measured == 0 and calls == timed
    with using_tuner(ImplTuner(clock=None, cache_file=str(path))) as fresh:
        assert choose_impl(x, weight, GRID) == 'blocksum'  # read on demand
        assert fresh.measured == 0 and calls == timed


def test_file_of_another_torch_version_is_ignored(measuring, tmp_path):
    tuner, _, _ = measuring
    path = tmp_path / 'old.json'
    path.write_text(
        json.dumps(
            dict(
                version=1,
                torch='1.0',
                choices={'cpu|x': dict(impl='fft', ms={})})))
    assert tuner.load(str(path)) == 0 and tuner.choices == {}


def test_file_with_an_unknown_impl_is_rejected(measuring, tmp_path):
    tuner, _, _ = measuring
    path = tmp_path / 'bad.json'
    path.write_text(
        json.dumps(
            dict(
                version=1,
                torch=torch.__version__,
                choices={'k': dict(impl='cudnn')})))
    with pytest.raises(ValueError, match='dense.*got'):
        tuner.load(str(path))


def test_new_choice_logged_once_with_times(measuring, caplog):
    x, weight = inputs()
    with caplog.at_level(logging.INFO, logger='pelk_mm.ops.impl_tuning'):
        choose_impl(x, weight, GRID)
        choose_impl(x, weight, GRID)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert "picked 'fft'" in messages[0]
    assert 'dense 3e+03, fft 1e+03, blocksum 2e+03' in messages[0]


def test_measuring_leaves_the_global_rng_alone(measuring):
    x, weight = inputs()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    choose_impl(x, weight, GRID)
    assert torch.equal(torch.get_rng_state(), state)


def test_deterministic_switches_bypass_timing(measuring):
    tuner, costs, calls = measuring
    x, weight = inputs()
    model_pick = select_impl(x, weight, GRID)
    measured_pick = next(name for name in costs if name != model_pick)
    costs[measured_pick] = 0.0
    set_tuning_mode('model')
    assert choose_impl(x, weight, GRID) == model_pick
    set_tuning_mode('measure')
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert choose_impl(x, weight, GRID) == model_pick
    finally:
        torch.use_deterministic_algorithms(previous)
    assert tuner.measured == 0 and not calls
    assert choose_impl(x, weight, GRID) == measured_pick  # measured now


def test_calibrated_device_keeps_the_cost_model(measuring):
    tuner, _, calls = measuring
    set_tuning_mode('auto')
    x, weight = inputs()
    assert choose_impl(x, weight, GRID) == select_impl(x, weight, GRID)
    assert tuner.measured == 0 and not calls


def test_bad_mode_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"\('auto', 'measure', 'model'\)"):
        set_tuning_mode('fastest')


def test_environment_variables_share_choices_across_runs(tmp_path):
    """A first process (PELK_MM_IMPL_TUNING=measure) writes its choice to
    PELK_MM_IMPL_CACHE; a second reads it and times nothing."""
    path = tmp_path / 'choices.json'
    script = (
        'import torch\n'
        'from pelk_mm import PeripheralConv2d\n'
        'from pelk_mm.ops import impl_tuning\n'
        'PeripheralConv2d(3, 13)(torch.randn(2, 3, 10, 12)).sum().backward()'
        '\n'
        'print(impl_tuning._tuner.measured)\n')
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        PELK_MM_IMPL_CACHE=str(path),
        PELK_MM_IMPL_TUNING='measure')

    def run():
        return subprocess.run([sys.executable, '-c', script],
                              env=env,
                              check=True,
                              capture_output=True,
                              text=True,
                              timeout=300).stdout.split()[-1]

    assert run() == '1'
    (key, entry), = json.loads(path.read_text())['choices'].items()
    assert key.startswith('cpu|2x3x10x12|grid=2,2,1,1,1,1,1,2,2|float32|')
    assert set(entry['ms']) == {'dense', 'fft', 'blocksum'}
    assert run() == '0'
