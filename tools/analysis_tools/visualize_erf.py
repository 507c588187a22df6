"""Effective receptive field (ERF) of a backbone, measured as RepLKNet does.

    python tools/analysis_tools/visualize_erf.py CONFIG [CKPT] \
        (--data-root DIR | --demo) [--num-images 50] [--size 1024] \
        [--out erf.png] [--json] [--compare CONFIG2 [CKPT2]] [--device cpu]

Protocol (RepLKNet's ``erf/visualize_erf.py`` and ``erf/analyze_erf.py``,
which SLaK reuses): every image is resized to ``size x size`` (bicubic) and
normalised with the mean / std of the config's data preprocessor; the
backbone (eval mode, float32, batch of 1) maps it to its last output feature
map ``y`` of shape ``(1, C, h, w)``; the score ``sum_c ReLU(y[0, c, h // 2,
w // 2])`` is backpropagated to the input, and the input gradient, ReLU'd and
summed over the colour channels, is the image's ``(size, size)``
contribution map. The maps are averaged over the images (the "raw" map); the
heatmap shows ``log10(raw + 1)`` divided by its maximum.

High-contribution area ratio: for a threshold ``t``, the area (as a fraction
of the image) of the smallest square of odd side ``2r + 1`` centred on pixel
``(size // 2, size // 2)`` (clipped to the image) that holds at least ``t``
of the map's total. ``area_ratios`` applies it to the averaged raw map;
``area_ratios_log`` applies it to the log-scaled, max-normalised heatmap,
which is the map RepLKNet's ``analyze_erf.py`` measures (and so the one
behind the ratios printed in the RepLKNet and SLaK papers). Unlike
``analyze_erf.py``, the search starts at ``r = 0`` (a single pixel) and runs
until the square covers the image, so every threshold has an answer.

Differences from RepLKNet's script, all of them forced by taking any
backbone of any config: the feature map is the backbone's last output, i.e.
after the output norm that mmpretrain / mmseg / mmdet backbones apply
(RepLKNet takes it before its final norm and notes "very little
difference"); a backbone that pools its output (``gap_before_final_norm`` of
PeLK and mmpretrain's ConvNeXt) is switched to return the map.

Weights: CKPT (a whole-model checkpoint, whose ``backbone.*`` keys are used,
or backbone-only weights; loaded strictly). Without CKPT the backbone is
randomly initialised as its ``init_cfg`` says (seeded by ``--seed``); a
``Pretrained`` ``init_cfg`` in the config is ignored, so the weights always
come from CKPT or nowhere. The figure title says which.

Images: the first ``--num-images`` jpg / png files under ``--data-root``
(recursively, in sorted path order; e.g. ImageNet ``val/`` or ADE20K
``images/validation/``), or with ``--demo`` as many procedurally drawn
ADE20K-style scenes from the project's demo data generator (no dataset
needed; deterministic for a given ``--seed``).

Cost: a PeLK-T image at 1024x1024 takes minutes on a CPU (``--json``
prints the seconds per image; docs/erf.md); use ``--device cuda`` for the
full 50-image protocol.
"""
import argparse
import copy
import json
import logging
import os
import os.path as osp
import tempfile
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')  # noqa: E402  (files only, no display)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from PIL import Image  # noqa: E402

import pelk_mm  # noqa: E402,F401  (registers PeLK and the checkpoint shim)
from pelk_mm.checkpoint import load_backbone  # noqa: E402
# The project's demo image generator (the only import of it in this tool).
from pelk_mm.demo import make_ade20k_demo  # noqa: E402
from pelk_mm.mm.builder import build_model, load_config  # noqa: E402

