"""One initialisation policy: every initial value of PeLK comes from
``init_weights()`` / ``init_cfg``.

Trunc-normal std 0.02 for the compact peripheral weights, the Linear and Conv2d
weights and the positional embeddings, biases 0, LayerNorms 1 / 0; a
``Pretrained`` init keeps the loaded values bit for bit. The standalone
``PeripheralConv2d`` keeps its ``nn.Conv2d``-like fan-in ``K^2`` init.
"""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.runner import save_checkpoint
from mmengine.runner.checkpoint import get_state_dict

from pelk_mm import PeLK, PeripheralConv2d
from helpers import ARCH21


def built(seed=0, **kwargs):
    torch.manual_seed(seed)
    return PeLK(ARCH21, **kwargs)


def std_ok(values, std=0.02, rel=0.1):
    """Sample std within ``rel`` of ``std`` (the sampling error of these
    sizes, >= 600 values, is below 3 %)."""
    assert values.numel() >= 600
    return abs(float(values.std()) / std - 1) < rel


def test_init_weights_is_the_one_place():
    model = built()
    # Before init_weights: the positional embeddings are placeholders (0),
    # not drawn in __init__.
    assert all(torch.equal(h, torch.zeros_like(h)) for h in model.pos_embeds)
    torch.manual_seed(1)
    model.init_weights()

    convs = [m for m in model.modules() if isinstance(m, PeripheralConv2d)]
    for stage, conv in enumerate(convs):  # per stage: K from 21 down to 7
        values = conv.weight.detach().flatten()
        if values.numel() >= 600:
            assert std_ok(values), (stage, values.std())
        assert values.abs().max() < 0.02 * 6
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    weights = torch.cat([c.weight.detach().flatten() for c in convs])
    assert std_ok(weights, rel=0.05)
    for i, h in enumerate(model.pos_embeds):
        assert std_ok(h.detach().flatten(), rel=0.05), i
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert std_ok(
        torch.cat([m.weight.detach().flatten() for m in linears]), rel=0.05)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linears)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


def test_values_depend_only_on_the_seed_at_init_weights():
    """Construction draws nothing that init_weights does not redraw."""
    first, second = built(seed=0), built(seed=123)
    for model in (first, second):
        torch.manual_seed(7)
        model.init_weights()
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_pretrained_keeps_loaded_values_bit_for_bit(tmp_path):
    source = built(seed=3)
    with torch.no_grad():  # values no initialisation would draw
        for h in source.pos_embeds:
            h.normal_(mean=1.0, std=3.0)
        for p in source.parameters():
            if p.dim() != 3:
                p.add_(0.5)
    path = str(tmp_path / 'backbone.pth')
    save_checkpoint(dict(state_dict=get_state_dict(source)), path)
    for init_cfg in (dict(type='Pretrained', checkpoint=path), [
            dict(type='TruncNormal', layer=['Linear'], std=.02),
            dict(type='Pretrained', checkpoint=path)
    ]):
        loaded = built(seed=4, init_cfg=init_cfg)
        loaded.init_weights()
        for key, value in source.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key


def test_init_weights_twice_is_a_no_op():
    model = built()
    model.init_weights()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize('kernel_size', [13, 31])
def test_standalone_peripheral_conv_fan_in_init(kernel_size):
    """Plain PyTorch: nn.Conv2d's default for the dense K x K depthwise conv,
    U(-1/K, 1/K), std 1 / (K sqrt 3)."""
    torch.manual_seed(0)
    conv = PeripheralConv2d(64, kernel_size)
    bound = 1 / kernel_size
    assert conv.weight.abs().max() <= bound
    assert std_ok(conv.weight.detach().flatten(), std=bound / math.sqrt(3))
