"""Exported backbones in onnxruntime: PeLK-T (structured and dense deploy
forms) against mmpretrain's ConvNeXt-T, in one run.

Models, each a backbone with four outputs (``out_indices=(0, 1, 2, 3)``, no
pooling: what UperNet / Cascade Mask R-CNN read), random weights:

- ``pelk``: PeLK-T, ``switch_to_deploy()`` with ``deploy_mode='structured'``
  (band sums in standard ONNX operators, :mod:`pelk_mm.ops.boxsum_conv`);
- ``pelk-dense``: the same weights folded with ``deploy_mode='dense'``
  (depthwise 51 / 49 / 47 / 13 convs);
- ``convnext``: mmpretrain ConvNeXt-T (depthwise 7x7 convs).

Each is exported at every ``--sizes`` H x W as ``tools/deployment/
pytorch2onnx.py`` exports (its exporter choice, opset 17, dynamic batch) and
run by onnxruntime's CPU provider with ``--threads`` intra-op threads on a
``(1, 3, H, W)`` input. Per size, the models are interleaved (the order
rotates every round) over ``--iters`` rounds after one warm-up each, and the
medians and their ratios are reported; the machine may be shared, so the
ratios of one run are what to compare. The structured and dense exports'
outputs are compared with each other (max abs error / max abs value) at every
size. ``--save DIR`` writes ``DIR/onnx_cpu_<date>.json`` with the UTC time,
the load average before and after, the versions and every timing.

Example::

    python benchmarks/bench_onnx.py --save benchmarks/results
    python benchmarks/bench_onnx.py --sizes 224 224 --iters 2
"""
import argparse
import importlib.util
import logging
import os.path as osp
import statistics
import sys
import tempfile
import time

import torch
from run_record import run_record, run_start, save_result, with_run_line

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = ('pelk', 'pelk-dense', 'convnext')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--sizes',
        type=int,
        nargs='+',
        default=[224, 224, 512, 512, 512, 2048],
        metavar='H W',
        help='input sizes as H W pairs (default 224x224, 512x512, '
        '512x2048: an ADE20K test image at full width)')
    parser.add_argument(
        '--iters',
        type=int,
        default=3,
        help='timed rounds per size (after one warm-up)')
    parser.add_argument(
        '--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument(
        '--save', metavar='DIR', help='write DIR/onnx_cpu_<date>.json')
    args = parser.parse_args(argv)
    if len(args.sizes) % 2:
        parser.error('--sizes takes H W pairs')
    args.sizes = list(zip(args.sizes[::2], args.sizes[1::2]))
    return args


def export_tool():
    spec = importlib.util.spec_from_file_location(
        'pytorch2onnx', osp.join(ROOT, 'tools/deployment/pytorch2onnx.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_backbones(names):
    """The backbones of ``names`` in eval mode; both PeLK forms share the
    weights of one randomly initialised PeLK-T."""
    from mmengine.logging import MMLogger
    from mmpretrain.models import ConvNeXt

    from pelk_mm import PeLK
    torch.manual_seed(0)
    kwargs = dict(out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    models = {}
    if {'pelk', 'pelk-dense'} & set(names):
        source = PeLK(arch='tiny', init_cfg=None, **kwargs)
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)  # init_weights logs every tensor
        source.init_weights()
        logger.setLevel(level)
        for name, mode in (('pelk', 'structured'), ('pelk-dense', 'dense')):
            if name in names:
                model = PeLK(arch='tiny', deploy_mode=mode, **kwargs)
                model.load_state_dict(source.state_dict())
                model.switch_to_deploy()
                models[name] = model
    if 'convnext' in names:
        models['convnext'] = ConvNeXt(arch='tiny', **kwargs)
    for model in models.values():
        model.eval()  # mmpretrain's ConvNeXt.train returns None
    return {name: models[name] for name in names}


def export(model, size, path, tool, dynamic=True):
    """Export a backbone as ``pytorch2onnx.py`` does (opset, exporter),
    with a dynamic batch axis or, ``dynamic=False``, all shapes static."""
    dummy = torch.randn(1, 3, *size)
    names = [f'feat{i}' for i in range(4)]
    with torch.no_grad():
        torch.onnx.export(
            model, (dummy, ),
            path,
            input_names=['input'],
            output_names=names,
            dynamic_axes={n: {
                0: 'batch'
            }
                          for n in ['input', *names]} if dynamic else None,
            opset_version=tool.OPSET,
            **tool.exporter_kwargs())


def session(path, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])


def relative_error(outputs, references):
    return max(
        float(abs(o - r).max() / abs(r).max())
        for o, r in zip(outputs, references))


def time_size(models, size, args, tool, workdir):
    """Median seconds per model at ``size``, interleaved; and the error of
    the structured export against the dense one."""
    import numpy as np
    sessions = {}
    for name, model in models.items():
        path = osp.join(workdir, f'{name}_{size[0]}x{size[1]}.onnx')
        export(model, size, path, tool)
        sessions[name] = session(path, args.threads)
    x = np.random.default_rng(0).standard_normal((1, 3, *size),
                                                 dtype=np.float32)
    outputs = {n: s.run(None, {'input': x}) for n, s in sessions.items()}
    times = {name: [] for name in models}
    names = list(models)
    for round_ in range(args.iters):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            sessions[name].run(None, {'input': x})
            times[name].append(time.perf_counter() - start)
    row = dict(
        size=list(size),
        median_s={
            n: statistics.median(t)
            for n, t in times.items()
        },
        times_s=times)
    if {'pelk', 'pelk-dense'} <= set(models):
        row['structured_vs_dense_rel_error'] = relative_error(
            outputs['pelk'], outputs['pelk-dense'])
    medians = row['median_s']
    ratios = {}
    if {'pelk', 'convnext'} <= set(models):
        ratios['pelk_over_convnext'] = medians['pelk'] / medians['convnext']
    if {'pelk-dense', 'convnext'} <= set(models):
        ratios['dense_over_convnext'] = (
            medians['pelk-dense'] / medians['convnext'])
    if {'pelk', 'pelk-dense'} <= set(models):
        ratios['pelk_over_dense'] = medians['pelk'] / medians['pelk-dense']
    row['ratios'] = ratios
    return row


def markdown(result):
    names = result['models']
    lines = [
        '| H x W | ' + ' | '.join(f'{n} ms' for n in names) +
        ' | pelk / convnext | pelk / dense |', '|---' * (len(names) + 3) + '|'
    ]
    for row in result['results']:
        medians, ratios = row['median_s'], row['ratios']
        cells = [f'{medians[n] * 1e3:.0f}' for n in names]
        lines.append(
            f'| {row["size"][0]} x {row["size"][1]} | ' + ' | '.join(cells) +
            f' | {ratios.get("pelk_over_convnext", float("nan")):.2f} | '
            f'{ratios.get("pelk_over_dense", float("nan")):.2f} |')
    return with_run_line(lines, result)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    tool = export_tool()
    started, load_before = run_start()
    models = build_backbones(args.models)
    with tempfile.TemporaryDirectory() as workdir:
        rows = [
            time_size(models, size, args, tool, workdir) for size in args.sizes
        ]
    result = dict(
        run=run_record(
            started,
            load_before,
            threads=args.threads,
            iters=args.iters,
            onnxruntime=ort.__version__,
            exporter=tool.exporter_kwargs() or 'torch.onnx.export default',
            opset=tool.OPSET),
        models=list(args.models),
        results=rows)
    print(markdown(result))
    if args.save:
        print(f'saved {save_result(result, args.save, "onnx_cpu", started)}')


if __name__ == '__main__':
    sys.exit(main())
