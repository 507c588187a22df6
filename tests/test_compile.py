"""torch.compile: no graph break inside the operator, compiled gradients
equal eager ones, and mmengine's Runner trains with ``compile=True``.

The inductor tests compile a tiny real PeLK (positional embeddings, partial
convolution) and are marked ``slow``: each took 2-5 minutes on 2 shared
cores (2026-12-01, torch 2.14.1 and 2.1.2).

Where Dynamo disables the optimizer step hooks of the whole process once it
has run (torch 2.1: :func:`pelk_mm.sparsity.hook.step_hooks_run`), which
later tests in the same process need (the sparsity hook), this module runs
in a fresh interpreter instead (``test_module_in_a_fresh_interpreter``)."""
import os
import subprocess
import sys

import pytest
import torch

from pelk_mm import PeripheralConv2d
from pelk_mm.ops import impl_tuning
from helpers import ROOT

CHILD_ENV = 'PELK_MM_COMPILE_TESTS_IN_CHILD'


def dynamo_disables_optimizer_hooks() -> bool:
    """Run Dynamo once in a fresh interpreter, then probe the hooks."""
    code = ('import torch\n'
            'from pelk_mm.sparsity.hook import step_hooks_run\n'
            'torch._dynamo.explain(lambda x: x + 1)(torch.ones(1))\n'
            'p = torch.zeros(1, requires_grad=True)\n'
            'print(step_hooks_run(torch.optim.SGD([p], lr=0.1)))\n')
    proc = subprocess.run([sys.executable, '-c', code],
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          cwd=ROOT,
                          timeout=600,
                          check=True)
    return proc.stdout.split()[-1] == 'False'


ISOLATE = (
    os.environ.get(CHILD_ENV) != '1' and dynamo_disables_optimizer_hooks())


@pytest.fixture(autouse=True)
def _in_a_fresh_interpreter_if_needed(request):
    if ISOLATE and request.node.name != 'test_module_in_a_fresh_interpreter':
        pytest.skip(f'torch {torch.__version__}: Dynamo disables optimizer '
                    'step hooks process-wide, so this module runs in a '
                    'fresh interpreter (test_module_in_a_fresh_interpreter)')


@pytest.mark.skipif(
    not ISOLATE,
    reason=f'torch {torch.__version__}: Dynamo keeps optimizer step hooks, '
    'so the tests run in this process')
def test_module_in_a_fresh_interpreter(request):
    markexpr = request.config.getoption('markexpr')
    proc = subprocess.run(
        [
            sys.executable, '-m', 'pytest', __file__, '-q', '-p',
            'no:cacheprovider'
        ] + (['-m', markexpr] if markexpr else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, **{CHILD_ENV: '1'}),
        timeout=3000)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert ' passed' in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


IMPLS = ['dense', 'fft', 'blocksum', 'auto']
ARCH = dict(
    depths=[1, 1], channels=[16, 24], kernel_sizes=[13, 9], center_sizes=3)


def graph_breaks(fn, *args):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return explanation.graph_break_count, [
        str(reason.reason)[:200] for reason in explanation.break_reasons
    ]


def test_the_constant_marker_is_the_public_decorators():
    """impl_tuning marks measured_choice by hand (no torch._dynamo import
    at import time); the public decorator must still set that attribute."""

    def probe():
        return 0

    torch.compiler.assume_constant_result(probe)
    assert probe._dynamo_marked_constant is True
    assert impl_tuning.measured_choice._dynamo_marked_constant is True


#: Dynamo before torch 2.4 (measured: 2.1.2) cannot trace the fast paths'
#: ``autograd.Function`` (a non-tensor argument, the grid): it breaks the
#: graph around it (2 breaks per call) and runs it eagerly.
OLD_DYNAMO = tuple(map(int, torch.__version__.split('.')[:2])) < (2, 4)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('pos_embed_mode', ['literal', 'in_image'])
def test_no_graph_break_in_the_op(impl, pos_embed_mode):
    torch.manual_seed(0)
    conv = PeripheralConv2d(
        8, 31, bias=True, impl=impl, pos_embed_mode=pos_embed_mode)
    x = torch.randn(2, 8, 24, 24, requires_grad=True)
    pos_embed = torch.randn(8, 31, 31)
    count, reasons = graph_breaks(conv, x, pos_embed)
    if OLD_DYNAMO and impl != 'dense':
        assert all('autograd.Function' in reason for reason in reasons)
    else:
        assert (count, reasons) == (0, [])


