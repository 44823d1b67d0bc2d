"""Small input checks and conversions shared by the synthesis blocks."""

from __future__ import annotations

import numpy as np


def check_rng(rng: object) -> np.random.Generator:
    """Reject anything but a ``numpy.random.Generator``.

    Every block must draw from the generator it is handed (never from global state) so that a
    DataLoader worker seeded once gives reproducible pseudo-anomalies; failing loudly on e.g. an int
    seed or ``np.random`` (the legacy module) catches that mistake at the call site.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def check_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an HxWx3 uint8 RGB image."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an HxWx3 array, got shape {getattr(image, 'shape', None)}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {image.dtype}")
    return image


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate an (H, W) size with positive entries."""
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (H, W), got {size}")
    return height, width


def to_float01(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 -> float32 in [0, 1]; float input is taken to already be in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=True)
    raise ValueError(f"image must be uint8 or float, got {image.dtype}")
