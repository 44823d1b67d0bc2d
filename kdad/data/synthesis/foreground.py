"""Foreground masks that restrict where synthetic anomalies may appear.

For object categories (e.g. MVTec bottle, screw) an anomaly pasted on the background is not a
plausible defect, so AAND and RD with Expert intersect the Perlin mask with a foreground estimate.
Textures use ``none`` (the whole image is foreground).

A foreground mask must never silently disable synthesis: if a method finds no foreground at all, the
whole image is used instead and a warning names the method.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import cv2
import numpy as np

from kdad.data.synthesis._common import check_rgb_uint8

__all__ = ["FOREGROUND_METHODS", "foreground_mask"]


def _blurred_gray(image: np.ndarray, sigma: float) -> np.ndarray:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if sigma <= 0:
        return gray
    # Blurring first removes texture and noise so the threshold follows the object's outline.
    return cv2.GaussianBlur(gray, (0, 0), sigmaX=float(sigma))


def _none(image: np.ndarray) -> np.ndarray:
    return np.ones(image.shape[:2], dtype=bool)


def _threshold(image: np.ndarray, threshold: float = 127.0, sigma: float = 8.0, invert: bool = False) -> np.ndarray:
    """Blurred grayscale (0-255) > threshold; ``invert`` for dark objects on a bright background."""
    mask = _blurred_gray(image, sigma) > threshold
    return ~mask if invert else mask


def _otsu(image: np.ndarray, sigma: float = 8.0, invert: bool = False) -> np.ndarray:
    """Otsu's threshold on the blurred grayscale image; bright side is foreground unless ``invert``."""
    _, binary = cv2.threshold(_blurred_gray(image, sigma), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    mask = binary > 0
    return ~mask if invert else mask


# GrabCut's GMM initialisation uses OpenCV's global RNG; reseeding it makes the mask a pure function
# of the image (it does reset OpenCV's global RNG, which nothing else in kdad relies on).
_GRABCUT_RNG_SEED = 0


def _grabcut(image: np.ndarray, iterations: int = 11) -> np.ndarray:
    """GrabCut initialised with the image rectangle inset by 1 px; probable + definite foreground."""
    height, width = image.shape[:2]
    if height < 3 or width < 3:
        return np.ones((height, width), dtype=bool)
    labels = np.zeros((height, width), dtype=np.uint8)
    background_model = np.zeros((1, 65), dtype=np.float64)
    foreground_model = np.zeros((1, 65), dtype=np.float64)
    cv2.setRNGSeed(_GRABCUT_RNG_SEED)
    cv2.grabCut(
        np.ascontiguousarray(image), labels, (1, 1, width - 2, height - 2),
        background_model, foreground_model, int(iterations), cv2.GC_INIT_WITH_RECT,
    )  # fmt: skip
    return (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)


def _disc(image: np.ndarray, radius: float = 0.45) -> np.ndarray:
    """Central disc whose radius is ``radius`` times the image height."""
    height, width = image.shape[:2]
    rows, cols = np.ogrid[:height, :width]
    centre_r, centre_c = (height - 1) / 2.0, (width - 1) / 2.0
    return (rows - centre_r) ** 2 + (cols - centre_c) ** 2 <= (radius * height) ** 2


def _rect(image: np.ndarray, fraction: tuple[float, float] = (0.7, 0.7)) -> np.ndarray:
    """Central rectangle covering ``fraction`` = (height, width) fractions of the image."""
    height, width = image.shape[:2]
    box_h, box_w = round(fraction[0] * height), round(fraction[1] * width)
    top, left = (height - box_h) // 2, (width - box_w) // 2
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + box_h, left : left + box_w] = True
    return mask


_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "none": _none,
    "threshold": _threshold,
    "otsu": _otsu,
    "grabcut": _grabcut,
    "disc": _disc,
    "rect": _rect,
}
FOREGROUND_METHODS = tuple(_METHODS)


def foreground_mask(image: np.ndarray, method: str = "none", **params: object) -> np.ndarray:
    """Foreground estimate of an RGB uint8 image, bool HxW (True = anomalies allowed).

    Methods and their parameters:
        ``none``: everything is foreground.
        ``threshold``: ``threshold`` (0-255, default 127), ``sigma`` (Gaussian blur, default 8),
            ``invert`` (default False) -- blurred grayscale > threshold.
        ``otsu``: ``sigma`` (default 8), ``invert`` (default False) -- Otsu on blurred grayscale.
        ``grabcut``: ``iterations`` (default 11) -- GrabCut from the image rectangle inset by 1 px.
        ``disc``: ``radius`` (fraction of H, default 0.45) -- central disc.
        ``rect``: ``fraction`` ((h, w) fractions, default (0.7, 0.7)) -- central rectangle.

    Raises:
        ValueError: unknown method (the message lists the valid ones).
        TypeError: a parameter the method does not take.

    Warns:
        UserWarning: the method found no foreground; the all-True mask is returned instead.
    """
    if method not in _METHODS:
        valid = ", ".join(FOREGROUND_METHODS)
        raise ValueError(f"unknown foreground method {method!r}; valid methods: {valid}")
    check_rgb_uint8(image)
    mask = _METHODS[method](image, **params)
    if not mask.any():
        warnings.warn(
            f"foreground method {method!r} produced an empty mask; using the whole image as foreground",
            stacklevel=2,
        )
        return np.ones(image.shape[:2], dtype=bool)
    return mask