def test_no_graph_break_when_auto_measures():
    """In timing mode the choice is made while Dynamo traces, once, and
    the compiled op runs the measured implementation."""
    previous = impl_tuning.set_tuning_mode('measure')
    try:
        with impl_tuning.using_tuner(
                impl_tuning.ImplTuner(warmup=0, repeats=1)) as tuner:
            torch.manual_seed(0)
            conv = PeripheralConv2d(8, 31)
            x = torch.randn(2, 8, 24, 24, requires_grad=True)
            count, reasons = graph_breaks(conv, x)
            assert count == 0 or OLD_DYNAMO, reasons
            assert tuner.measured == 1
            torch._dynamo.reset()
            compiled = torch.compile(conv, backend='eager')
            out = compiled(x)
            out.sum().backward()
            compiled(x)
            assert tuner.measured == 1  # the choice was kept
    finally:
        impl_tuning.set_tuning_mode(previous)
    dense = PeripheralConv2d(8, 31, impl='dense')
    dense.load_state_dict(conv.state_dict())
    torch.testing.assert_close(out, dense(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('impl', ['fft', 'blocksum'])
def test_aot_autograd_gradients_equal_eager(impl):
    """The hand-written backwards traced by AOTAutograd."""
    torch.manual_seed(0)
    conv = PeripheralConv2d(4, 13, bias=True, impl=impl)
    x = torch.randn(2, 4, 12, 10, requires_grad=True)
    pos_embed = torch.randn(4, 13, 13, requires_grad=True)
    grad_out = torch.randn(2, 4, 12, 10)
    torch._dynamo.reset()
    results = []
    for fn in (conv, torch.compile(conv, backend='aot_eager')):
        out = fn(x, pos_embed)
        results.append((out, ) +
                       torch.autograd.grad(out, (x, pos_embed, conv.weight,
                                                 conv.bias), grad_out))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def small_pelk():
    from pelk_mm import PeLK
    torch.manual_seed(0)
    model = PeLK(arch=ARCH, layer_scale_init_value=1.0)
    model.init_weights()
    return model


def projection_loss(model, x, projection):
    """A loss whose gradients are not round-off: a fixed random projection
    of the final (LayerNorm) features, not ``mean(o ** 2)``, which the
    normalisation makes constant."""
    return (model(x)[-1] * projection).sum()


@pytest.mark.slow
def test_compiled_pelk_gradients_equal_eager():
    model = small_pelk()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    projection = torch.randn(2, ARCH['channels'][-1], generator=gen)
    grads = []
    torch._dynamo.reset()
    for fn in (model, torch.compile(model)):
        model.zero_grad()
        projection_loss(fn, x, projection).backward()
        grads.append({
            name: p.grad.clone()
            for name, p in model.named_parameters()
        })
    eager, compiled = grads
    assert any('pos_embed' in name for name in eager)
    for name, grad in eager.items():
        assert grad.norm() > 0, name
        error = (compiled[name] - grad).norm() / grad.norm()
        assert error < 1e-4, (name, float(error))


@pytest.mark.slow
def test_runner_with_compile_trains_like_eager(tmp_path):
    """mmengine's Runner with ``compile=True`` in its config (it compiles
    the model's ``train_step``): the same losses as an eager Runner, to
    round-off."""
    import torch.nn.functional as F
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import Dataset

    class Images(Dataset):

        def __init__(self):
            gen = torch.Generator().manual_seed(0)
            self.x = torch.randn(8, 3, 32, 32, generator=gen)
            self.y = torch.randint(0, 4, (8, ), generator=gen)

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return dict(inputs=self.x[i], labels=self.y[i])

    class Classifier(BaseModel):

        def __init__(self):
            super().__init__()
            self.backbone = small_pelk()
            self.head = torch.nn.Linear(ARCH['channels'][-1], 4)

        def forward(self, inputs, labels, mode='tensor'):
            logits = self.head(self.backbone(inputs)[-1])
            return dict(loss=F.cross_entropy(logits, labels))

    losses = {}
    for compile in (False, True):
        torch._dynamo.reset()
        runner = Runner(
            model=Classifier(),
            work_dir=str(tmp_path / str(compile)),
            train_dataloader=dict(
                dataset=Images(),
                sampler=dict(type='DefaultSampler', shuffle=False),
                collate_fn=dict(type='default_collate'),
                batch_size=4,
                num_workers=0),
            train_cfg=dict(by_epoch=False, max_iters=3),
            optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
            default_hooks=dict(
                logger=dict(type='LoggerHook', interval=1),
                checkpoint=dict(type='CheckpointHook', interval=1000)),
            randomness=dict(seed=0),
            cfg=dict(compile=compile))
        runner.train()
        losses[compile] = runner.message_hub.get_scalar('train/loss').data[0]
        if compile:
            frames = torch._dynamo.utils.counters['frames']['ok']
            assert frames > 0  # train_step really went through Dynamo
    assert len(losses[True]) == 3
    torch.testing.assert_close(
        losses[True], losses[False], rtol=1e-4, atol=1e-6)
