"""Importing pelk_mm registers the plugin where mmseg, mmdet, mmpretrain look.

Everything is registered once, in mmengine's root registries; each library's
registries reach it as their parent, so ``type='PeLK'`` builds under every
``default_scope``. Checked the way users load the plugin: through
``custom_imports`` in a config, in a fresh interpreter.
"""
import importlib
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

import pelk_mm
from helpers import ROOT, TINY_ARCH


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet', 'mmpretrain'])
def test_registered_under_every_scope(scope):
    registry = importlib.import_module(f'{scope}.registry')
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        # the registry itself under test: not pelk_mm.models.build_model
        backbone = registry.MODELS.build(
            dict(type='PeLK', arch=TINY_ARCH, out_indices=3))
        assert isinstance(backbone, pelk_mm.PeLK)
        assert backbone(torch.randn(1, 3, 32, 32))[0].shape == (1, 40)
        assert registry.HOOKS.get('DynamicSparsityHook') is \
            pelk_mm.DynamicSparsityHook
        assert registry.HOOKS.get('PeLKArchMetaHook') is \
            pelk_mm.PeLKArchMetaHook
        assert registry.OPTIM_WRAPPER_CONSTRUCTORS.get(
            'PeLKLearningRateDecayOptimizerConstructor') is \
            pelk_mm.PeLKLearningRateDecayOptimizerConstructor


def test_readme_names_everything_registered():
    """The README's paragraph on what ``import pelk_mm`` registers names
    every class that pelk_mm registers in mmengine's root registries."""
    import mmengine.registry as root
    registered = {
        name
        for registry in vars(root).values()
        if isinstance(registry, root.Registry)
        for name, cls in registry.module_dict.items()
        if cls.__module__.startswith('pelk_mm')
    }
    assert {'PeLK', 'DynamicSparsityHook', 'PeLKArchMetaHook'} <= registered
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        paragraphs = f.read().split('\n\n')
    listing = [p for p in paragraphs if 'registers' in p and '`PeLK`' in p]
    assert len(listing) == 1
    assert sorted(n for n in registered if f'`{n}`' not in listing[0]) == []


@pytest.mark.slow
def test_repeated_custom_imports_do_not_raise(tmp_path):
    """In a fresh interpreter (so that the first import really registers):
    two configs with ``custom_imports``, mmengine's own import helper again
    and an ``importlib.reload`` of the package must not raise mmengine's
    ``KeyError: ... is already registered``, and ``type='PeLK'`` must still
    build the one registered class."""
    configs = []
    for name in ('first', 'second'):
        cfg = tmp_path / f'{name}.py'
        cfg.write_text(
            textwrap.dedent(f"""
            custom_imports = dict(imports=['pelk_mm'],
                                  allow_failed_imports=False)
            backbone = dict(type='PeLK', arch={TINY_ARCH!r})
        """))
        configs.append(str(cfg))
    # builds through MODELS, not build_model: the registration is under test
    script = textwrap.dedent(f"""
        import importlib
        import sys
        from mmengine.config import Config
        from mmengine.registry import MODELS
        from mmengine.utils import import_modules_from_strings
        assert 'pelk_mm' not in sys.modules
        first = Config.fromfile({configs[0]!r})  # imports and registers
        import pelk_mm
        registered = MODELS.get('PeLK')
        assert registered is pelk_mm.PeLK
        second = Config.fromfile({configs[1]!r})
        assert import_modules_from_strings(['pelk_mm']) == [pelk_mm]
        importlib.reload(pelk_mm)
        assert MODELS.get('PeLK') is registered
        for cfg in (first, second):
            assert type(MODELS.build(cfg.backbone)) is registered
        print('ok')
    """)
    out = subprocess.run([sys.executable, '-c', script],
                         capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == 'ok'


@pytest.mark.slow
def test_custom_imports_in_a_fresh_interpreter(tmp_path):
    """A user's own config that only adds custom_imports finds ``PeLK``."""
    cfg = tmp_path / 'user_cfg.py'
    cfg.write_text(
        textwrap.dedent(f"""
        custom_imports = dict(imports=['pelk_mm'], allow_failed_imports=False)
        default_scope = 'mmseg'
        backbone = dict(type='PeLK', arch={TINY_ARCH!r})
    """))
    # a user's own code path (Config, scope, MODELS), not build_model
    script = textwrap.dedent(f"""
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS
        cfg = Config.fromfile({str(cfg)!r})  # imports pelk_mm
        init_default_scope(cfg.default_scope)
        print(type(MODELS.build(cfg.backbone)).__name__)
    """)
    out = subprocess.run([sys.executable, '-c', script],
                         capture_output=True,
                         text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == 'PeLK'


def test_mm_base_configs_resolve():
    """``mmseg::`` / ``mmdet::`` bases need pkg_resources (setuptools < 81)."""
    from mmengine.config import Config
    seg = Config.fromstring(
        "_base_ = ['mmseg::_base_/models/upernet_convnext.py']\n", '.py')
    assert seg.model.decode_head.type == 'UPerHead'
    det = Config.fromstring(
        "_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py']\n",
        '.py')
    assert det.model.type == 'CascadeRCNN'
