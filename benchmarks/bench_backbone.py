"""UperNet + PeLK-T against UperNet + ConvNeXt-T: train step and inference.

Models, built from the project's and mmseg's configs with BN instead of
SyncBN and no pretrained weights, all timed in one run:

- ``pelk``: UperNet + PeLK-T (``configs/_base_/models/upernet_pelk.py``),
  the peripheral convs with ``impl='auto'``;
- ``pelk-dense``: the same with ``impl='dense'`` (expand + ``F.conv2d``);
- ``pelk-identity``: the same with every peripheral conv replaced by the
  identity, so ``pelk - pelk-identity`` is the time spent in the
  large-kernel convolutions;
- ``convnext``: UperNet + ConvNeXt-T (mmpretrain backbone in mmseg's
  ``convnext-tiny_upernet`` config).

A train step is ``loss`` forward (decode + auxiliary heads) + backward + AdamW
step, under ``--amp`` autocast if given (fp16 with a ``GradScaler``); inference
is the ``mode='tensor'`` forward under ``no_grad`` (and the same autocast) on a
whole ``--infer-size`` image (e.g. ``512 2048``, an ADE20K test image, in one
piece rather than mmseg's sliding window). Times are medians over ``--iters``
repetitions in which the models are interleaved; on CUDA each is bracketed by
``torch.cuda.synchronize``. ``--amp-steps N`` also trains PeLK-T
(``impl='auto'``) N steps under fp16 and under bf16 autocast and reports the
losses and whether all are finite. Peak memory is that of one more train step /
inference per model, after the timed ones: on CPU the process's peak RSS during
the step minus its RSS just before it (Linux ``VmHWM`` after resetting it
through ``/proc/self/clear_refs``, and ``VmRSS``), i.e. the step's own peak
above the resident model, optimizer state and allocator caches; on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.

On CPU the ``pelk-dense`` step at 512x512 takes about a minute; use
``--size 256`` for a quick run.

Examples::

    python benchmarks/bench_backbone.py --size 256 --iters 2
    python benchmarks/bench_backbone.py --size 512 --json
    python benchmarks/bench_backbone.py --modes hook --iters 2
    python benchmarks/bench_backbone.py --device cuda --amp bf16 \
        --infer-size 512 2048 --amp-steps 20 --save results/backbone_cuda
"""
import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time

import torch

MODELS = ('pelk', 'pelk-dense', 'pelk-identity', 'convnext')
AMP_DTYPES = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
PELK_CONFIG = 'configs/_base_/models/upernet_pelk.py'  # PeLK-T
CONVNEXT_CONFIG = ('convnext/'
                   'convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--size', type=int, default=512)
    parser.add_argument(
        '--batch',
        type=int,
        default=2,
        help='per-device batch of mmseg 8xb2 configs; >= 2 '
        '(BN in the pyramid pooling needs it)')
    parser.add_argument(
        '--iters',
        type=int,
        default=2,
        help='timed repetitions (after one warm-up)')
    parser.add_argument(
        '--models', nargs='+', default=list(MODELS), choices=MODELS)
    parser.add_argument(
        '--modes',
        nargs='+',
        default=['train', 'infer'],
        choices=['train', 'infer', 'hook'],
        help="'hook': the DynamicSparsityHook's per-step and "
        'update cost on UperNet + PeLK-T, as a fraction of '
        'its train step (see time_sparsity_hook)')
    parser.add_argument(
        '--no-memory',
        action='store_true',
        help='skip the peak-memory measurement')
    parser.add_argument(
        '--amp',
        default='none',
        choices=sorted(AMP_DTYPES),
        help='autocast dtype of the timed train step and '
        'inference (fp16 with a GradScaler); default none')
    parser.add_argument(
        '--infer-size',
        type=int,
        nargs=2,
        default=None,
        metavar=('H', 'W'),
        help='image of the timed inference (whole-image '
        'forward), e.g. 512 2048 as an ADE20K test image; '
        'default --size x --size')
    parser.add_argument(
        '--amp-steps',
        type=int,
        default=0,
        help='also train PeLK-T (auto) this many steps under '
        'fp16 and bf16 autocast and report whether every '
        'loss is finite (0: skip)')
    parser.add_argument('--json', action='store_true')
    parser.add_argument(
        '--save',
        metavar='PREFIX',
        help='also write PREFIX.json and PREFIX.md')
    return parser.parse_args(argv)


def _identity_conv(x, weight, grid):
    return x


def build_model(name, device):
    """Build one of :data:`MODELS` in train mode on ``device``."""
    from mmengine.utils import get_installed_path

    from pelk_mm.mm.builder import build_model as build_from_config
    from pelk_mm.mm.builder import load_config
    from pelk_mm.ops import PERIPHERAL_CONV_IMPLS
    PERIPHERAL_CONV_IMPLS.setdefault('identity', _identity_conv)
    mmseg_configs = f'{get_installed_path("mmsegmentation")}/.mim/configs'
    cfg = load_config(f'{mmseg_configs}/{CONVNEXT_CONFIG}' if name ==
                      'convnext' else PELK_CONFIG)
    cfg.default_scope = 'mmseg'
    cfg.model.backbone.init_cfg = None
    if name != 'convnext':
        cfg.model.backbone.impl = {
            'pelk': 'auto',
            'pelk-dense': 'dense',
            'pelk-identity': 'identity'
        }[name]
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor = None
    model = build_from_config(cfg, seed=0, init_weights=True)
    return model.to(device).train()


