"""Decoding + resizing of images and masks: the only code that reads pixel files.

Resizing is PIL's own (antialiased) ``Image.resize`` on the decoded image, which is exactly what
torchvision's ``Resize`` does on PIL images in the reference implementations, so scores are comparable
with published numbers. There is no crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kdad.data.errors import DatasetError

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
MASK_RESIZE_MODES = ("nearest", "bilinear_threshold")

# PIL raises these for missing, truncated, non-image and absurdly large files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_choice(value: str, allowed: tuple[str, ...] | list[str], option: str) -> str:
    """Raise a DatasetError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise DatasetError(f"unknown {option} '{value}': choose one of {', '.join(allowed)}.")
    return value


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header only: cheap enough to check every mask at setup."""
    try:
        with Image.open(path) as image:
            return image.size
    except _DECODE_ERRORS as exc:
        raise DatasetError(
            f"cannot read image header of {path}: {exc}. The file is missing, corrupt or not an image; "
            "re-extract it from the dataset archive or delete it."
        ) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        # 16-bit grayscale (common with industrial cameras): PIL's convert would clip everything above 255
        # to white, so scale the full 16-bit range to 8 bits instead.
        values = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
        image = Image.fromarray(np.round(values).astype(np.uint8))
    return image.convert("RGB")


def decode_image(path: Path, size: int, interpolation: str) -> np.ndarray:
    """RGB uint8 array [size, size, 3]; grayscale images (MVTec grid/screw/zipper) become 3-channel."""
    resample = INTERPOLATIONS[check_choice(interpolation, tuple(INTERPOLATIONS), "interpolation")]
    try:
        with Image.open(path) as image:
            rgb = _to_rgb(image)
        return np.asarray(rgb.resize((size, size), resample), dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DatasetError(
            f"cannot decode image {path}: {exc}. The file is corrupt or not an image; re-extract it from the "
            "dataset archive or delete it."
        ) from exc


def _binary_mask(image: Image.Image) -> np.ndarray:
    """Pixels > 0 in any non-alpha band: MVTec stores 255, VisA stores class ids (1, 2, ...), some
    conversions store RGB or palette masks. Palette images yield their indices, not colours, so a
    class-id mask saved with a palette still binarises correctly."""
    values = np.asarray(image)
    if values.ndim == 3:
        bands = [i for i, band in enumerate(image.getbands()) if band != "A"]
        values = values[..., bands].max(axis=-1)
    return values > 0


def decode_mask(path: Path, size: int, mode: str) -> np.ndarray:
    """Binary uint8 mask [size, size] in {0, 1}: binarised at load, then resized with ``mode``.

    "nearest": nearest-neighbour resize of the binary mask.
    "bilinear_threshold": bilinear resize of the 0/255 mask, then > 0.5 (i.e. >= 128 in uint8), which
    reproduces the reference code's ``Resize`` + ``ToTensor`` + ``gt > 0.5`` bit for bit.
    """
    check_choice(mode, MASK_RESIZE_MODES, "mask_resize")
    try:
        with Image.open(path) as image:
            binary = _binary_mask(image)
    except _DECODE_ERRORS as exc:
        raise DatasetError(
            f"cannot decode mask {path}: {exc}. The file is corrupt or not an image; re-extract it from the "
            "dataset archive or delete it."
        ) from exc
    if mode == "nearest":
        resized = Image.fromarray(binary.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(resized, dtype=np.uint8)
    resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(resized) >= 128).astype(np.uint8)
