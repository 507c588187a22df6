"""Exact fast peripheral convolutions ('fft', 'blocksum', 'auto') against the
dense reference: values, gradients, precision, autocast, determinism."""
import pytest
import torch

from pelk_mm import PERIPHERAL_CONV_IMPLS, PeripheralConv2d, sharing_grid
from pelk_mm.ops.fft_conv import fft_size
from pelk_mm.ops.impl_selection import (COST_COEFFICIENTS, predicted_seconds,
                                        select_impl)
from pelk_mm.ops.precision import (FP64_FULL_RATE_CAPABILITIES,
                                   accumulation_dtype, fast_float64,
                                   force_accumulation_dtype)
from helpers import conv_and_grads, dense_reference

FAST_IMPLS = ['fft', 'blocksum', 'auto']
ABLATION_GRID = (1, 1, 2, 4, 8, 1, 8, 4, 2, 1, 1)  # half [1,1,2,4,8,1], K=33

CASES = [
    # (N, C, H, W, grid)
    (2, 3, 9, 14, sharing_grid(13, 5)),  # map smaller than K in one dim
    (1, 2, 130, 67, sharing_grid(13, 5)),  # map larger than K
    (2, 2, 33, 17, sharing_grid(31, 5)),
    (1, 3, 40, 41, sharing_grid(51, 5)),  # odd sizes below K
    (2, 2, 60, 71, sharing_grid(51, 1)),
    (2, 2, 23, 19, sharing_grid(101, 7)),
    (2, 2, 5, 3, sharing_grid(101, 7)),  # map much smaller than K
    (1, 2, 1, 1, sharing_grid(51, 3)),
    (2, 3, 20, 35, ABLATION_GRID),  # paper's ablation grid, mirrored
    (3, 2, 12, 7, (1, 4, 2, 1, 5)),  # asymmetric explicit grid
]


