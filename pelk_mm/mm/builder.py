"""Config -> model: the one way the tools, benchmarks, demo and tests load
configs and build their models.

:func:`load_config` reads a config (a file, or a package config such as
``mmpretrain::convnext/convnext-tiny_32xb128_in1k.py``) and applies
``--cfg-options``; :func:`build_model` builds its ``model`` (or a part of
it, e.g. ``'model.backbone'``) under the config's ``default_scope``, so that
mmseg / mmdet / mmpretrain configs resolve their own registries.
:func:`save_initial_checkpoint` writes a config's initial weights, as
``tools/demo.sh`` evaluates the untrained model.
"""
import copy
import logging
import os.path as osp
from typing import Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.logging import MMLogger
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import set_random_seed


def load_config(config: Union[str, Config],
                cfg_options: Optional[dict] = None) -> Config:
    """A config, with ``cfg_options`` merged in.

    Args:
        config (str | Config): A config file, a package config
            ``'<package>::<path in its configs>'``, or a loaded config
            (copied, not changed).
        cfg_options (dict, optional): ``{dotted key: value}`` overrides, as
            ``--cfg-options`` gives them.

    Raises:
        ValueError: ``config`` is neither an existing file nor a package
            config.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif osp.isfile(config):
        cfg = Config.fromfile(config)
    elif '::' in config:
        cfg = get_config(config)
    else:
        raise ValueError(f'CONFIG must be a config file or a package config '
                         f'such as mmpretrain::convnext/'
                         f'convnext-tiny_32xb128_in1k.py, got {config!r}')
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def build_model(config: Union[str, Config],
                cfg_options: Optional[dict] = None,
                part: str = 'model',
                seed: Optional[int] = None,
                init_weights: bool = False) -> nn.Module:
    """Build a config's ``model`` (or ``part`` of it) in eval mode.

    Args:
        config (str | Config): See :func:`load_config`.
        cfg_options (dict, optional): See :func:`load_config`.
        part (str): Dotted key of the config to build, e.g.
            ``'model.backbone'``. Defaults to ``'model'``.
        seed (int, optional): Seed of every random generator
            (``mmengine.runner.set_random_seed``) right before building.
        init_weights (bool): Call ``init_weights()`` (with its per-parameter
            log lines silenced). Otherwise the weights are those of the
            modules' constructors. Defaults to False.

    Returns:
        nn.Module: The model in eval mode (``train()`` it to train).

    Raises:
        ValueError: the config has no ``part``.
    """
    cfg = load_config(config, cfg_options)
    node = cfg
    for key in part.split('.'):
        if key not in node:
            raise ValueError(f'the config has no {part} (no {key!r} in '
                             f'{sorted(node)})')
        node = node[key]
    init_default_scope(cfg.get('default_scope') or 'mmengine')
    if seed is not None:
        set_random_seed(seed)
    model = MODELS.build(node)
    if init_weights:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # one line per parameter otherwise
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    model.eval()  # some backbones' train() returns None: no chaining
    return model


def save_initial_checkpoint(config: str, out: str, seed: int = 0) -> None:
    """Save a config's initial weights (``init_weights`` after ``seed``).

    Writes ``{'state_dict': ..., 'meta': {}}`` to ``out``, a checkpoint that
    ``tools/test.py CONFIG OUT`` evaluates as the untrained model.
    """
    model = build_model(config, seed=seed, init_weights=True)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out)
