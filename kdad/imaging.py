"""Pixel decoding shared by training, testing and deployment: numpy + Pillow only, no torch.

This is the single implementation of "file -> RGB uint8 -> model resolution". The data layer
(``kdad.data.decode``) and the standalone inferencer (``kdad.deploy``) both call it, so a deployed
model sees exactly the pixels it was trained and evaluated on.

Conversion rules (``to_rgb``):

- 16-bit grayscale ("I;16", "I;16B", "I;16L", common with industrial cameras) is scaled from the full
  16-bit range to 8 bits; Pillow's own ``convert`` would clip everything above 255 to white.
- Grayscale ("L"), palette ("P"), CMYK, YCbCr, ... go through Pillow's ``convert("RGB")``.
- Alpha ("RGBA", "LA", palette transparency) is dropped, not composited: the colour stored under a
  transparent pixel is kept. Training has always decoded this way, and compositing on a background
  would hand the deployed model pixels it never saw.

Resizing is Pillow's own (antialiased) ``Image.resize``, which is what torchvision's ``Resize`` does on
PIL images in the reference implementations. EXIF orientation is not applied (neither does training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# kdad.errors imports nothing from kdad (and no torch): this module stays importable without torch.
from kdad.errors import check_choice

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

# Pillow raises these for missing, truncated, non-image and absurdly large files.
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageReadError(ValueError):
    """An image file is missing, truncated, corrupt or not an image.

    ``path`` is the file, ``reason`` what Pillow reported; the message names both.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of ``image`` (see the module docstring for 16-bit and alpha handling)."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
        image = Image.fromarray(np.round(values).astype(np.uint8))
    return image.convert("RGB")


def open_rgb(path: Path | str) -> Image.Image:
    """The decoded RGB Pillow image of ``path`` at its original size; ImageReadError if unreadable."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except DECODE_ERRORS as exc:
        raise ImageReadError(path, str(exc) or type(exc).__name__) from exc


def read_rgb(path: Path | str) -> np.ndarray:
    """RGB uint8 array [height, width, 3] of ``path`` at its original size; ImageReadError if unreadable."""
    return np.asarray(open_rgb(path), dtype=np.uint8)


def resample_filter(interpolation: str) -> Image.Resampling:
    """The Pillow filter for an interpolation name; ``ConfigError`` (a ``ValueError``) naming the choices otherwise."""
    return INTERPOLATIONS[check_choice(interpolation, INTERPOLATIONS, "interpolation")]


def resize_image(image: Image.Image, size: int, interpolation: str) -> Image.Image:
    """``image`` resized to ``size`` x ``size`` with Pillow's antialiased filter (no crop, no aspect kept)."""
    return image.resize((size, size), resample_filter(interpolation))


def resize_rgb(rgb: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """RGB uint8 array [size, size, 3]: ``rgb`` (uint8 [H, W, 3]) resized like ``resize_image``.

    The array round trip through Pillow is lossless, so this equals resizing the decoded Pillow image.
    """
    check_rgb_array(rgb)
    return np.asarray(resize_image(Image.fromarray(rgb), size, interpolation), dtype=np.uint8)


def check_rgb_array(rgb: np.ndarray, name: str = "image") -> None:
    """ValueError unless ``rgb`` is a uint8 [H, W, 3] array: the one layout every caller agrees on."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"{name} must be an RGB uint8 array [height, width, 3], got {got}; use kdad.imaging.read_rgb.")
