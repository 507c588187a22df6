"""The positional-embedding term of Eq. 3 in both readings
(``pos_embed_mode='literal'`` and ``'in_image'``) against a tap-by-tap
reference, in every ``impl``, with gradients, autocast, and in the backbone."""
import pytest
import torch
import torch.nn.functional as F

from pelk_mm import (PERIPHERAL_CONV_IMPLS, POS_EMBED_MODES, PeLK,
                     PeripheralConv2d, expand_weight, peripheral_conv2d,
                     pos_embed_bias, pos_embed_map, sharing_grid)
from pelk_mm.models.pelk import PeLKBlock

IMPLS = sorted(PERIPHERAL_CONV_IMPLS)


def eq3_tap_loop(x, dense_weight, bias, pos_embed, mode):
    """Eq. 3 tap by tap: ``Y(x, y) = b + sum_ij w(i, j) (X(x+i, y+j) +
    h(i, j))`` with zero padding; ``h(i, j)`` is added at every tap
    (``'literal'``) or only where ``(x+i, y+j)`` is inside the image
    (``'in_image'``)."""
    n, c, height, width = x.shape
    k = dense_weight.shape[-1]
    r = k // 2
    padded = F.pad(x, (r, r, r, r))
    inside = F.pad(x.new_ones(height, width), (r, r, r, r))
    out = bias.view(1, c, 1, 1).expand(n, c, height, width).clone()
    for u in range(k):
        for v in range(k):
            h = pos_embed[:, u, v].view(1, c, 1, 1)
            if mode == 'in_image':
                h = h * inside[u:u + height, v:v + width]
            tap = padded[:, :, u:u + height, v:v + width] + h
            out += dense_weight[:, 0, u, v].view(1, c, 1, 1) * tap
    return out


def random_inputs(channels, grid, height, width, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    kernel_size = sum(grid)
    x = torch.randn(2, channels, height, width, dtype=dtype, generator=gen)
    weight = torch.randn(
        channels, 1, len(grid), len(grid), dtype=dtype, generator=gen)
    bias = torch.randn(channels, dtype=dtype, generator=gen)
    pos_embed = torch.randn(
        channels, kernel_size, kernel_size, dtype=dtype, generator=gen)
    return x, weight, bias, pos_embed


CASES = [
    # (channels, grid, H, W)
    (2, sharing_grid(5, 1), 7, 9),  # map larger than the kernel
    (3, sharing_grid(13, 5), 4, 9),  # smaller in one dim
    (2, sharing_grid(13, 3), 17, 15),  # odd sizes larger than K
    (3, sharing_grid(21, 5), 6, 5),  # much smaller than the kernel
    (2, sharing_grid(9, 3), 1, 1),
    (2, (1, 4, 2, 1, 5), 10, 12),  # asymmetric explicit grid
]


@pytest.mark.parametrize('mode', POS_EMBED_MODES)
@pytest.mark.parametrize('channels,grid,height,width', CASES)
def test_matches_tap_by_tap_reference(mode, channels, grid, height, width):
    x, weight, bias, pos_embed = random_inputs(
        channels, grid, height, width, seed=height * 100 + width)
    expected = eq3_tap_loop(x, expand_weight(weight, grid), bias, pos_embed,
                            mode)
    for impl in IMPLS:
        out = peripheral_conv2d(
            x, weight, grid, bias, pos_embed, impl=impl, pos_embed_mode=mode)
        assert out.dtype == torch.float64
        torch.testing.assert_close(
            out,
            expected,
            rtol=1e-10,
            atol=1e-10,
            msg=lambda m: f'{impl}: {m}')


@pytest.mark.parametrize('channels,grid,height,width', CASES)
def test_in_image_equals_literal_where_the_window_is_inside(
        channels, grid, height, width):
    """Same term where the whole ``K x K`` window lies in the image, a
    different one at every other pixel (so at every pixel of a map smaller
    than the kernel)."""
    _, weight, _, pos_embed = random_inputs(
        channels, grid, height, width, seed=7)
    r = sum(grid) // 2
    term = pos_embed_map(weight, grid, pos_embed, height, width)
    literal = pos_embed_bias(weight, grid, pos_embed).view(-1, 1, 1)
    assert term.shape == (channels, height, width)
    window_inside = torch.zeros(height, width, dtype=torch.bool)
    window_inside[r:height - r, r:width - r] = True
    diff = (term - literal).abs()
    assert (diff[:, window_inside] < 1e-12).all()
    assert (diff[:, ~window_inside] > 1e-9).all()
    if height < 2 * r + 1 or width < 2 * r + 1:
        assert not window_inside.any()


def test_in_image_tells_positions_apart_literal_does_not():
    x, weight, bias, pos_embed = random_inputs(
        3, sharing_grid(13, 5), 9, 11, seed=0)
    zeros = torch.zeros_like(x)
    literal = peripheral_conv2d(zeros, weight, sharing_grid(13, 5), None,
                                pos_embed)
    in_image = peripheral_conv2d(
        zeros,
        weight,
        sharing_grid(13, 5),
        None,
        pos_embed,
        pos_embed_mode='in_image')
    # on a blank image the literal term is one value per channel ...
    assert torch.equal(literal, literal[:, :, :1, :1].expand_as(literal))
    # ... the in-image term differs from pixel to pixel
    assert in_image.flatten(2).unique(dim=2).shape[2] == 9 * 11


def test_gradcheck_in_image():
    """Gradients of the in-image term w.r.t. the weight and ``h`` (float64,
    a map smaller than the kernel in one dimension)."""
    grid = (2, 1, 2)
    _, weight, _, pos_embed = random_inputs(2, grid, 4, 3, seed=3)
    weight.requires_grad_()
    pos_embed.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w, h: pos_embed_map(w, grid, h, 4, 7), (weight, pos_embed))


