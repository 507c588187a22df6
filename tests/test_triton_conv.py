"""The fused Triton kernels (``impl='triton'``) on the CPU, through Triton's
interpreter: values and both gradients against the dense convolution on the
grid's edge cases, every input dtype, layouts, determinism, torch.compile,
and where ``impl='auto'`` may pick them.

The kernels call only Triton builtins, so the interpreter runs them in this
process whatever ``TRITON_INTERPRET`` was when Triton was imported (Triton
reads it once, when ``triton.jit`` decorates a function). Small tiles
(``BLOCK_W = 16``, ``ROWS = 4``) make tiny maps span several programs."""
import importlib.util

import pytest
import torch

from pelk_mm import PERIPHERAL_CONV_IMPLS, sharing_grid
from pelk_mm.ops import impl_tuning, triton_conv
from pelk_mm.ops.peripheral_conv import triton_listed
from pelk_mm.ops.triton_conv import triton_installed, triton_peripheral_conv
from helpers import conv_and_grads, dense_reference


def _interpreter_reason():
    if not triton_installed():
        return 'Triton >= 3.0 is not installed (the kernels need its ' \
               'interpreter and tl.dot(input_precision=...))'
    if importlib.util.find_spec('triton.runtime.interpreter') is None:
        return 'this Triton has no interpreter'
    return None


pytestmark = pytest.mark.skipif(
    _interpreter_reason() is not None, reason=str(_interpreter_reason()))


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    monkeypatch.setattr(triton_conv, 'BLOCK_W', 16)
    monkeypatch.setattr(triton_conv, 'ROWS', 4)


def random_case(shape, grid, seed, dtype=torch.float64, mean=0.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=dtype, generator=gen) + mean
    weight = torch.randn(
        shape[1], 1, len(grid), len(grid), dtype=dtype,
        generator=gen) / sum(grid)
    grad_out = torch.randn(shape, dtype=dtype, generator=gen)
    return x, weight, grad_out


CASES = [
    # (N, C, H, W, grid)
    (1, 2, 6, 7, (1, 1, 1, 1, 1)),  # centre only: every tap its own band
    (2, 1, 5, 9, (7, )),  # k' = 1: one shared 7x7 block
    (1, 2, 5, 3, sharing_grid(51, 5)),  # map smaller than K
    (1, 1, 7, 35, sharing_grid(13, 5)),  # odd sizes, 3 x 2 programs
    (1, 1, 3, 5, sharing_grid(101, 7)),  # K = 101 on a tiny map
    (1, 2, 6, 19, (1, 4, 2, 1, 5)),  # asymmetric grid: the flip matters
]


