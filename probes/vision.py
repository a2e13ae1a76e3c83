"""Built-in vision concepts, generated procedurally and deterministically.

Image `i` of a concept is regenerated from `(concept, i // 2)` alone: even
indices are the concept, odd ones its matched negative (same colours, clutter
and parameters, without the feature). Everything is vectorised numpy, a few
milliseconds per 224x224 image, so no pixels are ever stored in the repo.

Pair `p` belongs to style `p % N_GROUPS` (an orientation, a cell size, a
spacing, a shade...): images of one style are correlated, so the style is the
group, the unit of inference and of the train/test split. Every group holds
both labels (paired design), and there are enough of them (32, 22 in train)
for a group-level test to reach significance over many thousands of neurons.
"""
from __future__ import annotations

import zlib
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .split import assign_test_groups, labels_by_group
from .types import Example, ProbeError

SIZE = 224
N_GROUPS = 32
N_PAIRS = 5 * N_GROUPS
PREFIX = "builtin:"
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
# One fixed sensor-noise field; each image takes a window at a random offset (cheap and deterministic).
_NOISE = np.round(np.random.default_rng(7).normal(0.0, 6.0, (2 * SIZE, 2 * SIZE, 1))).astype(np.int16)
_NOISE = np.ascontiguousarray(np.broadcast_to(_NOISE, (2 * SIZE, 2 * SIZE, 3)))

# A generator returns an index image (uint8 HxW) and its palette (rows of RGB);
# painting goes through a PIL palette image, which is far faster than numpy broadcasting.
Drawing = tuple[np.ndarray, np.ndarray]


def _rng(concept: str, pair: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(concept.encode()), pair, stream])


def _colours(rng: np.random.Generator) -> np.ndarray:
    """Two colours that differ by at least 96 in every channel."""
    c1 = rng.integers(0, 256, 3)
    c2 = (c1 + rng.integers(96, 161, 3)) % 256
    return np.stack([c2, c1])


def _blobs(rng: np.random.Generator, cells: int, fraction: float) -> np.ndarray:
    """A structureless mask covering about `fraction` of the image (smooth noise, thresholded)."""
    low = rng.random((cells, cells), dtype=np.float32)
    up = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.BILINEAR))
    # a 1-in-16 subsample gives the threshold almost exactly, at a fraction of the cost
    return up > np.quantile(up[::4, ::4], 1.0 - fraction)


def _paint(drawing: Drawing, noise: np.random.Generator) -> np.ndarray:
    idx, palette = drawing
    im = Image.frombuffer("P", (SIZE, SIZE), np.ascontiguousarray(idx, dtype=np.uint8).tobytes(),
                          "raw", "P", 0, 1)
    im.putpalette(np.clip(palette, 0, 255).astype(np.uint8).tobytes())
    rgb = np.asarray(im.convert("RGB")).astype(np.int16)
    oy, ox = noise.integers(0, SIZE, 2)
    rgb += _NOISE[oy:oy + SIZE, ox:ox + SIZE]
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)