# Fractions of the total contribution whose area ratios are reported.
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Smallest --size: every backbone of this repo downsamples by 32.
MIN_SIZE = 32
# Data-preprocessor flags that swap the loaded (BGR) channels to RGB:
# mmpretrain's ``to_rgb``, mmengine / mmseg / mmdet's ``bgr_to_rgb`` and
# ``rgb_to_bgr`` (a swap either way).
CHANNEL_SWAP_KEYS = ('to_rgb', 'bgr_to_rgb', 'rgb_to_bgr')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Effective receptive field of a backbone (RepLKNet '
        'protocol): heatmap PNG and high-contribution area ratios')
    parser.add_argument(
        'config',
        help='config whose model has a backbone (a file, or a package '
        'config such as mmpretrain::convnext/convnext-tiny_32xb128_in1k.py)')
    parser.add_argument(
        'checkpoint',
        nargs='?',
        help='whole-model or backbone checkpoint (default: random init)')
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument(
        '--data-root',
        help='folder of jpg / png images (searched '
        'recursively)')
    images.add_argument(
        '--demo',
        action='store_true',
        help='procedurally drawn ADE20K-style scenes (no dataset needed)')
    parser.add_argument(
        '--num-images', type=int, default=50, help='images to average')
    parser.add_argument(
        '--size', type=int, default=1024, help='input side (square)')
    parser.add_argument('--out', default='erf.png', help='heatmap PNG')
    parser.add_argument(
        '--compare',
        nargs='+',
        metavar='CONFIG2 [CKPT2]',
        help='a second model, plotted side by side')
    parser.add_argument(
        '--device', default='cpu', help='torch device, e.g. cpu, cuda:0')
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='seed of the random init and of the demo images')
    parser.add_argument(
        '--json',
        action='store_true',
        help='print one JSON object with the ratios')
    args = parser.parse_args(argv)
    if args.compare is not None and len(args.compare) > 2:
        raise ValueError('--compare takes CONFIG2 and optionally CKPT2, got '
                         f'{args.compare}')
    if args.num_images < 1:
        raise ValueError('--num-images must be a positive integer, got '
                         f'{args.num_images}')
    if args.size < MIN_SIZE:
        raise ValueError(f'--size must be an integer >= {MIN_SIZE}, got '
                         f'{args.size}')
    return args