@pytest.mark.parametrize('n,c,height,width,grid', CASES)
def test_float64_equals_dense_with_gradients(n, c, height, width, grid):
    x, weight, grad_out = random_case((n, c, height, width), grid,
                                      height * 100 + width)
    expected = conv_and_grads(dense_reference, x, weight, grid, grad_out)
    result = conv_and_grads(triton_peripheral_conv, x, weight, grid, grad_out)
    for name, got, want in zip(('out', 'grad_x', 'grad_w'), result, expected):
        assert got.dtype == torch.float64, name
        torch.testing.assert_close(
            got, want, rtol=1e-10, atol=1e-10, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('kernel_size,shape,mean', [(51, (1, 1, 6, 19), 5.0),
                                                    (13, (1, 1, 8, 20), 0.0)])
def test_float32_within_dense_error(kernel_size, shape, mean):
    """float32 accumulation: output and both gradients within the dense
    float32 convolution's error against a float64 reference (the weight
    gradient's mean split keeps a non-zero mean from costing digits)."""
    grid = sharing_grid(kernel_size, 5)
    x64, w64, grad64 = random_case(shape, grid, kernel_size, mean=mean)
    reference = conv_and_grads(dense_reference, x64, w64, grid, grad64)
    for fn in (dense_reference, triton_peripheral_conv):
        result = conv_and_grads(fn, x64.float(), w64.float(), grid,
                                grad64.float())
        assert all(r.dtype == torch.float32 for r in result)
        errors = [(r.double() - ref).abs().max().item()
                  for r, ref in zip(result, reference)]
        if fn is dense_reference:
            bounds = errors
    for name, err, bound in zip(('out', 'grad_x', 'grad_w'), errors, bounds):
        assert err <= bound, (name, err, bound)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    """16-bit inputs are read as they are and summed in float32: the result
    is the float32 computation on the same values, rounded once."""
    grid = sharing_grid(13, 5)
    x, weight, grad_out = random_case((1, 1, 4, 18), grid, 3, torch.float32)
    x, grad_out = x.to(dtype), grad_out.to(dtype)
    out, grad_x, grad_w = conv_and_grads(triton_peripheral_conv, x, weight,
                                         grid, grad_out)
    assert (out.dtype, grad_x.dtype, grad_w.dtype) == (dtype, dtype,
                                                       torch.float32)
    want = conv_and_grads(dense_reference, x.double(), weight.double(), grid,
                          grad_out.double())
    torch.testing.assert_close(out, want[0].to(dtype), rtol=0, atol=0.02)
    torch.testing.assert_close(grad_x, want[1].to(dtype), rtol=0, atol=0.02)
    torch.testing.assert_close(grad_w, want[2].float(), rtol=1e-5, atol=1e-5)


def test_autocast_returns_autocast_dtype():
    grid = sharing_grid(13, 5)
    x, weight, _ = random_case((1, 2, 4, 6), grid, 4, torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = triton_peripheral_conv(x, weight, grid)
    assert out.dtype == torch.bfloat16
    full = triton_peripheral_conv(x, weight, grid)
    # one rounding of the float32 result (the interpreter truncates bf16)
    assert ((out.float() - full).abs() <= full.abs() * 2**-7).all()


def test_channels_last_and_determinism():
    grid = (1, 4, 2, 1, 5)
    x, weight, grad_out = random_case((1, 2, 3, 17), grid, 5, torch.float32)
    first = conv_and_grads(triton_peripheral_conv, x, weight, grid, grad_out)
    again = conv_and_grads(
        triton_peripheral_conv,
        x.contiguous(memory_format=torch.channels_last), weight, grid,
        grad_out.contiguous(memory_format=torch.channels_last))
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_compiles_without_graph_break():
    """The launches are custom ops: Dynamo traces the autograd function
    whole (fullgraph) and AOT autograd's gradients equal eager ones."""
    if not hasattr(torch.library, 'custom_op'):
        pytest.skip(f'torch {torch.__version__} has no custom_op')
    grid = sharing_grid(13, 5)
    x, weight, grad_out = random_case((1, 1, 3, 9), grid, 6, torch.float32)
    compiled = torch.compile(
        triton_peripheral_conv, backend='aot_eager', fullgraph=True)
    eager = conv_and_grads(triton_peripheral_conv, x, weight, grid, grad_out)
    result = conv_and_grads(lambda a, b, g: compiled(a, b, g), x, weight, grid,
                            grad_out)
    for a, b in zip(result, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_candidates():
    """``auto`` times the kernels on CUDA only, where Triton imports; the
    table lists them where CUDA is available."""
    assert 'triton' not in impl_tuning.candidates(torch.device('cpu'))
    assert 'triton' in impl_tuning.candidates(torch.device('cuda'))
    assert ('triton' in PERIPHERAL_CONV_IMPLS) == triton_listed()
    assert triton_listed() == torch.cuda.is_available()


def test_other_devices_rejected():
    grid = (1, 1, 1)
    x = torch.zeros(1, 1, 2, 2, device='meta')
    with pytest.raises(ValueError, match="impl='triton'"):
        triton_peripheral_conv(x, torch.zeros(1, 1, 3, 3), grid)


def test_auto_leaves_out_a_kernel_that_fails(monkeypatch, caplog):
    """A Triton kernel that raises while ``auto`` measures is timed as
    infinite and named in a warning; a torch implementation that raises
    still raises."""

    def broken(x, weight, grid):
        raise RuntimeError('no kernel image')

    sig = impl_tuning.Signature(
        device=torch.device('cpu'),
        shape=(1, 2, 4, 4),
        grid=(1, 1, 1),
        dtype=torch.float32,
        weight_dtype=torch.float32,
        autocast_dtype=None,
        backward=False,
        channels_last=False)
    tuner = impl_tuning.ImplTuner(warmup=0, repeats=1)
    monkeypatch.setattr(
        impl_tuning, 'candidates', lambda device: {
            **impl_tuning.CANDIDATES, 'triton': broken
        })
    with caplog.at_level('WARNING', logger='pelk_mm.ops.impl_tuning'):
        times = tuner.measure(sig)
    assert times['triton'] == float('inf')
    assert all(times[name] < float('inf') for name in impl_tuning.CANDIDATES)
    assert "'triton' failed" in caplog.text
    assert 'no kernel image' in caplog.text
    monkeypatch.setattr(
        impl_tuning, 'candidates', lambda device: {
            **impl_tuning.CANDIDATES, 'dense': broken
        })
    with pytest.raises(RuntimeError, match='no kernel image'):
        tuner.measure(sig)