def _stripes(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    theta = np.deg2rad(group * STRIPE_STEP + rng.uniform(-2, 2))
    period, phase = rng.uniform(10, 32), rng.uniform(0, 2 * np.pi)
    pal, cells = _colours(rng), int(rng.integers(6, 15))
    if pos:
        u = _XX * np.cos(theta) + _YY * np.sin(theta)
        return np.sin(2 * np.pi * u / period + phase) > 0, pal
    return _blobs(noise, cells, 0.5), pal


def _checkerboard(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    cell = CELLS[group]
    theta = np.deg2rad(rng.uniform(-30, 30))
    pal, cells = _colours(rng), int(rng.integers(6, 15))
    if pos:
        u = _XX * np.cos(theta) + _YY * np.sin(theta)
        v = -_XX * np.sin(theta) + _YY * np.cos(theta)
        return (np.floor(u / cell) + np.floor(v / cell)) % 2 == 1, pal
    return _blobs(noise, cells, 0.5), pal


def _dots(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    spacing = DOT_SPACING[group]
    r = spacing * rng.uniform(0.2, 0.35)
    pal, cells = _colours(rng), int(rng.integers(4, 9))
    if pos:
        n = int(np.ceil(SIZE / spacing)) + 1
        jitter = rng.uniform(-1, 1, (2, n, n)).astype(np.float32) * (spacing / 2 - r)
        iy, ix = (_YY // spacing).astype(np.intp), (_XX // spacing).astype(np.intp)
        cy = iy * spacing + spacing / 2 + jitter[0][iy, ix]
        cx = ix * spacing + spacing / 2 + jitter[1][iy, ix]
        return (_YY - cy) ** 2 + (_XX - cx) ** 2 < r * r, pal
    return _blobs(noise, cells, float(np.pi * r * r / spacing**2)), pal


STRIPE_STEP = 180.0 / N_GROUPS                    # stripes: one orientation per group
CELLS = tuple(range(8, 8 + N_GROUPS))               # checkerboard cell sizes (px)
DOT_SPACING = tuple(14.0 + 1.5 * g for g in range(N_GROUPS))
GRID_SPACING = tuple(12.0 + 1.5 * g for g in range(N_GROUPS))
CIRCLE_WIDTHS = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)  # circles: 8 line widths x 1-4 circles


def _red_shades() -> np.ndarray:
    """32 reds: 4 hues within 10 degrees of pure red x 2 saturations x 4 brightnesses."""
    out = []
    for hue in (-10.0, -3.5, 3.5, 10.0):
        for sat in (0.8, 1.0):
            for val in (0.55, 0.7, 0.85, 1.0):
                h = (hue % 360) / 60.0
                k = (np.array([5.0, 3.0, 1.0]) + h) % 6
                out.append(np.round(255 * val * (1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1))))
    return np.array(out)


_REDS = _red_shades()


def _hue_colour(rng: np.random.Generator, avoid: float) -> np.ndarray:
    """A colour whose hue stays at least 60 degrees from `avoid` (degrees)."""
    h = ((avoid + rng.uniform(60, 300)) % 360) / 60.0
    s, v = rng.uniform(0.3, 0.9), rng.uniform(0.4, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + h) % 6
    return 255 * v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


def _shape(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    cy, cx, size = rng.uniform(60, 164), rng.uniform(60, 164), rng.uniform(lo, hi)
    if rng.random() < 0.5:
        return (_YY - cy) ** 2 + (_XX - cx) ** 2 < size * size
    return np.maximum(np.abs(_YY - cy), np.abs(_XX - cx)) < size * 0.89  # same area as the disk


def _coloured_shape(shade: np.ndarray, avoid: float, rng: np.random.Generator, pos: bool) -> Drawing:
    """A shape in `shade` on clutter; the negative rotates the RGB channels (same brightness mix)."""
    roll = 1 + int(rng.integers(0, 2))  # drawn before branching so that the pair matches
    fg = shade if pos else np.roll(shade, roll)
    pal = np.stack([_hue_colour(rng, avoid), _hue_colour(rng, avoid), fg])
    idx = _blobs(_rng("shape-clutter", int(rng.integers(1 << 30)), 0), 8, 0.5).astype(np.uint8)
    idx[_shape(rng, 30, 60)] = 2
    return idx, pal


def _red(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    return _coloured_shape(_REDS[group], 0.0, rng, pos)


def _blue(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    return _coloured_shape(np.roll(_REDS[group], 2), 240.0, rng, pos)


def _grid(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    spacing = GRID_SPACING[group]
    width = rng.uniform(1.5, 4.0)
    theta = np.deg2rad(rng.uniform(-45, 45))
    pal, cells = _colours(rng), int(rng.integers(4, 9))
    if pos:
        u = _XX * np.cos(theta) + _YY * np.sin(theta)
        v = -_XX * np.sin(theta) + _YY * np.cos(theta)
        return (u % spacing < width) | (v % spacing < width), pal
    return _blobs(noise, cells, 1.0 - (1.0 - width / spacing) ** 2), pal


def _circles(group: int, rng: np.random.Generator, noise: np.random.Generator, pos: bool) -> Drawing:
    k, width = 1 + group % 4, CIRCLE_WIDTHS[group // 4]
    cy, cx = rng.uniform(40, 184, (2, k, 1, 1)).astype(np.float32)
    radius = rng.uniform(20, 70, (k, 1, 1)).astype(np.float32)
    c = _colours(rng)
    if pos:
        dist = np.sqrt((_YY - cy) ** 2 + (_XX - cx) ** 2)
    else:  # squares with the same perimeter: same ink, straight edges only
        dist = np.maximum(np.abs(_YY - cy), np.abs(_XX - cx)) * (4.0 / np.pi)
    pal = np.stack([c[0], c[0] * 0.85 + 20, c[1]])
    idx = _blobs(_rng("circles-clutter", int(rng.integers(1 << 30)), 0), 6, 0.5).astype(np.uint8)
    idx[(np.abs(dist - radius) < width / 2).any(axis=0)] = 2
    return idx, pal


Generator = Callable[[int, np.random.Generator, np.random.Generator, bool], Drawing]
CONCEPTS: dict[str, tuple[Generator, str, tuple[str, ...]]] = {
    "stripes": (_stripes, "Parallel stripes at one orientation; negatives are blobs in the same two colours.",
                tuple(f"angle-{g * STRIPE_STEP:05.1f}" for g in range(N_GROUPS))),
    "checkerboard": (_checkerboard, "Checkerboards of varying cell size; negatives are blobs in the same two colours.",
                     tuple(f"cell-{c:02d}" for c in CELLS)),
    "dots": (_dots, "Lattices of round dots; negatives are blobs covering the same area in the same colours.",
             tuple(f"spacing-{s:04.1f}" for s in DOT_SPACING)),
    "red": (_red, "A red shape on clutter; negatives show the same shape with the channels rotated (green/blue).",
            tuple(f"red-{g:02d}" for g in range(N_GROUPS))),
    "blue": (_blue, "A blue shape on clutter; negatives show the same shape with the channels rotated (red/green).",
             tuple(f"blue-{g:02d}" for g in range(N_GROUPS))),
    "grid": (_grid, "Grids of thin crossing lines; negatives are blobs covering the same area in the same colours.",
             tuple(f"spacing-{s:04.1f}" for s in GRID_SPACING)),
    "circles": (_circles, "Circle outlines (curves); negatives are square outlines with the same ink.",
                tuple(f"width-{CIRCLE_WIDTHS[g // 4]:.0f}-count-{1 + g % 4}" for g in range(N_GROUPS))),
}


def concept_names() -> tuple[str, ...]:
    return tuple(CONCEPTS)


def describe(name: str) -> str:
    return CONCEPTS[name][1]


def generate(concept: str, index: int) -> np.ndarray:
    """Image `index` of a built-in vision concept (even = concept, odd = negative)."""
    if concept not in CONCEPTS:
        raise ProbeError(f"unknown vision concept '{concept}'; known: {', '.join(CONCEPTS)}")
    if index < 0:
        raise ProbeError(f"image index must be >= 0, got {index}")
    pair = index // 2
    fn = CONCEPTS[concept][0]
    noise = _rng(concept, pair, 1 + index % 2)
    return _paint(fn(pair % N_GROUPS, _rng(concept, pair, 0), noise, index % 2 == 0), noise)


@lru_cache(maxsize=None)
def build(concept: str) -> tuple[Example, ...]:
    groups = CONCEPTS[concept][2]
    raw = [(groups[(i // 2) % N_GROUPS], 1 - i % 2) for i in range(2 * N_PAIRS)]
    test = assign_test_groups(concept, labels_by_group(raw))
    return tuple(
        Example(example_id=i, label=lab, group=g, split="test" if g in test else "train",
                image=f"{PREFIX}{concept}/{i}", pair_id=i // 2)
        for i, (g, lab) in enumerate(raw)
    )


def load_image(ref: str) -> np.ndarray:
    """uint8 HxWx3 RGB pixels for a `builtin:<concept>/<index>` ref or an image file path."""
    if not isinstance(ref, (str, Path)):
        raise ProbeError(f"image ref must be a string, got {type(ref).__name__}")
    ref = str(ref)
    if ref.startswith(PREFIX):
        concept, _, idx = ref[len(PREFIX):].partition("/")
        if not idx.isdigit():
            raise ProbeError(f"bad built-in image ref '{ref}' (want builtin:<concept>/<index>)")
        return generate(concept, int(idx))
    return read_image_file(Path(ref))


def read_image_file(path: Path) -> np.ndarray:
    """Decode an image file to RGB uint8, reporting any failure as one ProbeError line."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise ProbeError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ProbeError(f"{path}: unreadable image ({msg})") from None
