"""tools/analysis_tools/visualize_erf.py: the ERF protocol on one-layer models
with known kernels, the area ratios on maps with known answers, weights and
preprocessing from configs, and the tool end to end as a user runs it."""
import json
import os.path as osp
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine import Config
from PIL import Image

from pelk_mm import PeLK, PeripheralConv2d
from helpers import ROOT, TINY_ARCH, load_tool

TOOL = osp.join(ROOT, 'tools', 'analysis_tools', 'visualize_erf.py')
erf = load_tool('analysis_tools/visualize_erf.py')

PELK_CONFIG = f"""
default_scope = 'mmpretrain'
custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
data_preprocessor = dict(
    num_classes=10, mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='PeLK', arch={TINY_ARCH}),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=40))
"""
CONVNEXT_CONFIG = """
default_scope = 'mmpretrain'
data_preprocessor = dict(
    num_classes=10, mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375], to_rgb=True)
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ConvNeXt', arch=dict(depths=[1, 1, 1, 1],
                                   channels=[16, 24, 32, 40])),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=40))
"""


class OneLayer(nn.Module):
    """A one-layer "backbone" returning a tuple, as mm backbones do."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return (self.layer(x), )


def window(size, kernel_size):
    """Index of the K x K window around the centre of a size x size map."""
    c, r = size // 2, kernel_size // 2
    return slice(c - r, c + r + 1), slice(c - r, c + r + 1)


# --------------------------------------------------------------------------
# The protocol on known kernels
# --------------------------------------------------------------------------
@pytest.mark.parametrize('size', [33, 32])
@pytest.mark.parametrize('kernel_size', [1, 7])
def test_depthwise_support_is_the_kernel(kernel_size, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, kernel_size, padding=kernel_size // 2, groups=3)
    with torch.no_grad():
        conv.weight.uniform_(0.1, 1.)
        conv.bias.fill_(1.)
    contribution = erf.input_contribution(
        OneLayer(conv), torch.rand(1, 3, size, size))

    expected = torch.zeros(size, size)
    expected[window(size, kernel_size)] = conv.weight.sum(0)[0]
    torch.testing.assert_close(contribution, expected)
    assert (contribution > 0).sum() == kernel_size**2


def test_both_relus():
    """A channel whose centre output is negative (output ReLU) and one whose
    input gradient is negative (gradient ReLU) contribute nothing."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 5, padding=2, groups=3)
    with torch.no_grad():
        conv.weight.uniform_(0.1, 1.)
        conv.weight[1].neg_()  # negative gradient ...
        conv.bias.copy_(torch.tensor([1., 100., -100.]))  # ... positive output
    contribution = erf.input_contribution(
        OneLayer(conv), torch.rand(1, 3, 21, 21))
    expected = torch.zeros(21, 21)
    expected[window(21, 5)] = conv.weight[0, 0]
    torch.testing.assert_close(contribution, expected)


def test_peripheral_conv_support_is_the_kernel():
    torch.manual_seed(0)
    conv = PeripheralConv2d(4, 13, center_size=3, bias=True, impl='dense')
    with torch.no_grad():
        conv.weight.uniform_(0.1, 1.)
        conv.bias.fill_(1.)
    contribution = erf.input_contribution(
        OneLayer(conv), torch.rand(1, 4, 40, 40))

    expected = torch.zeros(40, 40)
    expected[window(40, 13)] = conv.dense_weight().sum(0)[0]
    torch.testing.assert_close(contribution, expected)
    assert (contribution > 0).sum() == 13**2


def test_contribution_map_averages_images():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)
    with torch.no_grad():
        conv.bias.fill_(10.)
    images = [torch.randn(1, 3, 16, 16) for _ in range(3)]
    raw, seconds = erf.contribution_map(OneLayer(conv), iter(images))
    expected = sum(erf.input_contribution(OneLayer(conv), x)
                   for x in images) / 3
    assert raw.dtype == np.float64 and len(seconds) == 3
    np.testing.assert_allclose(raw, expected.numpy(), rtol=1e-6)


# --------------------------------------------------------------------------
# Area ratios
# --------------------------------------------------------------------------
def test_area_ratios_known_answer():
    data = np.zeros((21, 21))
    data[10, 10] = 0.25  # the centre pixel: 25 %
    ring = np.zeros((21, 21), bool)
    ring[8:13, 8:13] = True
    ring[9:12, 9:12] = False
    data[ring] = 0.5 / ring.sum()  # 5x5 square: 75 %
    data[0, 0] = 0.25  # the corner: only the whole map holds 99 %
    assert erf.area_ratios(data * 7.) == {
        '20': 1 / 441,
        '30': 25 / 441,
        '50': 25 / 441,
        '99': 1.
    }


