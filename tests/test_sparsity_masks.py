"""SparsityMasks, density allocation and parameter counts (no Runner)."""
import math

import pytest
import torch
from torch import nn

from pelk_mm.sparsity import (SparsityMasks, cosine_prune_rate,
                              count_parameters, densities_to_counts,
                              erk_densities, select_parameters)


class Backbone(nn.Module):

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.dwconv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.pos_embed = nn.Parameter(torch.randn(8, 7, 7))  # 3-D: dense
        self.norm = nn.LayerNorm(8)
        self.pwconv1 = nn.Linear(8, 32)
        self.pwconv2 = nn.Linear(32, 8)


class Classifier(nn.Module):

    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(8, 5)
        self.decode_head = nn.Linear(8, 5)  # 'head\.' must not match it

    def forward(self, x):
        x = self.backbone.dwconv(self.backbone.stem(x)).mean((2, 3))
        x = self.backbone.norm(x)
        x = x + self.backbone.pwconv2(self.backbone.pwconv1(x).relu())
        return self.head(x)


def make_model(seed=0):
    torch.manual_seed(seed)
    return Classifier()


def numel(masks):
    return sum(m.numel() for m in masks.masks.values())


def active(masks):
    return sum(int(m.sum()) for m in masks.masks.values())


def test_select_parameters_defaults_and_patterns():
    model = make_model()
    assert list(select_parameters(model)) == [
        'backbone.stem.weight', 'backbone.dwconv.weight',
        'backbone.pwconv1.weight', 'backbone.pwconv2.weight', 'head.weight'
    ]
    assert list(select_parameters(model, exclude=(r'backbone\.pw', ))) == [
        'backbone.stem.weight', 'backbone.dwconv.weight', 'head.weight'
    ]
    bare = select_parameters(model.backbone, include=('', ))
    assert list(bare) == [
        'stem.weight', 'dwconv.weight', 'pwconv1.weight', 'pwconv2.weight'
    ]
    with pytest.raises(ValueError, match='include'):
        SparsityMasks.init(model.backbone)  # bare backbone, default include


def test_erk_matches_hand_computation():
    # raw scores 8/16 and 32/256; 0.5 * 272 = 136 active weights. eps = 3.4
    # makes the small layer 1.7 > 1, so it is dense and the large one gets
    # (136 - 16) / 256.
    dens = erk_densities({'a': (4, 4), 'b': (16, 16)}, 0.5)
    assert dens == {'a': 1.0, 'b': pytest.approx(120 / 256)}
    assert densities_to_counts({
        'a': (4, 4),
        'b': (16, 16)
    }, dens, 0.5) == {
        'a': 16,
        'b': 120
    }


@pytest.mark.parametrize('init', ['ERK', 'uniform', 'snip'])
@pytest.mark.parametrize('sparsity', [0.4, 0.9])
def test_init_exact_total_density(init, sparsity):
    model = make_model()
    x = torch.randn(4, 3, 16, 16)

    def grad_fn():
        model(x).square().mean().backward()

    masks = SparsityMasks.init(
        model,
        sparsity=sparsity,
        init=init,
        generator=torch.Generator().manual_seed(0),
        grad_fn=grad_fn)
    total = sum(p.numel() for n, p in model.named_parameters()
                if n in masks.masks)
    assert active(masks) == round((1 - sparsity) * total)
    assert all(p.grad is None for p in model.parameters())  # snip cleans up
    if init == 'uniform':
        for m in masks.masks.values():
            assert abs(int(m.sum()) - (1 - sparsity) * m.numel()) <= 1
    if init == 'ERK':
        dens = erk_densities({
            n: m.shape
            for n, m in masks.masks.items()
        }, 1 - sparsity)
        for n, m in masks.masks.items():
            assert abs(int(m.sum()) - dens[n] * m.numel()) <= 1


