"""PeripheralConv2d and peripheral_conv2d vs dense and literal references."""
import pytest
import torch
import torch.nn.functional as F

from pelk_mm import (PERIPHERAL_CONV_IMPLS, PeripheralConv2d, expand_weight,
                     peripheral_conv2d, sharing_grid)

IMPLS = sorted(PERIPHERAL_CONV_IMPLS)


def eq3_reference(x, dense_weight, bias=None, pos_embed=None):
    """Eq. 3 written out tap by tap: sum_ij w(i, j) (X(x+i, y+j) + h(i, j)).

    The zero-padded input patches come from ``F.unfold``; ``h`` is added at
    every tap (zero padding included), as the spec decides.
    """
    n, c, height, width = x.shape
    k = dense_weight.shape[-1]
    taps = F.unfold(x, k, padding=k // 2).view(n, c, k * k, height * width)
    if pos_embed is not None:
        taps = taps + pos_embed.reshape(1, c, k * k, 1)
    out = (taps * dense_weight.reshape(1, c, k * k, 1)).sum(2)
    if bias is not None:
        out = out + bias.view(1, c, 1)
    return out.view(n, c, height, width)


CASES = [
    # (channels, kernel_size, center_size, input H, W)
    (1, 5, 1, 7, 7),
    (3, 13, 5, 4, 9),  # input smaller than the kernel in one dim
    (4, 31, 5, 6, 5),  # input much smaller than the kernel
    (8, 31, 3, 33, 17),
    (2, 51, 5, 1, 1),
    (5, 51, 7, 40, 41),  # odd sizes larger than K
    (3, 101, 7, 19, 23),
    (6, 13, 13, 12, 12),  # centre == kernel: a dense 13x13 conv
]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('channels,kernel_size,center_size,height,width',
                         CASES)
def test_forward_matches_dense_conv(impl, channels, kernel_size, center_size,
                                    height, width):
    torch.manual_seed(0)
    conv = PeripheralConv2d(
        channels, kernel_size, center_size=center_size, bias=True, impl=impl)
    x = torch.randn(2, channels, height, width)
    expected = F.conv2d(
        x,
        conv.dense_weight(),
        conv.bias,
        padding=kernel_size // 2,
        groups=channels)
    out = conv(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('grid', [(2, 1, 2), (3, 1, 1), (4, 2, 1, 1, 1, 2, 4),
                                  (1, 1, 2, 4, 1, 4, 2, 1, 1)])
def test_explicit_grid(impl, grid):
    torch.manual_seed(1)
    kernel_size = sum(grid)
    conv = PeripheralConv2d(3, kernel_size, grid=grid, impl=impl)
    assert conv.grid == grid
    assert conv.weight.shape == (3, 1, len(grid), len(grid))
    x = torch.randn(1, 3, 10, 7)
    expected = F.conv2d(
        x, conv.dense_weight(), padding=kernel_size // 2, groups=3)
    torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('kernel_size,center_size,height,width', [
    (5, 1, 4, 6),
    (13, 5, 3, 8),
    (31, 5, 9, 9),
])
def test_pos_embed_matches_eq3(impl, kernel_size, center_size, height, width):
    torch.manual_seed(2)
    channels = 3
    grid = sharing_grid(kernel_size, center_size)
    weight = torch.randn(channels, 1, len(grid), len(grid))
    bias = torch.randn(channels)
    pos_embed = torch.randn(channels, kernel_size, kernel_size)
    x = torch.randn(2, channels, height, width)
    out = peripheral_conv2d(x, weight, grid, bias, pos_embed, impl=impl)
    expected = eq3_reference(x, expand_weight(weight, grid), bias, pos_embed)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # without the embedding it is the plain convolution
    torch.testing.assert_close(
        peripheral_conv2d(x, weight, grid, impl=impl),
        eq3_reference(x, expand_weight(weight, grid)),
        rtol=1e-4,
        atol=1e-4)


@pytest.mark.parametrize('impl', IMPLS)
def test_gradcheck(impl):
    torch.manual_seed(3)
    grid = (2, 1, 1, 1, 2)
    x = torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    pos_embed = torch.randn(2, 7, 7, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, bias, pos_embed):
        return peripheral_conv2d(x, weight, grid, bias, pos_embed, impl=impl)

    assert torch.autograd.gradcheck(fn, (x, weight, bias, pos_embed))


def test_module_state_and_repr():
    conv = PeripheralConv2d(7, 51)
    assert conv.grid == sharing_grid(51, 5)
    assert conv.kernel_size == 51
    assert conv.weight.shape == (7, 1, 13, 13)
    assert conv.bias is None
    assert conv.dense_weight().shape == (7, 1, 51, 51)
    assert set(conv.state_dict()) == {'weight'}
    # initialised like a dense depthwise 51x51 kernel: U(-1/51, 1/51)
    assert conv.weight.abs().max() <= 1 / 51
    assert conv.weight.std() > 0.5 / 51 / 3**0.5
    assert 'grid=(9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9)' in repr(conv)


def test_forward_errors():
    conv = PeripheralConv2d(4, 13)
    with pytest.raises(ValueError, match=r'`x`.*\(N, 4, H, W\)'):
        conv(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match='`x`'):
        conv(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match=r'`pos_embed`.*\(4, 13, 13\)'):
        conv(torch.randn(1, 4, 8, 8), torch.randn(4, 11, 11))
    grid = sharing_grid(13)
    with pytest.raises(ValueError, match='`weight`'):
        peripheral_conv2d(
            torch.randn(1, 4, 8, 8), torch.randn(4, 1, 5, 5), grid)
    with pytest.raises(ValueError, match='`impl`.*dense'):
        peripheral_conv2d(
            torch.randn(1, 4, 8, 8), conv.weight, grid, impl='nope')


@pytest.mark.parametrize(
    'dtype', [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_input_names_the_dtype(dtype):
    conv = PeripheralConv2d(4, 13)
    x = torch.ones(1, 4, 8, 8, dtype=dtype)
    allowed = (r'\(torch.float16, torch.bfloat16, torch.float32, '
               r'torch.float64\)')
    with pytest.raises(
            ValueError,
            match=f'`x` must be a floating-point tensor {allowed}'
            f', got {dtype}'):
        conv(x)
    with pytest.raises(ValueError, match=f'{allowed}, got {dtype}'):
        peripheral_conv2d(x, conv.weight, conv.grid)


def test_module_validates_once(monkeypatch):
    """The module checked its grid at construction: forward does not check
    it again (the function form does)."""
    import pelk_mm.ops.peripheral_conv as module
    conv = PeripheralConv2d(4, 13)
    x = torch.randn(1, 4, 8, 8)

    def fail(*args, **kwargs):
        raise AssertionError('check_grid called again')

    monkeypatch.setattr(module, 'check_grid', fail)
    conv(x)
    with pytest.raises(AssertionError, match='again'):
        peripheral_conv2d(x, conv.weight, conv.grid)


@pytest.mark.parametrize('kwargs,name', [
    (dict(channels=4, kernel_size=50), 'kernel_size'),
    (dict(channels=4, kernel_size=51, center_size=6), 'center_size'),
    (dict(channels=4, kernel_size=13, center_size=15), 'center_size'),
    (dict(channels=4, kernel_size=51, base=1), 'base'),
    (dict(channels=4, kernel_size=7, grid=(2, 1, 2)), 'grid'),
    (dict(channels=4, kernel_size=5, grid=(3, -1, 3)), 'grid'),
    (dict(channels=0, kernel_size=5), 'channels'),
    (dict(channels=4, kernel_size=5, impl='cuda-magic'), 'impl'),
])
def test_constructor_errors(kwargs, name):
    with pytest.raises(ValueError, match=f'`{name}`'):
        PeripheralConv2d(**kwargs)