def test_area_ratios_clip_non_square_maps():
    data = np.zeros((10, 30))
    data[5, 15] = 1.  # centre of an even-sided map: (H // 2, W // 2)
    data[5, 29] = 1.  # the right edge, 14 columns from the centre
    ratios = erf.area_ratios(data, thresholds=(0.5, 0.6))
    assert ratios == {'50': 1 / 300, '60': 10 * 29 / 300}


def reference_ratio(data, thresh):
    """Square-by-square reference (RepLKNet's get_rectangle, from r = 0)."""
    h, w = data.shape
    for r in range(max(h, w)):
        square = data[max(h // 2 - r, 0):h // 2 + r + 1,
                      max(w // 2 - r, 0):w // 2 + r + 1]
        if square.sum() >= thresh * data.sum():
            return square.size / data.size


@pytest.mark.parametrize('shape', [(64, 64), (37, 50)])
def test_area_ratios_match_reference(shape):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    dist = np.hypot(yy - shape[0] // 2, xx - shape[1] // 2)
    data = np.exp(-dist / 6) * rng.uniform(0.5, 1.5, shape)
    ratios = erf.area_ratios(data)
    assert list(ratios) == ['20', '30', '50', '99']
    for t, ratio in zip(erf.THRESHOLDS, ratios.values()):
        assert ratio == pytest.approx(reference_ratio(data, t), abs=1e-12)
    assert list(ratios.values()) == sorted(ratios.values())


def test_area_ratios_reject_bad_maps():
    with pytest.raises(ValueError, match='non-negative'):
        erf.area_ratios(np.zeros((8, 8)))
    with pytest.raises(ValueError, match='non-negative'):
        erf.area_ratios(-np.ones((8, 8)))
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        erf.area_ratios(np.ones((2, 8, 8)))


def test_log_scaled():
    data = np.array([[0., 9.], [99., 999.]])
    np.testing.assert_allclose(
        erf.log_scaled(data), [[0., 1 / 3], [2 / 3, 1.]], rtol=1e-12)


# --------------------------------------------------------------------------
# Configs: preprocessing and weights
# --------------------------------------------------------------------------
def test_normalisation_from_config():
    pre = dict(mean=[1., 2., 3.], std=[4., 5., 6.])
    # mmpretrain: top-level data_preprocessor with to_rgb
    mean, std, rgb = erf.normalisation(
        Config(dict(model=dict(), data_preprocessor=dict(pre, to_rgb=True))))
    assert mean.flatten().tolist() == [1., 2., 3.]
    assert std.flatten().tolist() == [4., 5., 6.] and rgb
    # mmseg / mmdet: the model's own wins; no swap means BGR
    mean, _, rgb = erf.normalisation(
        Config(
            dict(
                model=dict(data_preprocessor=dict(pre, bgr_to_rgb=False)),
                data_preprocessor=dict(
                    mean=[0., 0., 0.], std=[1., 1., 1.], to_rgb=True))))
    assert mean.flatten().tolist() == [1., 2., 3.] and not rgb


def test_load_images_normalises_in_model_channel_order(tmp_path):
    pixel = (200, 100, 50)
    Image.new('RGB', (40, 30), pixel).save(tmp_path / 'a.png')
    mean = torch.tensor([10., 20., 30.]).view(-1, 1, 1)
    std = torch.tensor([2., 4., 5.]).view(-1, 1, 1)
    for rgb, order in ((True, pixel), (False, pixel[::-1])):
        x, = erf.load_images([str(tmp_path / 'a.png')], 32, mean, std, rgb,
                             'cpu')
        assert x.shape == (1, 3, 32, 32)
        expected = (torch.tensor(order, dtype=torch.float32) -
                    mean.flatten()) / std.flatten()
        torch.testing.assert_close(x[0, :, 5, 7], expected)


def test_build_backbone_weights(tmp_path):
    cfg = Config.fromstring(PELK_CONFIG, '.py')
    torch.manual_seed(1)
    trained = PeLK(arch=TINY_ARCH)
    trained.init_weights()
    state = trained.state_dict()
    # a whole classifier checkpoint: backbone.* used, head.* dropped
    torch.save(
        dict(
            state_dict={
                **{
                    f'backbone.{k}': v
                    for k, v in state.items()
                }, 'head.fc.weight': torch.zeros(10, 40)
            }), tmp_path / 'cls.pth')
    torch.save(state, tmp_path / 'backbone.pth')
    for name in ('cls.pth', 'backbone.pth'):
        backbone = erf.build_backbone(cfg, str(tmp_path / name))
        for key, value in backbone.state_dict().items():
            torch.testing.assert_close(value, state[key])
        assert not backbone.training
        # gap_before_final_norm switched off: the last output is a map
        assert backbone(torch.rand(1, 3, 64, 64))[-1].shape == (1, 40, 2, 2)

    # random init is seeded; a Pretrained init_cfg is ignored
    cfg.model.backbone.init_cfg = dict(
        type='Pretrained', checkpoint=str(tmp_path / 'missing.pth'))
    a = erf.build_backbone(cfg, seed=3).state_dict()
    b = erf.build_backbone(cfg, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['stages.0.0.peripheral_conv.weight'],
                           state['stages.0.0.peripheral_conv.weight'])

    other = dict(TINY_ARCH, kernel_sizes=[7, 7, 7, 5])
    torch.save(PeLK(arch=other).state_dict(), tmp_path / 'other.pth')
    # PeLK's own strict loading refuses it (PeLKCheckpointMismatch, a
    # ValueError naming both archs); other backbones get the tool's message
    with pytest.raises(ValueError, match='does not fit this PeLK'):
        erf.build_backbone(cfg, str(tmp_path / 'other.pth'))


def test_package_config_resolves():
    cfg = erf.load_config('mmpretrain::convnext/convnext-tiny_32xb128_in1k.py')
    assert cfg.model.backbone.type == 'ConvNeXt'
    mean, _, rgb = erf.normalisation(cfg)
    assert mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert rgb


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='--num-images'):
        erf.parse_args(['cfg.py', '--demo', '--num-images', '0'])
    with pytest.raises(ValueError, match='--size'):
        erf.parse_args(['cfg.py', '--demo', '--size', '16'])
    with pytest.raises(ValueError, match='--compare'):
        erf.parse_args(['cfg.py', '--demo', '--compare', 'a', 'b', 'c'])
    with pytest.raises(ValueError, match='--data-root'):
        erf.image_paths(str(tmp_path), 1)
    with pytest.raises(ValueError, match='CONFIG'):
        erf.load_config(str(tmp_path / 'missing.py'))


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------
def run_tool(*args):
    proc = subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_ratios(model):
    for key in ('area_ratios', 'area_ratios_log'):
        ratios = model[key]
        assert list(ratios) == ['20', '30', '50', '99']
        values = list(ratios.values())
        assert all(0 < v <= 1 for v in values)
        assert values == sorted(values)


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp('cfg')
    (root / 'tiny_pelk.py').write_text(PELK_CONFIG)
    (root / 'tiny_convnext.py').write_text(CONVNEXT_CONFIG)
    return root


@pytest.mark.slow
def test_tool_demo_end_to_end(configs, tmp_path):
    out = tmp_path / 'erf.png'
    result = run_tool(configs / 'tiny_pelk.py', '--demo', '--num-images', 2,
                      '--size', 64, '--out', out, '--json')
    model, = result['models']
    assert model['backbone'] == 'PeLK'
    assert model['weights'] == 'random init'
    assert model['num_images'] == 2 and model['size'] == 64
    check_ratios(model)
    image = mpimg.imread(out)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) > 100


@pytest.mark.slow
def test_tool_compare_data_root_end_to_end(configs, tmp_path):
    images = tmp_path / 'images' / 'sub'
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 80, 3),
                                     np.uint8)).save(images / f'{i}.png')
    torch.manual_seed(0)
    torch.save(PeLK(arch=TINY_ARCH).state_dict(), tmp_path / 'pelk.pth')
    single, compare = tmp_path / 'single.png', tmp_path / 'compare.png'
    run_tool(configs / 'tiny_pelk.py', tmp_path / 'pelk.pth', '--data-root',
             tmp_path / 'images', '--num-images', 2, '--size', 64, '--out',
             single, '--json')
    result = run_tool(configs / 'tiny_pelk.py', tmp_path / 'pelk.pth',
                      '--data-root', tmp_path / 'images', '--num-images', 2,
                      '--size', 64, '--out', compare, '--json', '--compare',
                      configs / 'tiny_convnext.py')
    pelk, convnext = result['models']
    assert pelk['weights'].endswith('pelk.pth')
    assert (convnext['backbone'], convnext['weights']) == ('ConvNeXt',
                                                           'random init')
    check_ratios(pelk)
    check_ratios(convnext)
    one, two = mpimg.imread(single), mpimg.imread(compare)
    assert two.shape[0] == pytest.approx(one.shape[0], rel=0.1)
    assert two.shape[1] > 1.7 * one.shape[1]  # two panels side by side
