"""Anomaly texture sources: images from a folder (e.g. DTD) or procedural textures (offline).

A texture source returns an RGB uint8 texture of the requested size; the DRAEM blender pastes it
through a Perlin mask. DRAEM-derived methods use the Describable Textures Dataset
(``dtd/images/<category>/*.jpg``); :class:`ProceduralTextureSource` is the fallback when no texture
folder is configured, so that training works without any download.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from kdad.data.synthesis._common import check_rng, check_size
from kdad.data.synthesis.perlin import perlin_noise_2d

__all__ = [
    "IMAGE_EXTENSIONS",
    "PROCEDURAL_KINDS",
    "FolderTextureSource",
    "ProceduralTextureSource",
    "TextureSource",
    "make_texture_source",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


@runtime_checkable
class TextureSource(Protocol):
    """Anything that can produce an RGB uint8 texture of a given (H, W) size."""

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray: ...


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    # INTER_AREA when shrinking avoids aliasing fine texture detail into moire; linear when enlarging.
    shrinking = image.shape[0] * image.shape[1] > height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


class FolderTextureSource:
    """Textures read from image files found recursively under ``root`` (jpg, jpeg, png, bmp, tif).

    Files are sorted so that the same generator state picks the same file on every machine. Each
    sample reads one file (chosen uniformly), converts it to RGB and resizes it to the requested
    size, as DRAEM does (the whole texture image is resized; no crop).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"texture folder {str(self.root)!r} does not exist or is not a folder")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise FileNotFoundError(
                f"texture folder {str(self.root)!r} contains no images "
                f"(searched recursively for {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"FolderTextureSource(root={str(self.root)!r}, files={len(self.files)})"

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
        """A random texture from the folder, RGB uint8 of shape ``size + (3,)``."""
        size = check_size(size)
        path = self.files[int(check_rng(rng).integers(len(self.files)))]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"could not read texture image {str(path)!r}")
        return _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size)


# --- procedural textures -----------------------------------------------------------------------------
# Each generator maps (rng, H, W) to an RGB uint8 image. They are deliberately different in structure
# (isotropic noise, periodic, piecewise-constant, smooth, veined) so the synthetic anomalies do not
# all share one look that the student could learn as a shortcut.


def _random_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(0.0, 255.0, size=(count, 3)).astype(np.float32)


