"""Parameters (dense and effective under a sparsity mask) and FLOPs of a model.

Works with mmpretrain, mmseg and mmdet configs: the model is built under the
config's ``default_scope`` and FLOPs are counted by ``mmengine.analysis`` on
one forward in ``'tensor'`` mode (backbone + heads, as the downstream tools
of each library count them). A segmentor's auxiliary head, which does not run
at inference, is dropped before counting parameters and FLOPs, as mmseg's
``get_flops.py`` does.
Peripheral convolutions are counted with their dense implementation, i.e. as
the ``K x K`` depthwise convolution they compute (the paper's convention).
For mmdet two-stage detectors this is mmdet 3.x's ``'tensor'`` forward, in
which the mask heads run on every RPN proposal (mmdet 2.x's
``forward_dummy``, behind the FLOPs most papers print, ran them on 100), so
detector totals come out higher than those papers'; ``flops_backbone_G``
is comparable.

Effective parameters: ``--sparsity`` of every 2-D / 4-D weight of the
backbone (and of a classifier's ``head``) is counted as removed, with masks
from :class:`pelk_mm.SparsityMasks` (the paper: 40 %). Effective FLOPs scale
each masked layer's FLOPs by its density (the sparse-FLOPs convention of
SLaK); ``flops_G`` is the dense count.

Example (an UperNet config at the paper's 2048x512)::

    python tools/analysis_tools/get_flops.py CONFIG --shape 512 2048 --json
"""
import argparse
import json
import logging
from functools import partial

import torch
from mmengine import DictAction
from mmengine.analysis import FlopAnalyzer
from mmengine.logging import MMLogger

import pelk_mm
from pelk_mm import PeripheralConv2d, SparsityMasks, count_parameters
from pelk_mm.mm.builder import build_model, load_config

# Input (H, W) of the paper's FLOPs per library: ImageNet 224x224, UperNet
# 2048x512, Cascade Mask R-CNN 1280x800.
DEFAULT_SHAPES = {
    'mmpretrain': (224, 224),
    'mmseg': (512, 2048),
    'mmdet': (800, 1280)
}

# FlopAnalyzer operators whose count is proportional to a weight's entries
WEIGHT_OPS = ('conv', 'linear', 'addmm', 'matmul')


def parse_args():
    parser = argparse.ArgumentParser(
        description='Count dense / effective parameters and FLOPs')
    parser.add_argument(
        'config', help='config file (mmpretrain / mmseg / '
        'mmdet)')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        help='input size H W (or one int for a square); defaults: ' +
        ', '.join(f'{k} {v[0]}x{v[1]}' for k, v in DEFAULT_SHAPES.items()))
    parser.add_argument(
        '--sparsity',
        type=float,
        default=0.4,
        help='fraction of the 2-D / 4-D backbone (and classifier head) '
        'weights counted as removed')
    parser.add_argument(
        '--sparsity-init',
        default='uniform',
        choices=['uniform', 'ERK'],
        help='per-layer densities of the counting mask (same total)')
    parser.add_argument(
        '--json', action='store_true', help='print one JSON object')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, xxx=yyy format')
    return parser.parse_args()


def input_shape(shape, scope):
    if shape is None:
        return DEFAULT_SHAPES.get(scope, (224, 224))
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return tuple(shape)
    raise ValueError(f'--shape takes H W or one int, got {shape}')


def data_samples(scope, height, width):
    """Data samples carrying the metainfo a ``'tensor'`` forward reads."""
    meta = dict(
        img_shape=(height, width),
        ori_shape=(height, width),
        pad_shape=(height, width),
        batch_input_shape=(height, width),
        scale_factor=(1., 1.))
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample
        return [SegDataSample(metainfo=meta)]
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    return None


def get_flops(cfg, shape, sparsity=0.4, sparsity_init='uniform'):
    """Build ``cfg.model`` and count its parameters and FLOPs.

    Returns:
        dict: ``params_dense_M``, ``params_effective_M``, ``flops_G``,
        ``flops_effective_G``, ``flops_backbone_G`` (dense) and the settings
        they were measured with.
    """
    scope = cfg.get('default_scope')
    height, width = input_shape(shape, scope)
    model = build_model(cfg)
    if getattr(model, 'auxiliary_head', None) is not None:
        model.auxiliary_head = None

    masks = SparsityMasks.init(
        model,
        sparsity=sparsity,
        init=sparsity_init,
        include=(r'backbone\.', r'head\.'),
        generator=torch.Generator().manual_seed(0))
    params = count_parameters(model, masks)

    for module in model.modules():
        if isinstance(module, PeripheralConv2d):
            module.impl = 'dense'
    samples = data_samples(scope, height, width)
    if samples is not None:
        model.forward = partial(model.forward, data_samples=samples)
    inputs = torch.rand(1, 3, height, width)
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        flops = analyzer.total()
        flops_by_op = analyzer.by_module_and_operator()
    # A pruned weight removes its multiply-adds: scale the weight ops of each
    # masked module by the weight's density (SLaK's sparse-FLOPs convention).
    pruned_flops = 0.
    for name, mask in masks.masks.items():
        ops = flops_by_op[name.rsplit('.', 1)[0]]
        density = mask.float().mean().item()
        pruned_flops += sum(ops[op] for op in WEIGHT_OPS) * (1 - density)
    return dict(
        config=cfg.filename,
        model=cfg.model.get('type'),
        backbone=cfg.model.get('backbone', {}).get('type'),
        input_shape=[height, width],
        sparsity=sparsity,
        params_dense_M=params['dense'] / 1e6,
        params_effective_M=params['effective'] / 1e6,
        flops_G=flops / 1e9,
        flops_effective_G=(flops - pruned_flops) / 1e9,
        flops_backbone_G=analyzer.total('backbone') / 1e9)


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    # the FLOP counter warns about every op it skips (shapes, indexing)
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    result = get_flops(cfg, args.shape, args.sparsity, args.sparsity_init)
    if args.json:
        print(json.dumps(result))
        return
    split = '=' * 40
    print(f'{split}\nConfig: {result["config"]} (pelk_mm '
          f'{pelk_mm.__version__})\nModel: {result["model"]} / '
          f'{result["backbone"]}\nInput shape: '
          f'{result["input_shape"][0]}x{result["input_shape"][1]}\n'
          f'Flops (dense): {result["flops_G"]:.2f} G\n'
          f'Flops (effective): {result["flops_effective_G"]:.2f} G\n'
          f'Params (dense): {result["params_dense_M"]:.2f} M\n'
          f'Params (effective, {result["sparsity"]:.0%} sparsity): '
          f'{result["params_effective_M"]:.2f} M\n{split}')


if __name__ == '__main__':
    main()