def test_snip_densities_follow_saliency_positions_random():
    model = make_model()
    w = model.backbone.pwconv1.weight  # 256 entries

    def grad_fn():  # only pwconv1 gets a gradient: all saliency is there
        (w * torch.arange(w.numel()).view_as(w)).sum().backward()

    masks = SparsityMasks.init(
        model,
        sparsity=0.9,
        init='snip',
        generator=torch.Generator().manual_seed(0),
        grad_fn=grad_fn)
    keep = round(0.1 * numel(masks))
    assert keep < w.numel()
    for name, m in masks.masks.items():
        assert int(m.sum()) == (
            keep if name == 'backbone.pwconv1.weight' else 0)
    # Positions are drawn at random (SLaK), not the most salient ones.
    salient = (w.detach() * torch.arange(w.numel()).view_as(w)).abs()
    top = torch.zeros(w.numel(), dtype=torch.bool)
    top[salient.flatten().topk(keep).indices] = True
    assert not torch.equal(masks.masks['backbone.pwconv1.weight'].flatten(),
                           top)


def test_init_random_positions_follow_generator():
    a, b, c = (
        SparsityMasks.init(
            make_model(),
            init='uniform',
            generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2))
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_from_weights_and_apply_clears_weights_and_moments():
    model = make_model()
    masks = SparsityMasks.init(
        model, init='ERK', generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    masks.apply(model, opt)
    for name, p in model.named_parameters():
        if name in masks.masks:
            pruned = ~masks.masks[name]
            assert (p[pruned] == 0).all()
            assert (opt.state[p]['exp_avg'][pruned] == 0).all()
            assert (opt.state[p]['exp_avg_sq'][pruned] == 0).all()
            assert (p[~pruned] != 0).all()
    again = SparsityMasks.init(model, init='from_weights')
    assert all(
        torch.equal(again.masks[n], masks.masks[n]) for n in masks.masks)


def test_apply_clears_sgd_momentum():
    model = make_model()
    masks = SparsityMasks.init(
        model, init='uniform', generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    opt.step()
    masks.apply(model, opt)
    p = model.backbone.pwconv1.weight
    pruned = ~masks.masks['backbone.pwconv1.weight']
    assert (opt.state[p]['momentum_buffer'][pruned] == 0).all()
    # First SGD step: momentum buffer = gradient, kept where active.
    assert torch.equal(opt.state[p]['momentum_buffer'][~pruned],
                       p.grad[~pruned])


@pytest.mark.parametrize('growth', ['random', 'gradient'])
def test_update_prunes_smallest_regrows_at_zero_keeps_density(growth):
    model = make_model()
    gen = torch.Generator().manual_seed(0)
    masks = SparsityMasks.init(model, init='ERK', generator=gen)
    masks.apply(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    counts = {n: int(m.sum()) for n, m in masks.masks.items()}
    x = torch.randn(4, 3, 16, 16)
    for step in range(12):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        masks.apply(model, opt)
        before = {n: m.clone() for n, m in masks.masks.items()}
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
        moved = masks.update(model, 0.3, growth, gen, opt)
        assert moved > 0
        for name, p in model.named_parameters():
            if name not in masks.masks:
                continue
            new, old = masks.masks[name], before[name]
            assert int(new.sum()) == counts[name]
            pruned, grown = old & ~new, new & ~old
            if counts[name] == new.numel():  # ERK made it dense
                assert torch.equal(new, old)
                continue
            num = math.ceil(0.3 * counts[name])
            # Regrowing a just-pruned position is allowed, so count moves via
            # the positions that left the active set or joined it anew.
            assert int(pruned.sum()) == int(grown.sum()) <= num
            # Magnitude pruning: only the `num` smallest active weights can
            # leave; every larger one stays.
            mag = weights[name].abs()
            thr = mag[old].kthvalue(num).values
            assert (mag[pruned] <= thr).all()
            assert new[old & (mag > thr)].all()
            # Regrown positions start at zero, with zero moments.
            assert (p[~new | grown] == 0).all()
            for key in ('exp_avg', 'exp_avg_sq'):
                assert (opt.state[p][key][~new | grown] == 0).all()
            if growth == 'gradient' and grown.any():
                g = p.grad.abs()
                # Every position left inactive was a candidate not chosen.
                assert g[grown].min() >= g[~new].max()
    assert masks.density == pytest.approx(
        sum(counts.values()) / numel(masks), abs=0)


def test_update_skips_layers_without_gradient():
    model = make_model()
    gen = torch.Generator().manual_seed(0)
    masks = SparsityMasks.init(model, init='uniform', generator=gen)
    masks.apply(model)
    model.head.weight.requires_grad_(False)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    before = masks.masks['head.weight'].clone()
    masks.update(model, 0.5, 'random', gen)
    assert torch.equal(masks.masks['head.weight'], before)
    with pytest.raises(ValueError, match='growth'):
        masks.update(model, 0.5, 'magnitude', gen)
    with pytest.raises(ValueError, match='prune_rate'):
        masks.update(model, 1.5, 'random', gen)


def test_state_dict_round_trip_and_checks():
    model = make_model()
    masks = SparsityMasks.init(
        model, init='ERK', generator=torch.Generator().manual_seed(0))
    state = masks.state_dict()
    assert all(m.dtype == torch.bool and m.device.type == 'cpu'
               for m in state.values())
    loaded = SparsityMasks(state)
    assert all(torch.equal(loaded.masks[n], masks.masks[n]) for n in state)
    state['head.weight'] = state['head.weight'][:2]
    with pytest.raises(ValueError, match='head.weight'):
        SparsityMasks(state).apply(model)
    with pytest.raises(ValueError, match='not a parameter'):
        SparsityMasks({
            'head.nope': torch.ones(2, dtype=torch.bool)
        }).apply(model)


def test_count_parameters():
    model = make_model()
    dense = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == dict(dense=dense, effective=dense)
    masks = SparsityMasks.init(
        model,
        sparsity=0.4,
        init='uniform',
        generator=torch.Generator().manual_seed(0))
    pruned = numel(masks) - active(masks)
    assert pruned == numel(masks) - round(0.6 * numel(masks))
    assert count_parameters(model, masks) == dict(
        dense=dense, effective=dense - pruned)
    # The same count for the bare backbone, with bare names.
    bare = SparsityMasks({
        n[len('backbone.'):]: m
        for n, m in masks.masks.items() if n.startswith('backbone.')
    })
    bb_pruned = sum(m.numel() - int(m.sum()) for m in bare.masks.values())
    bb_dense = sum(p.numel() for p in model.backbone.parameters())
    assert count_parameters(model.backbone, bare) == dict(
        dense=bb_dense, effective=bb_dense - bb_pruned)
    with pytest.raises(ValueError, match='matches no parameter'):
        count_parameters(model.backbone, masks)


def test_bad_arguments_name_the_parameter():
    model = make_model()
    with pytest.raises(ValueError, match='init'):
        SparsityMasks.init(model, init='random')
    with pytest.raises(ValueError, match='sparsity'):
        SparsityMasks.init(model, sparsity=1.0)
    with pytest.raises(ValueError, match='grad_fn'):
        SparsityMasks.init(model, init='snip')
    with pytest.raises(ValueError, match='density'):
        erk_densities({'a': (2, 2)}, 0.0)


def test_cosine_prune_rate():
    assert cosine_prune_rate(0, 100, 0.3, 0.005) == pytest.approx(0.3)
    assert cosine_prune_rate(50, 100, 0.3, 0.005) == pytest.approx(0.1525)
    assert cosine_prune_rate(100, 100, 0.3, 0.005) == pytest.approx(0.005)
    assert cosine_prune_rate(500, 100, 0.3, 0.005) == pytest.approx(0.005)


@pytest.mark.parametrize('case', ['continuous', 'ties', 'inf'])
@pytest.mark.parametrize('k', [1, 1000, 150_000, 299_999, 300_000])
def test_bottom_k_matches_a_stable_sort(case, k):
    """The linear-time selection (sampled bracket, then kthvalue inside it,
    or over everything when the bracket misses) against a stable sort."""
    from pelk_mm.sparsity.selection import bottom_k
    gen = torch.Generator().manual_seed(k)
    n = 300_000  # above 2**18: the bracketed path
    scores = torch.rand(n, generator=gen)
    if case == 'ties':  # few distinct values: the k-th is tied many times
        scores = (scores * 7).floor()
    elif case == 'inf':  # inactive entries, as the update passes them
        scores[torch.rand(n, generator=gen) < 0.4] = float('inf')
    expected = torch.zeros(n, dtype=torch.bool)
    expected[torch.sort(scores, stable=True).indices[:k]] = True
    assert torch.equal(bottom_k(scores, k), expected)
