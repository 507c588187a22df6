"""Bad inputs that get a clear error naming what is wrong and what is allowed:
a checkpoint file that is truncated or not a checkpoint (on every path that
reads one), an image smaller than the network's stem and downsampling
allow, and a stochastic depth rate outside [0, 1)."""
import argparse
import pickle

import pytest
import torch
from mmengine.runner import CheckpointLoader, load_checkpoint

import pelk_mm  # noqa: F401  (mmengine's loaders on torch >= 2.6)
from pelk_mm import PeLK
from pelk_mm.checkpoint import UnreadableCheckpoint, load_backbone
from pelk_mm.checkpoint.reading import TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT
from helpers import TINY_ARCH


# ------------------------------------------------ unreadable checkpoints
@pytest.fixture
def unreadable(tmp_path):
    """A truncated checkpoint (half of a real one), an HTML page saved as
    .pth and an empty file."""
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': PeLK(TINY_ARCH).state_dict()}, good)
    data = good.read_bytes()
    files = dict(
        truncated=data[:len(data) // 2],
        html=b'<html><body>404 Not Found</body></html>\n',
        empty=b'')
    paths = []
    for name, content in files.items():
        path = tmp_path / f'{name}.pth'
        path.write_bytes(content)
        paths.append(str(path))
    return paths


def check_unreadable(error, path):
    message = str(error.value)
    assert message.startswith(f'{path} (')
    assert 'is not a readable checkpoint' in message
    assert 'partial download' in message
    assert 'weights_only' not in message  # no advice to unpickle anything


@pytest.mark.skipif(
    not TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT,
    reason=f'torch {torch.__version__}: mmengine\'s loaders are left as they '
    'are (pelk_mm.engine.compat): torch.load is not weights-only by default, '
    'so its errors do not advise weights_only=False')
def test_unreadable_checkpoint_through_mmengine_loader(unreadable):
    for path in unreadable:
        with pytest.raises(UnreadableCheckpoint) as error:
            CheckpointLoader.load_checkpoint(path, map_location='cpu')
        check_unreadable(error, path)
        with pytest.raises(UnreadableCheckpoint) as error:
            load_checkpoint(PeLK(TINY_ARCH), path)  # load_from, tools/test.py
        check_unreadable(error, path)


def test_unreadable_checkpoint_through_pretrained_and_tools(unreadable):
    for path in unreadable:
        model = PeLK(
            TINY_ARCH,
            init_cfg=dict(
                type='Pretrained', checkpoint=path, prefix='backbone.'))
        with pytest.raises(UnreadableCheckpoint) as error:
            model.init_weights()
        check_unreadable(error, path)
        with pytest.raises(UnreadableCheckpoint) as error:
            load_backbone(PeLK(TINY_ARCH), path)
        check_unreadable(error, path)


@pytest.mark.skipif(
    not TORCH_LOAD_WEIGHTS_ONLY_BY_DEFAULT,
    reason=f'torch {torch.__version__}: mmengine loads checkpoints with the '
    'full unpickler (weights_only is the default from torch 2.6), so nothing '
    'is refused')
def test_readable_file_with_refused_object_keeps_torchs_error(tmp_path):
    """A complete file whose content weights_only refuses is not called
    unreadable: torch's error names the object."""
    path = tmp_path / 'namespace.pth'
    torch.save({'state_dict': {}, 'args': argparse.Namespace(lr=1)}, path)
    with pytest.raises(pickle.UnpicklingError, match='argparse.Namespace'):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def test_missing_checkpoint_keeps_its_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'absent.pth'))


# --------------------------------------------------------- input size
def test_image_smaller_than_the_network_allows():
    torch.manual_seed(0)
    model = PeLK(TINY_ARCH).eval()
    assert model.min_input_size == 32  # stem patch 4, then 3 halvings
    assert model(torch.randn(1, 3, 32, 40))[0].shape == (1, 40)
    for shape in [(31, 64), (64, 31), (3, 3)]:
        with pytest.raises(ValueError) as error:
            model(torch.randn(1, 3, *shape))
        assert str(error.value) == (
            'PeLK needs inputs of at least 32x32 pixels (stem patch 4, then '
            f'3 halvings), got {shape}')
    small_stem = PeLK(TINY_ARCH, stem_patch_size=2).eval()
    assert small_stem.min_input_size == 16
    assert small_stem(torch.randn(1, 3, 16, 16))[0].shape == (1, 40)
    with pytest.raises(ValueError, match='at least 16x16 pixels'):
        small_stem(torch.randn(1, 3, 15, 16))


# ------------------------------------------------------ drop_path_rate
@pytest.mark.parametrize('rate', [2.0, 1.0, -0.1])
def test_drop_path_rate_out_of_range(rate):
    with pytest.raises(ValueError) as error:
        PeLK(TINY_ARCH, drop_path_rate=rate)
    assert str(
        error.value) == (f'`drop_path_rate` must be in [0, 1), got {rate!r}')


def test_drop_path_rate_in_range_reaches_the_last_block():
    model = PeLK(TINY_ARCH, drop_path_rate=0.3)
    rates = [
        getattr(block.drop_path, 'drop_prob', 0.) for stage in model.stages
        for block in stage
    ]
    assert rates[0] == 0. and rates[-1] == pytest.approx(0.3)