@pytest.mark.parametrize('impl', FAST_IMPLS)
@pytest.mark.parametrize('n,c,height,width,grid', CASES)
def test_equals_dense_with_gradients(impl, n, c, height, width, grid):
    gen = torch.Generator().manual_seed(height * 1000 + width)
    x = torch.randn(n, c, height, width, dtype=torch.float64, generator=gen)
    weight = torch.randn(
        c, 1, len(grid), len(grid), dtype=torch.float64, generator=gen)
    grad_out = torch.randn(
        n, c, height, width, dtype=torch.float64, generator=gen)
    expected = conv_and_grads(dense_reference, x, weight, grid, grad_out)
    result = conv_and_grads(PERIPHERAL_CONV_IMPLS[impl], x, weight, grid,
                            grad_out)
    for name, got, want in zip(('out', 'grad_x', 'grad_w'), result, expected):
        assert got.dtype == torch.float64, name
        torch.testing.assert_close(
            got, want, rtol=1e-9, atol=1e-9, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('impl', FAST_IMPLS)
def test_float32_matches_dense(impl):
    torch.manual_seed(0)
    grid = sharing_grid(51, 5)
    x = torch.randn(2, 4, 37, 40)
    weight = torch.randn(4, 1, len(grid), len(grid)) / 51
    grad_out = torch.randn_like(x)
    expected = conv_and_grads(dense_reference, x, weight, grid, grad_out)
    result = conv_and_grads(PERIPHERAL_CONV_IMPLS[impl], x, weight, grid,
                            grad_out)
    for got, want in zip(result, expected):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('impl', ['fft', 'blocksum'])
@pytest.mark.parametrize('grid,height,width', [((2, 1, 2), 4, 6),
                                               ((3, 1, 1, 1, 3), 5, 3),
                                               ((1, 2, 3, 1, 2), 4, 5)])
def test_gradcheck(impl, grid, height, width):
    torch.manual_seed(0)
    x = (torch.randn(1, 2, height, width, dtype=torch.float64) +
         3).requires_grad_()
    weight = torch.randn(
        2, 1, len(grid), len(grid), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: PERIPHERAL_CONV_IMPLS[impl](a, b, grid), (x, weight))


def max_errors(fn, x64, w64, grid, grad64, reference):
    result = conv_and_grads(fn, x64.float(), w64.float(), grid, grad64.float())
    return [(r.double() - ref).abs().max().item()
            for r, ref in zip(result, reference)]


@pytest.mark.parametrize('seed', [0, 1])
def test_precision_mean_30_k101_within_dense_error(seed):
    """Summed-area tables and FFTs of inputs with a large mean lose digits;
    the mean split / float64 accumulation must keep every fast method within
    the dense float32 convolution's error against a float64 reference."""
    gen = torch.Generator().manual_seed(seed)
    grid = sharing_grid(101, 7)
    x64 = 30 + torch.randn(2, 3, 40, 37, dtype=torch.float64, generator=gen)
    w64 = torch.randn(
        3, 1, len(grid), len(grid), dtype=torch.float64, generator=gen) / 101
    grad64 = torch.randn(2, 3, 40, 37, dtype=torch.float64, generator=gen)
    reference = conv_and_grads(dense_reference, x64, w64, grid, grad64)
    dense_err = max_errors(dense_reference, x64, w64, grid, grad64, reference)
    for impl in ('fft', 'blocksum'):
        errs = max_errors(PERIPHERAL_CONV_IMPLS[impl], x64, w64, grid, grad64,
                          reference)
        for name, err, bound in zip(('out', 'grad_x', 'grad_w'), errs,
                                    dense_err):
            assert err <= bound, (impl, name, err, bound)


def test_precision_large_dynamic_range():
    """Heavy-tailed input (values spanning ~10 orders of magnitude): the
    outputs and input gradients stay within the dense error; the FFT's
    weight gradient is a global sum and gets up to 2x the dense error
    (measured 1.2-1.6x), blocksum's float64 tables stay within it."""
    gen = torch.Generator().manual_seed(0)
    grid = sharing_grid(101, 7)
    shape = (2, 3, 40, 37)
    x64 = torch.randn(
        shape, dtype=torch.float64, generator=gen) * torch.exp(
            3 * torch.randn(shape, dtype=torch.float64, generator=gen))
    w64 = torch.randn(
        3, 1, len(grid), len(grid), dtype=torch.float64, generator=gen) / 101
    grad64 = torch.randn(shape, dtype=torch.float64, generator=gen)
    reference = conv_and_grads(dense_reference, x64, w64, grid, grad64)
    dense_err = max_errors(dense_reference, x64, w64, grid, grad64, reference)
    for impl, w_factor in (('fft', 2.0), ('blocksum', 1.0)):
        errs = max_errors(PERIPHERAL_CONV_IMPLS[impl], x64, w64, grid, grad64,
                          reference)
        for name, err, bound in zip(('out', 'grad_x', 'grad_w'), errs,
                                    dense_err):
            factor = w_factor if name == 'grad_w' else 1.0
            assert err <= factor * bound, (impl, name, err, bound)


@pytest.mark.parametrize('impl', FAST_IMPLS)
def test_autocast_bfloat16(impl):
    torch.manual_seed(0)
    grid = sharing_grid(31, 5)
    x = torch.randn(2, 3, 20, 24, requires_grad=True)
    weight = torch.randn(3, 1, len(grid), len(grid), requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = PERIPHERAL_CONV_IMPLS[impl](x, weight, grid)
        again = PERIPHERAL_CONV_IMPLS[impl](x, weight, grid)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, again)
    chosen = select_impl(x, weight, grid) if impl == 'auto' else impl
    if chosen != 'dense':  # fast paths compute in float32 and round once
        full = PERIPHERAL_CONV_IMPLS[impl](x, weight, grid)
        assert torch.equal(out, full.to(torch.bfloat16))
    out.float().square().sum().backward()
    assert x.grad.dtype == torch.float32
    assert weight.grad.dtype == torch.float32


@pytest.mark.parametrize('impl', ['fft', 'blocksum'])
def test_half_precision_input_outside_autocast(impl):
    grid = sharing_grid(13, 5)
    x = torch.randn(1, 2, 9, 9)
    weight = torch.randn(2, 1, len(grid), len(grid))
    out = PERIPHERAL_CONV_IMPLS[impl](x.bfloat16(), weight.bfloat16(), grid)
    assert out.dtype == torch.bfloat16
    expected = PERIPHERAL_CONV_IMPLS[impl](x.bfloat16().float(),
                                           weight.bfloat16().float(), grid)
    assert torch.equal(out, expected.bfloat16())


@pytest.mark.parametrize('impl', FAST_IMPLS)
def test_module_with_pos_embed_and_bias(impl):
    torch.manual_seed(0)
    conv = PeripheralConv2d(4, 31, bias=True, impl=impl).double()
    pos_embed = torch.randn(4, 31, 31, dtype=torch.float64)
    x = torch.randn(2, 4, 17, 22, dtype=torch.float64)
    dense = PeripheralConv2d(4, 31, bias=True, impl='dense').double()
    dense.load_state_dict(conv.state_dict())
    torch.testing.assert_close(conv(x, pos_embed), dense(x, pos_embed))


def test_auto_is_deterministic_and_shape_driven():
    torch.manual_seed(0)
    grid = sharing_grid(51, 5)
    x = torch.randn(1, 8, 64, 64, requires_grad=True)
    weight = torch.randn(8, 1, len(grid), len(grid), requires_grad=True)
    choices = {select_impl(x, weight, grid) for _ in range(3)}
    assert len(choices) == 1
    first = PERIPHERAL_CONV_IMPLS['auto'](x, weight, grid)
    second = PERIPHERAL_CONV_IMPLS['auto'](x, weight, grid)
    assert torch.equal(first, second)
    chosen = PERIPHERAL_CONV_IMPLS[choices.pop()](x, weight, grid)
    assert torch.equal(first, chosen)


EXACT_IMPLS = ('dense', 'fft', 'blocksum')
# (N, C, H, W): single maps to PeLK-T's stage 4 batch, maps from 1x1 (smaller
# than every kernel) to 128x128, odd and non-square sizes.
COST_SHAPES = [(1, 1, 1, 1), (1, 1, 9, 14), (2, 3, 16, 16), (1, 48, 37, 41),
               (1, 48, 128, 128), (2, 374, 16, 16)]
COST_KERNELS = [3, 5, 7, 13, 15, 21, 31, 51, 101]


def cost_grid(kernel_size):
    return sharing_grid(kernel_size, min(kernel_size, 5))


@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('shape', COST_SHAPES)
def test_auto_picks_the_cheapest_exact_impl_from_the_shape(shape, grad):
    """Over every kernel size: an exact impl (each is checked against dense
    above), the one of least predicted time in the call's mode, a function
    of the shape alone (not of values, dtype or ``N`` and ``C`` apart from
    ``N C``)."""
    batch, channels = shape[:2]
    for kernel_size in COST_KERNELS:
        grid = cost_grid(kernel_size)
        x = torch.zeros(shape, requires_grad=grad)
        weight = torch.zeros(channels, 1, len(grid), len(grid))
        pick = select_impl(x, weight, grid)
        assert pick in EXACT_IMPLS and pick in PERIPHERAL_CONV_IMPLS
        costs = {
            impl: predicted_seconds(impl, shape, grid, 'cpu', grad)
            for impl in EXACT_IMPLS
        }
        assert costs[pick] == min(costs.values())
        values = torch.randn(shape, dtype=torch.float64, requires_grad=grad)
        assert select_impl(values, weight.double(), grid) == pick
        folded = torch.zeros(1, batch * channels, *shape[2:])
        assert select_impl(folded.requires_grad_(grad), weight, grid) == pick
        forward_only = {
            impl: predicted_seconds(impl, shape, grid, 'cpu', False)
            for impl in EXACT_IMPLS
        }
        with torch.no_grad():  # no graph, so no backward: forward-only costs
            pick = select_impl(x, weight, grid)
        assert forward_only[pick] == min(forward_only.values())


def test_cost_model_time_never_falls_as_the_work_grows():
    """Non-negative coefficients (a non-negative least-squares fit), so each
    impl's predicted time is non-decreasing in N, C, H, W and K."""
    for mode in COST_COEFFICIENTS['cpu'].values():
        for coefficients in mode.values():
            assert min(coefficients) >= 0
    for impl in EXACT_IMPLS:
        for backward in (False, True):
            for shape in COST_SHAPES:
                times = [
                    predicted_seconds(impl, shape, cost_grid(k), 'cpu',
                                      backward) for k in COST_KERNELS
                ]
                assert times == sorted(times), (impl, shape, backward)
                for dim in range(4):
                    bigger = list(shape)
                    bigger[dim] += 1
                    for k in COST_KERNELS:
                        grid = cost_grid(k)
                        assert predicted_seconds(
                            impl, bigger, grid, 'cpu',
                            backward) >= predicted_seconds(
                                impl, shape, grid, 'cpu', backward)


def test_fft_size_is_smallest_5_smooth():

    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(1, 400):
        size = fft_size(n)
        assert size >= n and smooth(size)
        assert not any(smooth(m) for m in range(n, size))


@pytest.mark.parametrize(
    'kernel_size,shape,mean,heavy',
    [
        (13, (2, 3, 64, 64), 0.0, False),  # small K, wide map: table growth
        (101, (2, 3, 40, 37), 30.0, False),  # large mean
        (101, (2, 3, 40, 37), 0.0, True),  # heavy tails
    ])
def test_float32_accumulation_within_2x_dense(kernel_size, shape, mean, heavy):
    """The float32 path (GPUs without fast FP64) keeps the output and both
    gradients within 2x the dense float32 error (float64 reference)."""
    gen = torch.Generator().manual_seed(kernel_size + shape[-1])
    grid = sharing_grid(kernel_size, 7 if kernel_size >= 101 else 5)
    x64 = torch.randn(shape, dtype=torch.float64, generator=gen)
    if heavy:
        x64 = x64 * torch.exp(
            3 * torch.randn(shape, dtype=torch.float64, generator=gen))
    x64 = x64 + mean
    w64 = torch.randn(
        shape[1], 1, len(grid), len(grid), dtype=torch.float64,
        generator=gen) / kernel_size
    grad64 = torch.randn(shape, dtype=torch.float64, generator=gen)
    reference = conv_and_grads(dense_reference, x64, w64, grid, grad64)
    dense_err = max_errors(dense_reference, x64, w64, grid, grad64, reference)
    for impl in ('fft', 'blocksum'):
        with force_accumulation_dtype(torch.float32):
            errs = max_errors(PERIPHERAL_CONV_IMPLS[impl], x64, w64, grid,
                              grad64, reference)
        for name, err, bound in zip(('out', 'grad_x', 'grad_w'), errs,
                                    dense_err):
            assert err <= 2 * bound, (impl, name, err, bound)


def test_forced_float32_path_really_runs_in_float32():
    """Forcing float32 changes the result (so the tests above exercise the
    float32 path) and float64 inputs ignore the override."""
    gen = torch.Generator().manual_seed(0)
    grid = sharing_grid(31, 5)
    x = torch.randn(1, 2, 24, 24, generator=gen)
    weight = torch.randn(2, 1, len(grid), len(grid), generator=gen)
    for impl in ('fft', 'blocksum'):
        fn = PERIPHERAL_CONV_IMPLS[impl]
        wide = conv_and_grads(fn, x, weight, grid, x)
        with force_accumulation_dtype(torch.float32):
            narrow = conv_and_grads(fn, x, weight, grid, x)
            x64 = x.double().requires_grad_()
            assert accumulation_dtype(x64) == torch.float64
        assert accumulation_dtype(x) == torch.float64  # CPU default
        changed = [not torch.equal(a, b) for a, b in zip(wide, narrow)]
        assert changed[2] if impl == 'fft' else all(changed), impl


def test_accumulation_dtype_policy(monkeypatch):
    assert FP64_FULL_RATE_CAPABILITIES == {(6, 0), (7, 0), (8, 0), (9, 0)}
    assert fast_float64(torch.device('cpu'))
    assert not fast_float64(torch.device('meta'))
    for capability, fast in (((9, 0), True), ((8, 0), True), ((8, 6), False),
                             ((8, 9), False), ((12, 0), False)):
        monkeypatch.setattr(
            torch.cuda,
            'get_device_capability',
            lambda device=None, c=capability: c)
        assert fast_float64(torch.device('cuda', 0)) == fast, capability
    with pytest.raises(ValueError, match='dtype'):
        with force_accumulation_dtype(torch.float16):
            pass
    with force_accumulation_dtype(torch.float32):
        with force_accumulation_dtype(torch.float64):
            assert accumulation_dtype(torch.zeros(1)) == torch.float64
        assert accumulation_dtype(torch.zeros(1)) == torch.float32
    assert accumulation_dtype(torch.zeros(1)) == torch.float64


def _saved_bytes(fn, x, weight, grid):
    """Bytes of the tensors autograd keeps for backward of ``fn``."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, weight, grid)
    return sum(saved)


@pytest.mark.parametrize('kernel_size,size', [(13, 32), (51, 24)])
def test_blocksum_saves_at_most_2x_dense_activations(kernel_size, size):
    """Block-sum keeps the input and the compact weight, not its
    (N, C, k', H, W) tables, for backward."""
    grid = sharing_grid(kernel_size, 5)
    x = torch.randn(2, 4, size, size, requires_grad=True)
    weight = torch.randn(4, 1, len(grid), len(grid), requires_grad=True)
    dense = _saved_bytes(dense_reference, x, weight, grid)
    blocksum = _saved_bytes(PERIPHERAL_CONV_IMPLS['blocksum'], x, weight, grid)
    assert blocksum <= 2 * dense, (blocksum, dense)
    assert blocksum <= x.numel() * 4 + weight.numel() * 4