def make_batch(args, device):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    samples = []
    for _ in range(args.batch):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(
            data=torch.randint(
                0, 150, (1, args.size, args.size), generator=gen).to(device))
        sample.set_metainfo(
            dict(
                img_shape=(args.size, args.size),
                ori_shape=(args.size, args.size),
                pad_shape=(args.size, args.size)))
        samples.append(sample)
    return inputs.to(device), samples


def amp_context(amp, device):
    """``torch.autocast`` for ``amp`` (a key of :data:`AMP_DTYPES`)."""
    dtype = AMP_DTYPES[amp]
    return (contextlib.nullcontext() if dtype is None else torch.autocast(
        device.type, dtype=dtype))


def grad_scaler(device, enabled):
    """A GradScaler for ``device``: ``torch.amp.GradScaler`` (torch >= 2.3,
    every device); older torch has only CUDA's (``torch.cuda.amp``).

    Raises:
        RuntimeError: fp16 (``enabled``) on a non-CUDA device with torch
            < 2.3, naming the torch version it needs.
    """
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler(device.type, enabled=enabled)
    if enabled and device.type != 'cuda':
        raise RuntimeError(
            f'--amp fp16 on {device.type} needs a GradScaler for that device: '
            f'torch >= 2.3 (torch.amp.GradScaler); this is torch '
            f'{torch.__version__}')
    return torch.cuda.amp.GradScaler(enabled=enabled)


