"""Drawing primitives of the demo datasets: class textures and polygons.

A texture is a function ``(h, w, rng) -> float32 (h, w, 3)`` RGB array in
[0, 255]; a polygon is a flat ``[x0, y0, x1, y1, ...]`` list in pixel
coordinates. :func:`paint` fills a polygon's mask on a canvas with a texture;
:func:`to_uint8` turns the canvas into an image. Every random choice is drawn
from the ``numpy.random.Generator`` passed in, in a fixed order, so a layout
writer that seeds one generator per image is deterministic.
"""
from typing import Callable, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

Texture = Callable[[int, int, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------
# Textures: (H, W) -> float32 (H, W, 3) RGB in [0, 255], class-dependent.
# --------------------------------------------------------------------------
def _jittered(rgb: Sequence[float],
              rng: np.random.Generator,
              amount: float = 12.) -> np.ndarray:
    return np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3)


def _noise(h: int,
           w: int,
           rng: np.random.Generator,
           std: float,
           cell: int = 1) -> np.ndarray:
    """Grey noise of the given std; ``cell > 1`` makes it blotchy."""
    small = rng.normal(0., std,
                       ((h + cell - 1) // cell, (w + cell - 1) // cell))
    noise = np.kron(small, np.ones((cell, cell)))[:h, :w]
    return noise[..., None].astype(np.float32)


def _grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy, xx


def plain(rgb: Sequence[float], std: float, cell: int = 1) -> Texture:

    def texture(h, w, rng):
        return _jittered(rgb, rng) + _noise(h, w, rng, std, cell)

    return texture


def gradient(top: Sequence[float], bottom: Sequence[float]) -> Texture:

    def texture(h, w, rng):
        t = np.linspace(0., 1., h, dtype=np.float32)[:, None, None]
        img = _jittered(top, rng) * (1 - t) + _jittered(bottom, rng) * t
        return np.broadcast_to(img, (h, w, 3)) + _noise(h, w, rng, 3.)

    return texture


def stripes(rgb: Sequence[float],
            period: int,
            vertical: bool,
            contrast: float = 50.) -> Texture:

    def texture(h, w, rng):
        yy, xx = _grid(h, w)
        phase = int(rng.integers(period))
        on = (((xx if vertical else yy) + phase) // (period // 2 or 1)) % 2
        return (_jittered(rgb, rng) + contrast * (on[..., None] - .5) +
                _noise(h, w, rng, 4.))

    return texture


def checker(light: Sequence[float], dark: Sequence[float],
            cell: int) -> Texture:

    def texture(h, w, rng):
        yy, xx = _grid(h, w)
        on = ((yy // cell + xx // cell) % 2)[..., None]
        return (_jittered(light, rng) * on + _jittered(dark, rng) * (1 - on) +
                _noise(h, w, rng, 4.))

    return texture


def windows(wall: Sequence[float], glass: Sequence[float],
            cell: int) -> Texture:

    def texture(h, w, rng):
        yy, xx = _grid(h, w)
        win = (((yy // cell) % 2 == 0) & ((xx // cell) % 2 == 0))[..., None]
        return (_jittered(glass, rng) * win + _jittered(wall, rng) * (~win) +
                _noise(h, w, rng, 5.))

    return texture


def random_colour(h, w, rng):
    return rng.uniform(0, 255, 3).astype(np.float32) + _noise(h, w, rng, 8.)


# --------------------------------------------------------------------------
# Shapes: polygons as flat [x0, y0, x1, y1, ...] lists in pixel coordinates.
# --------------------------------------------------------------------------
def ellipse(cx: float,
            cy: float,
            rx: float,
            ry: float,
            n: int = 16) -> List[float]:
    t = np.arange(n) * 2 * np.pi / n
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)],
                    1).ravel().tolist()


def rectangle(x0: float, y0: float, x1: float, y1: float) -> List[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def triangle(cx: float, cy: float, r: float) -> List[float]:
    return [cx, cy - r, cx + r, cy + r, cx - r, cy + r]


def cross(cx: float, cy: float, r: float) -> List[float]:
    a = r / 3
    pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r),
           (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    return [v for x, y in pts for v in (cx + x, cy + y)]


def polygon_mask(poly: Sequence[float], h: int, w: int) -> np.ndarray:
    img = Image.new('L', (w, h), 0)
    ImageDraw.Draw(img).polygon([float(v) for v in poly], fill=1)
    return np.asarray(img, dtype=bool)


def paint(canvas: np.ndarray, mask: np.ndarray, texture: Texture,
          rng: np.random.Generator) -> None:
    h, w = mask.shape
    canvas[mask] = texture(h, w, rng)[mask]


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}')


def check_size(size: Tuple[int, int], minimum: int) -> Tuple[int, int]:
    if (len(size) != 2
            or not all(isinstance(v, (int, np.integer)) for v in size)
            or min(size) < minimum):
        raise ValueError(f'size must be (width, height) with both >= '
                         f'{minimum}, got {size!r}')
    return int(size[0]), int(size[1])