# --------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------
def input_contribution(backbone: nn.Module,
                       image: torch.Tensor) -> torch.Tensor:
    """Contribution of every input pixel to the centre of the last map.

    Args:
        backbone (nn.Module): Returns a ``(1, C, h, w)`` tensor or a tuple
            whose last element is one.
        image (Tensor): ``(1, 3, H, W)`` normalised input.

    Returns:
        Tensor: ``(H, W)``, ``sum_channels ReLU(d s / d image)`` with
        ``s = sum_c ReLU(y[0, c, h // 2, w // 2])``.
    """
    image = image.detach().requires_grad_(True)
    out = backbone(image)
    feature = out if isinstance(out, torch.Tensor) else out[-1]
    if feature.dim() != 4:
        raise ValueError('the backbone must return (N, C, h, w) feature maps '
                         'for the ERF; its last output has shape '
                         f'{tuple(feature.shape)}')
    h, w = feature.shape[-2:]
    score = F.relu(feature[:, :, h // 2, w // 2]).sum()
    grad, = torch.autograd.grad(score, image)
    return F.relu(grad).sum((0, 1))


def contribution_map(
        backbone: nn.Module,
        images: Iterable[torch.Tensor]) -> Tuple[np.ndarray, List[float]]:
    """Average :func:`input_contribution` over images.

    Returns:
        tuple: the averaged raw contribution map ``(H, W)`` (float64) and the
        seconds each image took (forward + backward).
    """
    total, seconds = None, []
    for image in images:
        start = time.perf_counter()
        contribution = input_contribution(backbone, image).double().cpu()
        seconds.append(time.perf_counter() - start)
        if not torch.isfinite(contribution).all():
            raise RuntimeError(
                f'non-finite input gradient on image {len(seconds)}')
        total = contribution if total is None else total + contribution
    if total is None:
        raise ValueError('no images to average')
    return (total / len(seconds)).numpy(), seconds


def log_scaled(contribution: np.ndarray) -> np.ndarray:
    """``log10(x + 1)`` divided by its maximum (RepLKNet's heatmap)."""
    scaled = np.log10(np.asarray(contribution, np.float64) + 1)
    if not scaled.max() > 0:
        raise ValueError('the contribution map is zero everywhere')
    return scaled / scaled.max()


def area_ratios(contribution: np.ndarray,
                thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, float]:
    """High-contribution area ratios of a non-negative ``(H, W)`` map.

    For each threshold ``t``: the smallest ``r >= 0`` such that the square
    rows ``H // 2 - r .. H // 2 + r``, columns ``W // 2 - r .. W // 2 + r``
    (clipped to the map) holds at least ``t`` of the map's sum; returned is
    that square's clipped area divided by ``H * W``.

    Returns:
        dict: ``{'20': ratio, '30': ..., ...}``, keyed by the threshold in
        percent.
    """
    data = np.asarray(contribution, np.float64)
    if data.ndim != 2:
        raise ValueError(f'contribution must be an (H, W) map, got shape '
                         f'{data.shape}')
    if not (np.isfinite(data).all() and data.min() >= 0 and data.sum() > 0):
        raise ValueError('contribution must be finite, non-negative and not '
                         'all zero')
    if not all(0 < t <= 1 for t in thresholds):
        raise ValueError(f'thresholds must be in (0, 1], got {thresholds}')
    h, w = data.shape
    cy, cx = h // 2, w // 2
    integral = np.pad(data.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    radii = np.arange(max(cy, cx, h - 1 - cy, w - 1 - cx) + 1)
    top, bottom = np.maximum(cy - radii, 0), np.minimum(cy + radii + 1, h)
    left, right = np.maximum(cx - radii, 0), np.minimum(cx + radii + 1, w)
    sums = (
        integral[bottom, right] - integral[top, right] -
        integral[bottom, left] + integral[top, left])
    fractions = sums / sums[-1]  # the last square is the whole map
    areas = (bottom - top) * (right - left) / (h * w)
    return {
        f'{100 * t:g}': float(areas[np.argmax(fractions >= t)])
        for t in thresholds
    }


# --------------------------------------------------------------------------
# Models and images
# --------------------------------------------------------------------------
def normalisation(cfg: Config) -> Tuple[torch.Tensor, torch.Tensor, bool]:
    """Mean, std and channel order the config's data preprocessor applies.

    The model's ``data_preprocessor`` wins over a top-level one (as
    mmengine's Runner merges them). Images are loaded as BGR by the mm
    pipelines, so the model sees RGB exactly when the preprocessor swaps
    channels. Without mean / std nothing is normalised (as
    ``ImgDataPreprocessor``).

    Returns:
        tuple: ``mean`` and ``std`` ``(3, 1, 1)`` in the model's channel
        order, and whether that order is RGB.
    """
    pre = cfg.model.get('data_preprocessor') or cfg.get(
        'data_preprocessor') or {}
    rgb = any(pre.get(key, False) for key in CHANNEL_SWAP_KEYS)
    mean = pre.get('mean') or (0., 0., 0.)
    std = pre.get('std') or (1., 1., 1.)
    return (torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(-1, 1, 1), rgb)


def _is_pretrained(init_cfg) -> bool:
    inits = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    return any(
        isinstance(i, dict) and i.get('type') == 'Pretrained' for i in inits)


def build_backbone(cfg: Config,
                   checkpoint: Optional[str] = None,
                   seed: int = 0) -> nn.Module:
    """``cfg.model.backbone`` from the registry, in eval mode, float32.

    With ``checkpoint`` its weights are loaded strictly by
    :func:`pelk_mm.checkpoint.load_backbone` (``backbone.*`` keys of a
    whole-model checkpoint, else every key); without it the backbone is
    initialised by ``init_weights()`` after seeding with ``seed``, a
    ``Pretrained`` ``init_cfg`` being dropped (the class default applies).
    A backbone with ``gap_before_final_norm`` is set to return feature maps.
    """
    if 'backbone' not in cfg.model:
        raise ValueError(f'CONFIG model {cfg.model.get("type")!r} has no '
                         'backbone')
    cfg = copy.deepcopy(cfg)
    if _is_pretrained(cfg.model.backbone.get('init_cfg')):
        cfg.model.backbone.pop('init_cfg')
    backbone = build_model(
        cfg, part='model.backbone', seed=seed, init_weights=checkpoint is None)
    if checkpoint is not None:
        try:
            load_backbone(backbone, checkpoint)
        except RuntimeError as error:
            raise ValueError(f'CKPT {checkpoint} does not fit the backbone '
                             f'of the config: {error}') from error
    if getattr(backbone, 'gap_before_final_norm', False):
        backbone.gap_before_final_norm = False
    backbone.requires_grad_(False)  # only the input gradient is needed
    backbone.float()
    backbone.eval()  # some backbones' train() returns None: no chaining
    return backbone


def image_paths(data_root: str, num_images: int) -> List[str]:
    """The first ``num_images`` jpg / png files under ``data_root``."""
    if not osp.isdir(data_root):
        raise ValueError(f'--data-root must be a folder, got {data_root!r}')
    paths = sorted(
        osp.join(folder, name) for folder, _, names in os.walk(data_root)
        for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if len(paths) < num_images:
        raise ValueError(f'--num-images is {num_images} but --data-root '
                         f'{data_root} holds {len(paths)} jpg / png images')
    return paths[:num_images]


def demo_image_paths(root: str, num_images: int, size: int,
                     seed: int) -> List[str]:
    """Draw ``num_images`` demo scenes of ``size x size`` under ``root``."""
    make_ade20k_demo(
        root, num_train=1, num_val=num_images, size=(size, size), seed=seed)
    return image_paths(osp.join(root, 'images', 'validation'), num_images)


def load_images(paths: Sequence[str], size: int, mean: torch.Tensor,
                std: torch.Tensor, rgb: bool,
                device: str) -> Iterator[torch.Tensor]:
    """Yield ``(1, 3, size, size)`` inputs: bicubic resize, then
    ``(pixel - mean) / std`` in the model's channel order."""
    for path in paths:
        with Image.open(path) as img:
            img = img.convert('RGB').resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, np.float32).copy())
        x = x.permute(2, 0, 1)
        if not rgb:
            x = x.flip(0)
        yield ((x - mean) / std)[None].to(device)


# --------------------------------------------------------------------------
# One model, the figure
# --------------------------------------------------------------------------
def config_name(path: str) -> str:
    return osp.splitext(osp.basename(path.split('::')[-1]))[0]


def measure(config: str, checkpoint: Optional[str], paths: Sequence[str],
            size: int, device: str, seed: int) -> dict:
    """The ERF of one model; the averaged raw map is under ``'raw_map'``."""
    cfg = load_config(config)
    backbone = build_backbone(cfg, checkpoint, seed).to(device)
    mean, std, rgb = normalisation(cfg)
    raw, seconds = contribution_map(
        backbone, load_images(paths, size, mean, std, rgb, device))
    return dict(
        config=config,
        name=config_name(config),
        backbone=type(backbone).__name__,
        weights=checkpoint or 'random init',
        num_images=len(seconds),
        size=size,
        device=device,
        seconds_per_image=float(np.mean(seconds)),
        seconds_first_image=seconds[0],
        area_ratios=area_ratios(raw),
        area_ratios_log=area_ratios(log_scaled(raw)),
        raw_map=raw)


def _ratios_text(ratios: Dict[str, float]) -> str:
    return ' / '.join(f'{100 * v:.2f}' for v in ratios.values())


def plot(results: Sequence[dict], out: str, source: str) -> None:
    """Heatmaps of ``log10(raw + 1) / max`` side by side, with the ratios."""
    # seaborn's RdYlGn centred at 0, as RepLKNet draws [0, 1] maps
    cmap = ListedColormap(plt.get_cmap('RdYlGn')(np.linspace(0.5, 1, 256)))
    fig, axes = plt.subplots(
        1, len(results), figsize=(4.2 * len(results), 5.2), squeeze=False)
    thresholds = '/'.join(results[0]['area_ratios'])
    for ax, result in zip(axes[0], results):
        image = ax.imshow(
            log_scaled(result['raw_map']), cmap=cmap, vmin=0, vmax=1)
        weights = result['weights']
        if weights != 'random init':
            weights = 'weights: ' + osp.basename(weights)
        ax.set_title(
            f'{result["name"]}\n{result["backbone"]}, {weights}', fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(
            f'area % for {thresholds} % of the contribution:\n'
            f'log map (RepLKNet) {_ratios_text(result["area_ratios_log"])}\n'
            f'raw map {_ratios_text(result["area_ratios"])}',
            fontsize=8)
        fig.colorbar(
            image, ax=ax, orientation='horizontal', fraction=0.04, pad=0.2)
    first = results[0]
    fig.suptitle(
        f'ERF: log10(x + 1) / max, {first["num_images"]} {source} images '
        f'at {first["size"]}x{first["size"]}',
        fontsize=10)
    fig.savefig(out, dpi=100, bbox_inches='tight')
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    # init_weights() logs every parameter's initialisation
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    models = [(args.config, args.checkpoint)]
    if args.compare is not None:
        models.append((args.compare[0], (args.compare[1:] or [None])[0]))
    with tempfile.TemporaryDirectory() as tmp:
        if args.demo:
            source = 'demo'
            paths = demo_image_paths(tmp, args.num_images, args.size,
                                     args.seed)
        else:
            source = args.data_root
            paths = image_paths(args.data_root, args.num_images)
        results = [
            measure(config, checkpoint, paths, args.size, args.device,
                    args.seed) for config, checkpoint in models
        ]
    plot(results, args.out, 'demo' if args.demo else 'dataset')
    summary = dict(
        out=args.out,
        images=source,
        models=[{
            k: v
            for k, v in r.items() if k != 'raw_map'
        } for r in results])
    if args.json:
        print(json.dumps(summary))
        return
    for result in summary['models']:
        print(f'{result["name"]} ({result["backbone"]}, {result["weights"]}):'
              f' {result["num_images"]} images at {args.size}x{args.size}, '
              f'{result["seconds_per_image"]:.2f} s / image on '
              f'{result["device"]}')
        for key in ('area_ratios', 'area_ratios_log'):
            ratios = ', '.join(f'{t} %: {v:.4f}'
                               for t, v in result[key].items())
            print(f'  {key}: {ratios}')
    print(f'heatmap written to {args.out}')


if __name__ == '__main__':
    main()