@pytest.mark.parametrize('impl', IMPLS)
def test_autocast_bfloat16(impl):
    """Under autocast the term is computed in float32 (a 16-bit matmul would
    round it) and added to the output in the autocast dtype."""
    grid = sharing_grid(31, 5)
    x, weight, bias, pos_embed = random_inputs(
        3, grid, 12, 10, seed=5, dtype=torch.float32)
    plain = pos_embed_map(weight, grid, pos_embed, 12, 10)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        term = pos_embed_map(weight, grid, pos_embed, 12, 10)
        out = peripheral_conv2d(
            x,
            weight,
            grid,
            pos_embed=pos_embed,
            impl=impl,
            pos_embed_mode='in_image')
        conv = peripheral_conv2d(x, weight, grid, impl=impl)
    assert term.dtype == torch.float32
    assert torch.equal(term, plain)
    assert out.dtype == conv.dtype == torch.bfloat16
    assert torch.equal(out, conv + plain.to(torch.bfloat16))


def test_module_and_backbone_carry_the_mode():
    conv = PeripheralConv2d(4, 13, pos_embed_mode='in_image')
    assert conv.pos_embed_mode == 'in_image'
    assert "pos_embed_mode='in_image'" in repr(conv)
    assert PeripheralConv2d(4, 13).pos_embed_mode == 'literal'
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 7)
    h = torch.randn(4, 13, 13)
    torch.testing.assert_close(
        conv(x, h),
        peripheral_conv2d(
            x, conv.weight, conv.grid, pos_embed=h, pos_embed_mode='in_image'))

    arch = dict(
        depths=[1, 2, 1, 1],
        channels=[8, 16, 16, 16],
        kernel_sizes=[7, 7, 5, 3],
        center_sizes=1)
    model = PeLK(arch, pos_embed_mode='in_image')
    assert model.pos_embed_mode == 'in_image'
    blocks = [b for stage in model.stages for b in stage]
    assert all(b.peripheral_conv.pos_embed_mode == 'in_image' for b in blocks)
    assert PeLK(arch).pos_embed_mode == 'literal'


def test_block_token_mixer_adds_the_in_image_map():
    torch.manual_seed(0)
    block = PeLKBlock(16, sharing_grid(9, 3), pos_embed_mode='in_image')
    block.double()
    g = block.conv_channels
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    h = torch.randn(g, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        diff = block.mix_tokens(x, h) - block.mix_tokens(x)
    conv = block.peripheral_conv
    expected = pos_embed_map(conv.weight, conv.grid, h, 5, 6)
    torch.testing.assert_close(
        diff[:, :g], expected.expand(2, -1, -1, -1), rtol=1e-12, atol=1e-12)
    assert torch.equal(diff[:, g:], torch.zeros_like(diff[:, g:]))


@pytest.mark.parametrize('build', [
    lambda: peripheral_conv2d(
        torch.zeros(1, 2, 4, 4),
        torch.zeros(2, 1, 3, 3), (1, 1, 1),
        pos_embed_mode='padded'),
    lambda: PeripheralConv2d(2, 3, center_size=3, pos_embed_mode='padded'),
    lambda: PeLKBlock(8, (1, 1, 1), pos_embed_mode='padded'),
    lambda: PeLK(
        dict(depths=[1], channels=[8], kernel_sizes=[3], center_sizes=1),
        pos_embed_mode='padded'),
])
def test_bad_mode_names_the_argument_and_the_allowed_values(build):
    with pytest.raises(
            ValueError, match=r"`pos_embed_mode`.*'literal'.*'in_image'"):
        build()
