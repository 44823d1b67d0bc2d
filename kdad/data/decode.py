"""Decoding + resizing of images and masks for the data layer.

Image pixels are decoded by ``kdad.imaging`` (numpy + Pillow, shared with the standalone inferencer in
``kdad.deploy``), so training, testing and deployment see the same pixels. Resizing is PIL's own
(antialiased) ``Image.resize`` on the decoded image, which is exactly what torchvision's ``Resize`` does on
PIL images in the reference implementations, so scores are comparable with published numbers. There is no
crop. This module adds the data layer's errors (DatasetError) and the mask decoding.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from kdad import errors
from kdad.data.errors import DatasetError
from kdad.imaging import DECODE_ERRORS, INTERPOLATIONS, ImageReadError, open_rgb, resize_image

__all__ = [
    "INTERPOLATIONS",
    "MASK_RESIZE_MODES",
    "check_choice",
    "decode_image",
    "decode_mask",
    "mask_is_empty",
    "read_size",
]

MASK_RESIZE_MODES = ("nearest", "bilinear_threshold")

T = TypeVar("T")


def check_choice(value: T, allowed: Collection[T], option: str) -> T:
    """:func:`kdad.errors.check_choice` for data options: raises a DatasetError, the data layer's one error type."""
    return errors.check_choice(value, allowed, option, error=DatasetError)


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only: cheap enough to check every mask at setup."""
    try:
        with Image.open(path) as image:
            return image.size
    except DECODE_ERRORS as exc:
        raise DatasetError(
            f"cannot read image header of {path}: {exc}. The file is missing, corrupt or not an image; "
            "re-extract it from the dataset archive or delete it."
        ) from exc


def decode_image(path: Path, size: int, interpolation: str) -> np.ndarray:
    """RGB uint8 array [size, size, 3]; grayscale images (MVTec grid/screw/zipper) become 3-channel.

    The conversion rules (16-bit scaling, alpha dropped) are ``kdad.imaging.to_rgb``'s.
    """
    check_choice(interpolation, tuple(INTERPOLATIONS), "interpolation")
    try:
        rgb = open_rgb(path)
    except ImageReadError as exc:
        raise DatasetError(
            f"cannot decode image {path}: {exc.reason}. The file is corrupt or not an image; re-extract it from "
            "the dataset archive or delete it."
        ) from exc
    return np.asarray(resize_image(rgb, size, interpolation), dtype=np.uint8)


def _binary_mask(image: Image.Image) -> np.ndarray:
    """Pixels > 0 in any non-alpha band: MVTec stores 255, VisA stores class ids (1, 2, ...), some
    conversions store RGB or palette masks. Palette images yield their indices, not colours, so a
    class-id mask saved with a palette still binarises correctly."""
    values = np.asarray(image)
    if values.ndim == 3:
        bands = [i for i, band in enumerate(image.getbands()) if band != "A"]
        values = values[..., bands].max(axis=-1)
    return values > 0


def _read_binary_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return _binary_mask(image)
    except DECODE_ERRORS as exc:
        raise DatasetError(
            f"cannot decode mask {path}: {exc}. The file is corrupt or not an image; re-extract it from the "
            "dataset archive or delete it."
        ) from exc


def mask_is_empty(path: Path) -> bool:
    """True when no pixel of the mask at ``path`` is set (the binarisation of ``decode_mask``, at full size): how
    benchmarks that label images by their mask (KSDD2) tell normal images from anomalous ones."""
    return not _read_binary_mask(path).any()


def decode_mask(path: Path | Sequence[Path], size: int, mode: str) -> np.ndarray:
    """Binary uint8 mask [size, size] in {0, 1}: binarised at load, then resized with ``mode``.

    "nearest": nearest-neighbour resize of the binary mask.
    "bilinear_threshold": bilinear resize of the 0/255 mask, then > 0.5 (i.e. >= 128 in uint8), which
    reproduces the reference code's ``Resize`` + ``ToTensor`` + ``gt > 0.5`` bit for bit.

    Several files (MVTec LOCO AD ships one per annotated region of an image) are merged at full size, as the union
    of their binarised pixels, before the one resize: resizing each and merging after would differ at region
    borders under "bilinear_threshold".
    """
    check_choice(mode, MASK_RESIZE_MODES, "mask_resize")
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    binary = _read_binary_mask(paths[0])
    for other in paths[1:]:
        region = _read_binary_mask(other)
        if region.shape != binary.shape:
            raise DatasetError(
                f"mask {other} is {region.shape[1]}x{region.shape[0]} but {paths[0]}, a mask of the same image, is "
                f"{binary.shape[1]}x{binary.shape[0]}. Re-extract both from the dataset archive."
            )
        binary |= region
    if mode == "nearest":
        resized = Image.fromarray(binary.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(resized, dtype=np.uint8)
    resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(resized) >= 128).astype(np.uint8)
