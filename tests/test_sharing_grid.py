"""Sharing grids (Eq. 2), explicit-grid validation and kernel expansion."""
import pytest
import torch

from pelk_mm import check_grid, expand_weight, sharing_grid


def full(half):
    """Full symmetric grid from a paper half grid (outermost first)."""
    return tuple(half) + tuple(half[-2::-1])


# Spec section 1 table: (K, central size, half grid, k').
PAPER_GRIDS = [
    (31, 5, [7, 4, 2, 1, 1, 1], 11),
    (51, 1, [11, 8, 4, 2, 1], 9),
    (51, 3, [10, 8, 4, 2, 1, 1], 11),
    (51, 5, [9, 8, 4, 2, 1, 1, 1], 13),
    (51, 7, [8, 8, 4, 2, 1, 1, 1, 1], 15),
]


@pytest.mark.parametrize('kernel_size,center_size,half,num_bands', PAPER_GRIDS)
def test_paper_grids(kernel_size, center_size, half, num_bands):
    grid = sharing_grid(kernel_size, center_size=center_size)
    assert grid == full(half)
    assert len(grid) == num_bands
    assert sum(grid) == kernel_size


def test_paper_full_grid_k31():
    assert sharing_grid(31) == (7, 4, 2, 1, 1, 1, 1, 1, 2, 4, 7)


@pytest.mark.parametrize('kernel_size', [1, 3, 13, 47, 49, 67, 69, 101, 151])
@pytest.mark.parametrize('center_size', [1, 5, 7])
@pytest.mark.parametrize('base', [2, 3])
def test_grid_invariants(kernel_size, center_size, base):
    if center_size > kernel_size:
        pytest.skip(f'center_size={center_size} > kernel_size={kernel_size} '
                    'is invalid (test_sharing_grid_errors checks the error)')
    grid = sharing_grid(kernel_size, center_size, base)
    assert sum(grid) == kernel_size
    assert grid == grid[::-1]
    half = grid[len(grid) // 2:]  # centre first, walking outwards
    radius = center_size // 2
    for distance, width in enumerate(half[:-1]):
        expected = 1 if distance <= radius else base**(distance - radius)
        assert width == expected
    last = len(half) - 1
    assert 1 <= half[-1] <= (1 if last <= radius else base**(last - radius))


def test_center_equal_to_kernel_is_dense():
    assert sharing_grid(7, center_size=7) == (1, ) * 7


def test_base_three():
    # half kernel 26: 1, 1, 1, 3, 9, then 11 left (< 27)
    assert sharing_grid(51, 5, base=3) == full([11, 9, 3, 1, 1, 1])


@pytest.mark.parametrize('kwargs,name', [
    (dict(kernel_size=50), 'kernel_size'),
    (dict(kernel_size=0), 'kernel_size'),
    (dict(kernel_size=51.0), 'kernel_size'),
    (dict(kernel_size=51, center_size=4), 'center_size'),
    (dict(kernel_size=51, center_size=0), 'center_size'),
    (dict(kernel_size=13, center_size=15), 'center_size'),
    (dict(kernel_size=51, base=1), 'base'),
    (dict(kernel_size=51, base=2.5), 'base'),
])
def test_sharing_grid_errors(kwargs, name):
    with pytest.raises(ValueError, match=f'`{name}`') as info:
        sharing_grid(**kwargs)
    # the message lists what is allowed
    assert 'odd' in str(info.value) or '>= 2' in str(info.value)


@pytest.mark.parametrize(
    'grid',
    [
        (2, 2, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2),  # paper ablations
        (8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8),
        (1, 1, 2, 4, 8, 1, 8, 4, 2, 1, 1),
        (3, 1, 1),  # asymmetric grids are allowed
    ])
def test_check_grid_accepts_explicit_grids(grid):
    assert check_grid(list(grid), sum(grid)) == grid
    assert check_grid(grid) == grid


@pytest.mark.parametrize('grid,kernel_size,match', [
    ((2, 1, 2), 7, 'sum to kernel_size=7'),
    ((3, 0, 2), 5, 'positive'),
    ((3, -1, 3), 5, 'positive'),
    ((), 5, 'non-empty'),
    ((2, 1.0, 2), 5, 'integers'),
    ((2, 2), 4, 'kernel_size'),
    ((2, 2), None, r'sum\(grid\)'),
    (None, 5, '`grid`'),
])
def test_check_grid_errors(grid, kernel_size, match):
    with pytest.raises(ValueError, match=match):
        check_grid(grid, kernel_size)


def test_expand_weight_blocks():
    grid = (2, 1, 3)
    weight = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 3, 3)
    dense = expand_weight(weight, grid)
    assert dense.shape == (2, 1, 6, 6)
    starts = [0, 2, 3, 6]
    for a in range(3):
        for b in range(3):
            block = dense[:, 0, starts[a]:starts[a + 1],
                          starts[b]:starts[b + 1]]
            assert torch.equal(block, weight[:, 0, a, b, None,
                                             None].expand_as(block))


def test_expand_weight_gradient_is_block_sum():
    grid = sharing_grid(13, 5)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(
        3, 1, len(grid), len(grid), generator=gen, requires_grad=True)
    upstream = torch.randn(3, 1, 13, 13, generator=gen)
    (expand_weight(weight, grid) * upstream).sum().backward()
    bounds = torch.tensor((0, ) + grid).cumsum(0)
    expected = torch.stack([
        torch.stack([
            upstream[:, 0, bounds[a]:bounds[a + 1],
                     bounds[b]:bounds[b + 1]].sum((1, 2))
            for b in range(len(grid))
        ], 1) for a in range(len(grid))
    ], 1)
    torch.testing.assert_close(weight.grad[:, 0], expected)


def test_expand_weight_shape_error():
    with pytest.raises(ValueError, match='`weight`'):
        expand_weight(torch.zeros(2, 1, 3, 3), (1, 2, 1, 1))