class Runner:
    """One model, its optimizer and the two timed operations."""

    def __init__(self, name, args, device, amp=None):
        self.model = build_model(name, device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.inputs, self.samples = make_batch(args, device)
        self.device, self.amp = device, amp or args.amp
        self.scaler = grad_scaler(device, enabled=self.amp == 'fp16')
        height, width = args.infer_size or (args.size, args.size)
        self.infer_inputs = torch.randn(
            args.batch,
            3,
            height,
            width,
            generator=torch.Generator().manual_seed(1)).to(device)

    def train(self):
        """One step; returns the (detached) total loss."""
        self.model.train()
        with amp_context(self.amp, self.device):
            losses = self.model.loss(self.inputs, self.samples)
            loss, _ = self.model.parse_losses(losses)
        self.optimizer.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def infer(self):
        self.model.eval()
        with torch.no_grad(), amp_context(self.amp, self.device):
            self.model(self.infer_inputs, None, mode='tensor')


def amp_losses(args, device):
    """Train PeLK-T (``impl='auto'``) ``--amp-steps`` steps under fp16 and
    bf16 autocast: ``{amp: [loss, ...]}``."""
    result = {}
    for amp in ('fp16', 'bf16'):
        runner = Runner('pelk', args, device, amp=amp)
        result[amp] = [
            runner.train().float().item() for _ in range(args.amp_steps)
        ]
    return result


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def time_models(args, device):
    """Median times ``{(model, mode): s}`` and, unless ``--no-memory``,
    peak memory ``{(model, mode): MiB}``."""
    runners = {name: Runner(name, args, device) for name in args.models}
    times = {(name, mode): [] for name in args.models for mode in args.modes}
    for rep in range(args.iters + 1):  # the first round is the warm-up
        for mode in args.modes:
            for name in args.models:
                _sync(device)
                start = time.perf_counter()
                getattr(runners[name], mode)()
                _sync(device)
                if rep:
                    times[name, mode].append(time.perf_counter() - start)
    memory = {} if args.no_memory else {
        (name, mode): peak_memory_mib(runners[name], mode, device)
        for mode in args.modes
        for name in args.models
    }
    return {
        key: statistics.median(value)
        for key, value in times.items()
    }, memory


def _proc_status_mib(key):
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # kB


def peak_memory_mib(runner, mode, device):
    """Peak memory of one ``mode`` call above the memory in use before it."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        getattr(runner, mode)()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with open('/proc/self/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')  # reset VmHWM to the current RSS
    base = _proc_status_mib('VmRSS')
    getattr(runner, mode)()
    return _proc_status_mib('VmHWM') - base


def time_sparsity_hook(args, device):
    """The sparsity hook's cost on UperNet + PeLK-T (``impl='auto'``).

    Masks as the downstream configs train from scratch: 40 % of every 2-D /
    4-D backbone weight (``SparsityMasks.init`` with the hook's default
    ``include``; ERK densities, as the per-layer split does not change the
    cost). Timed in one run, medians over ``--iters`` repetitions after one
    warm-up:

    - ``train_step``: forward + backward + AdamW step without the hook;
    - ``per_step``: ``SparsityMasks.mask_grads(model)`` on the gradients of
      a real step, which is all the hook does before every optimizer step
      besides counting it;
    - ``update``: one prune-and-regrow (``SparsityMasks.update``, prune rate
      0.3, random growth, on the last step's gradients, zeroing the pruned
      weights and AdamW moments) plus the density per layer group the hook
      logs after it.

    Returns:
        dict of seconds and the ``per_step`` / ``update`` fractions of
        ``train_step``.
    """
    from pelk_mm.sparsity import SparsityMasks
    runner = Runner('pelk', args, device)
    model, optimizer = runner.model, runner.optimizer
    generator = torch.Generator().manual_seed(0)
    masks = SparsityMasks.init(
        model, sparsity=0.4, init='ERK', generator=generator)
    masks.apply(model, optimizer)

    def timed(fn):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    times = dict(train_step=[], per_step=[], update=[])
    for rep in range(args.iters + 1):  # the first round is the warm-up
        step = timed(runner.train)
        update = timed(
            lambda: (masks.update(model, 0.3, 'random', generator, optimizer),
                     masks.group_counts(model)))
        per_step = timed(lambda: masks.mask_grads(model))
        if rep:
            times['train_step'].append(step)
            times['per_step'].append(per_step)
            times['update'].append(update)
    result = {key: statistics.median(value) for key, value in times.items()}
    result['per_step_fraction'] = result['per_step'] / result['train_step']
    result['update_fraction'] = result['update'] / result['train_step']
    result['masked_weights'] = sum(m.numel() for m in masks.masks.values())
    result['masked_tensors'] = len(masks.masks)
    return result


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    import pelk_mm  # noqa: F401  (registers PeLK)
    if 'hook' in args.modes:
        hook = json.dumps(
            dict(
                sparsity_hook=time_sparsity_hook(args, device),
                device=str(device),
                size=args.size,
                batch=args.batch,
                threads=torch.get_num_threads(),
                torch=torch.__version__),
            indent=1)
        print(hook)
        if args.save:
            with open(f'{args.save}_hook.json', 'w') as out:
                out.write(hook)
        args.modes = [mode for mode in args.modes if mode != 'hook']
        if not args.modes:
            return
    times, memory = time_models(args, device)
    machine = dict(
        device=(torch.cuda.get_device_name(device) if device.type == 'cuda'
                else platform.processor() or platform.machine()),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        size=args.size,
        batch=args.batch,
        iters=args.iters,
        amp=args.amp,
        infer_size=args.infer_size or [args.size, args.size],
        memory=('cuda max_memory_allocated' if device.type == 'cuda' else
                'peak RSS (VmHWM) minus RSS before the step'))
    rows = []
    for mode in args.modes:
        for name in args.models:
            row = dict(
                model=name,
                mode=mode,
                seconds=times[name, mode],
                peak_mib=memory.get((name, mode)))
            if 'pelk' in args.models:
                row['x_pelk'] = times[name, mode] / times['pelk', mode]
            rows.append(row)
    summary = {}
    for mode in args.modes:
        if {'pelk', 'pelk-identity'} <= set(args.models):
            summary[f'{mode}_large_kernel_share'] = 1 - times[
                'pelk-identity', mode] / times['pelk', mode]
        if {'pelk', 'pelk-dense'} <= set(args.models):
            summary[f'{mode}_speedup_vs_dense'] = times['pelk-dense',
                                                        mode] / times['pelk',
                                                                      mode]
        if {'pelk', 'convnext'} <= set(args.models):
            summary[f'{mode}_pelk_over_convnext'] = times[
                'pelk', mode] / times['convnext', mode]
    losses = amp_losses(args, device) if args.amp_steps else {}
    for amp, values in losses.items():
        summary[f'{amp}_losses_finite'] = all(map(math.isfinite, values))
    result = dict(
        machine=machine, results=rows, summary=summary, amp_losses=losses)
    if args.save:
        with open(f'{args.save}.json', 'w') as out:
            json.dump(result, out, indent=1)
        with open(f'{args.save}.md', 'w') as out:
            out.write(markdown_table(result))
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return
    print(markdown_table(result))


def markdown_table(result):
    """The rows as a markdown table, then the summary and the machine."""
    lines = [
        '| mode | model | s / iter | x pelk | peak MiB |',
        '|---|---|---|---|---|'
    ]
    for row in result['results']:
        peak = '' if row['peak_mib'] is None else f'{row["peak_mib"]:.0f}'
        lines.append(f'| {row["mode"]} | {row["model"]} | '
                     f'{row["seconds"]:.4g} | '
                     f'{row.get("x_pelk", float("nan")):.2f} | {peak} |')
    lines.append('')
    for key, value in result['summary'].items():
        shown = value if isinstance(value, bool) else f'{value:.3f}'
        lines.append(f'- {key}: {shown}')
    lines.append(f'- machine: {json.dumps(result["machine"])}')
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
