"""tools/train.py and tools/test.py stop at once on missing checkpoints.

A missing local checkpoint (a ``Pretrained`` init_cfg, ``load_from``, the
CHECKPOINT of tools/test.py) is reported before the runner, the model or the
datasets are built: a message on stderr that says how to go on, exit status
2, no traceback. The shared plumbing (tools/launch_utils.py) is exercised
in-process with the exact command the message prints.
"""
import os.path as osp
import shlex
import subprocess
import sys

import pytest
from mmengine.config import Config

from helpers import ROOT, load_tool

TOOLS = osp.join(ROOT, 'tools')
PY = sys.executable
SEG_T_CFG = osp.join(ROOT, 'configs', 'upernet_pelk_t_ade20k.py')


def run_tool(tool, *args, cwd):
    """Run a tool from ``cwd``; (exit status, stdout, stderr)."""
    proc = subprocess.run([PY, osp.join(TOOLS, tool), *args],
                          cwd=cwd,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE,
                          text=True,
                          timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def tools_path(monkeypatch):
    """tools/ importable as the tools import each other; LOCAL_RANK kept."""
    monkeypatch.syspath_prepend(TOOLS)
    monkeypatch.setenv('LOCAL_RANK', '0')


@pytest.mark.slow
def test_train_without_backbone_checkpoint_stops_at_once(
        tmp_path, monkeypatch, tools_path):
    """The headline config in a fresh directory (no checkpoints/)."""
    code, out, err = run_tool('train.py', SEG_T_CFG, cwd=tmp_path)
    assert code == 2, err[-3000:]
    assert 'Traceback' not in err
    assert not (tmp_path / 'work_dirs').exists()  # no runner was built
    assert (
        "train.py: error: model.backbone.init_cfg.checkpoint "
        "'checkpoints/pelk_t_in1k_backbone.pth' does not exist. Either") in err
    lines = [line.strip() for line in err.splitlines()]
    train, cls_config = osp.join(TOOLS,
                                 'train.py'), osp.join(ROOT, 'configs',
                                                       'pelk_t_in1k.py')
    converter = osp.join(TOOLS, 'model_converters', 'cls2backbone.py')
    # (1) train the ImageNet backbone and convert it
    assert f'python {train} {cls_config}' in lines
    assert (f'python {converter} '
            '"$(cat work_dirs/pelk_t_in1k/last_checkpoint)" '
            'checkpoints/pelk_t_in1k_backbone.pth --arch tiny') in lines
    assert osp.isfile(cls_config) and osp.isfile(converter)
    # (2) train from scratch, with the exact option
    scratch = (f'python {train} {SEG_T_CFG} '
               '--cfg-options model.backbone.init_cfg=None')
    assert scratch in lines

    # That command is accepted: the option merges to init_cfg=None and the
    # run gets past the check (in-process, with tools/train.py's own parser).
    import launch_utils
    train_tool = load_tool('train.py')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', shlex.split(scratch)[1:])
    args = train_tool.get_args()
    cfg = train_tool.merge_args(launch_utils.config_from_args(args), args)
    assert cfg.model.backbone.init_cfg is None
    assert cfg.model.backbone.arch == 'tiny'
    launch_utils.check_checkpoints(cfg)  # no SystemExit


@pytest.mark.slow
def test_test_tool_missing_checkpoint(tmp_path):
    code, _, err = run_tool(
        'test.py', SEG_T_CFG, 'work_dirs/missing/iter_80000.pth', cwd=tmp_path)
    assert code == 2
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1] == (
        "test.py: error: checkpoint 'work_dirs/missing/iter_80000.pth' "
        'does not exist')


def test_check_checkpoints(tmp_path, monkeypatch, capsys, tools_path):
    """load_from, nested and listed init_cfgs; URLs and existing files pass."""
    from launch_utils import check_checkpoints
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['tools/train.py', 'my_config.py'])
    (tmp_path / 'here.pth').write_bytes(b'')
    fine = Config(
        dict(
            model=dict(
                backbone=dict(
                    type='ResNet',
                    init_cfg=dict(
                        type='Pretrained',
                        checkpoint='torchvision://resnet50')),
                neck=dict(
                    init_cfg=dict(type='Pretrained', checkpoint='here.pth')),
                head=dict(
                    init_cfg=dict(
                        type='Pretrained', checkpoint='https://x/y.pth'))),
            load_from='open-mmlab://resnet50_v1c'))
    check_checkpoints(fine)  # no SystemExit

    broken = Config(
        dict(
            model=dict(
                backbone=dict(type='ResNet', init_cfg=None),
                roi_head=dict(bbox_head=[
                    dict(init_cfg=[
                        dict(type='Normal', layer='Linear'),
                        dict(type='Pretrained', checkpoint='gone_a.pth')
                    ]),
                    dict(
                        init_cfg=dict(
                            type='Pretrained', checkpoint='gone_b.pth'))
                ])),
            load_from='gone_c.pth'))
    with pytest.raises(SystemExit) as error:
        check_checkpoints(broken)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert ("model.roi_head.bbox_head.0.init_cfg.1.checkpoint 'gone_a.pth' "
            'does not exist.') in err
    assert ("model.roi_head.bbox_head.1.init_cfg.checkpoint 'gone_b.pth' "
            'does not exist.') in err
    assert ('python tools/train.py my_config.py --cfg-options '
            'model.roi_head.bbox_head.1.init_cfg=None') in err
    assert "load_from 'gone_c.pth'" in err


def test_train_resume_missing_checkpoint(tmp_path, monkeypatch, capsys,
                                         tools_path):
    """``--resume CKPT`` sets load_from; a missing CKPT stops the run."""
    from launch_utils import check_checkpoints, config_from_args
    train_tool = load_tool('train.py')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', [
        'tools/train.py', SEG_T_CFG, '--resume', 'gone.pth', '--cfg-options',
        'model.backbone.init_cfg=None'
    ])
    args = train_tool.get_args()
    cfg = train_tool.merge_args(config_from_args(args), args)
    assert cfg.resume is True and cfg.load_from == 'gone.pth'
    with pytest.raises(SystemExit) as error:
        check_checkpoints(cfg)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "train.py: error: load_from 'gone.pth'" in err
    assert 'init_cfg' not in err  # the init_cfg=None option was merged