def _palette(values: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map a field in [0, 1] to RGB uint8 by piecewise-linear interpolation between ``colours``.

    The interpolation is tabulated at 256 levels and applied as a lookup: an 8-bit image cannot show
    finer steps anyway, and a table lookup is ~20x cheaper than interpolating every pixel.
    """
    levels = np.linspace(0.0, len(colours) - 1, 256)
    lower = np.minimum(levels.astype(np.int64), len(colours) - 2)
    frac = (levels - lower)[:, None]
    table = _to_uint8(colours[lower] * (1.0 - frac) + colours[lower + 1] * frac)
    return table[np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)]


def _rescale01(field: np.ndarray) -> np.ndarray:
    low, high = float(field.min()), float(field.max())
    return (field - low) / max(high - low, 1e-6)


def _rotated_coords(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle (for oriented stripes and checkers)."""
    theta = rng.uniform(0.0, math.pi)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    cos, sin = np.float32(math.cos(theta)), np.float32(math.sin(theta))
    return cols * cos + rows * sin, -cols * sin + rows * cos


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _value_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Multi-octave coloured value noise: random grids upsampled bicubically and summed."""
    base = int(rng.integers(2, 17))
    persistence = rng.uniform(0.35, 0.75)
    total = np.zeros((height, width, 3), dtype=np.float32)
    amplitude, cells = 1.0, base
    for _ in range(int(rng.integers(1, 5))):
        grid = rng.random((min(cells, height), min(cells, width), 3), dtype=np.float32)
        total += amplitude * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        amplitude *= persistence
        cells *= 2
    # Per-channel rescale gives saturated, varied colours instead of a grey average.
    return _to_uint8(255.0 * _rescale01(total))


def _stripes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Oriented stripes, sinusoidal or hard-edged, between two random colours."""
    u, _ = _rotated_coords(rng, height, width)
    period = rng.uniform(4.0, 48.0)
    wave = np.sin(2.0 * math.pi * u / period + rng.uniform(0.0, 2.0 * math.pi))
    hard_edged = rng.random() < 0.5
    wave = (wave > rng.uniform(-0.6, 0.6)).astype(np.float32) if hard_edged else 0.5 * (wave + 1.0)
    return _palette(wave, _random_colours(rng, 2))


def _checker(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rotated checkerboard with a random cell size and two random colours."""
    u, v = _rotated_coords(rng, height, width)
    cell = rng.uniform(4.0, 40.0)
    board = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return _palette(board, _random_colours(rng, 2))


def _blobs(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random filled ellipses over a random background colour."""
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = _to_uint8(_random_colours(rng, 1)[0])
    scale = min(height, width)
    for _ in range(int(rng.integers(5, 41))):
        centre = (int(rng.integers(width)), int(rng.integers(height)))
        axes = tuple(int(a) for a in rng.uniform(0.02, 0.25, size=2) * scale + 1)
        colour = tuple(float(c) for c in _random_colours(rng, 1)[0])
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return canvas


def _colour_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth field of random colours (a few anchor colours blended bicubically) with fine grain."""
    anchors = rng.uniform(0.0, 255.0, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    field = cv2.resize(anchors.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, rng.uniform(0.0, 12.0), size=(height, width, 1)).astype(np.float32)
    return _to_uint8(field + grain)


def _marble(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Marble veins: a sine of a coordinate perturbed by fractal Perlin turbulence."""
    u, _ = _rotated_coords(rng, height, width)
    turbulence = sum(
        (0.5**octave) * np.abs(perlin_noise_2d((height, width), (2 ** (octave + 1),) * 2, rng)) for octave in range(4)
    )
    period = rng.uniform(16.0, 96.0)
    veins = np.sin(2.0 * math.pi * u / period + rng.uniform(2.0, 8.0) * turbulence)
    return _palette(0.5 * (veins + 1.0), _random_colours(rng, 3))


_Generator = Callable[[np.random.Generator, int, int], np.ndarray]
_PROCEDURAL: dict[str, _Generator] = {
    "noise": _value_noise,
    "stripes": _stripes,
    "checker": _checker,
    "blobs": _blobs,
    "colour_field": _colour_field,
    "marble": _marble,
}
PROCEDURAL_KINDS = tuple(_PROCEDURAL)


class ProceduralTextureSource:
    """Offline texture source: one of several procedural texture families, chosen uniformly.

    Args:
        kinds: subset of :data:`PROCEDURAL_KINDS` to draw from (default: all of them).
    """

    def __init__(self, kinds: Sequence[str] | None = None) -> None:
        kinds = tuple(PROCEDURAL_KINDS if kinds is None else kinds)
        unknown = [k for k in kinds if k not in _PROCEDURAL]
        if unknown or not kinds:
            raise ValueError(f"unknown or empty texture kinds {unknown}; valid: {PROCEDURAL_KINDS}")
        self.kinds = kinds

    def __repr__(self) -> str:
        return f"ProceduralTextureSource(kinds={self.kinds})"

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
        """A random procedural texture, RGB uint8 of shape ``size + (3,)``."""
        height, width = check_size(size)
        rng = check_rng(rng)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        return _PROCEDURAL[kind](rng, height, width)


def make_texture_source(root: str | os.PathLike[str] | None) -> TextureSource:
    """A :class:`FolderTextureSource` for ``root``, or procedural textures if ``root`` is None/empty."""
    if root is None or str(root) == "":
        return ProceduralTextureSource()
    return FolderTextureSource(root)
