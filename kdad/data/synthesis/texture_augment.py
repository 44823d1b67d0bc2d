"""DRAEM/AAND texture augmentation: ``n`` augmenters picked at random out of ten, applied in order.

DRAEM and AAND perturb each anomaly texture with three imgaug augmenters drawn without replacement
from a fixed list of ten. imgaug is unmaintained, so each one is replaced here by the closest
albumentations 2 transform, or by a few lines of numpy/PIL where albumentations has no equivalent
with the same semantics:

==========================================  ===================================================
imgaug (DRAEM / AAND)                       here
==========================================  ===================================================
GammaContrast((0.5, 2.0), per_channel)      numpy LUT, gamma ~ U(0.5, 2) drawn per channel
                                            (``A.RandomGamma`` has one gamma for all channels)
MultiplyAndAddToBrightness(0.8-1.2, +-30)   ``A.RandomBrightnessContrast`` (x0.8-1.2, +-30/255 of
                                            max) -- on RGB rather than on the luma channel
pillike.EnhanceSharpness()                  ``PIL.ImageEnhance.Sharpness``, factor ~ U(0, 2)
AddToHueAndSaturation((-50, 50))            ``A.HueSaturationValue`` hue +-35 (OpenCV 0-180 hue
                                            units = 50 on imgaug's 0-255 scale), saturation +-50
Solarize(0.5, threshold=(32, 128))          ``A.Solarize`` p=0.5, threshold 32/255-128/255
Posterize()                                 ``A.Posterize`` 1-8 bits
Invert()                                    ``A.InvertImg``
pillike.Autocontrast()                      ``A.AutoContrast``
pillike.Equalize()                          ``A.Equalize``
Affine(rotate=(-45, 45))                    ``A.Affine`` rotate +-45 deg, black fill as in imgaug
==========================================  ===================================================

Determinism: albumentations transforms keep their own random state; before every use the transform
is re-seeded with a seed drawn from the caller's generator (``set_random_seed``), so the output is
a function of the generator alone. This mutates the transform, so one :class:`TextureAugmenter`
must not be shared between threads (DataLoader worker processes each get their own copy).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
from PIL import Image, ImageEnhance

from kdad.data.synthesis._common import check_rgb_uint8, check_rng

__all__ = ["TEXTURE_AUGMENTER_NAMES", "TextureAugmenter"]


class _PerChannelGamma:
    """out = 255 * (in / 255) ** gamma_c with gamma_c ~ U(low, high) independently per channel."""

    def __init__(self, low: float = 0.5, high: float = 2.0) -> None:
        self.low, self.high = low, high

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        gammas = rng.uniform(self.low, self.high, size=3)
        levels = np.arange(256, dtype=np.float64) / 255.0
        luts = np.rint(255.0 * levels[:, None] ** gammas[None, :]).astype(np.uint8)  # (256, 3)
        return np.stack([luts[image[..., c], c] for c in range(3)], axis=-1)


class _PilSharpness:
    """PIL sharpness enhancement: factor 0 = smoothed, 1 = original, 2 = sharpened (imgaug pillike)."""

    def __init__(self, low: float = 0.0, high: float = 2.0) -> None:
        self.low, self.high = low, high

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        factor = float(rng.uniform(self.low, self.high))
        return np.asarray(ImageEnhance.Sharpness(Image.fromarray(image)).enhance(factor))


class _Albumentations:
    """Adapter: seed an albumentations transform from the caller's generator, then apply it."""

    def __init__(self, transform: A.BasicTransform) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.transform.set_random_seed(int(rng.integers(0, 2**32)))
        return self.transform(image=image)["image"]


def _build_augmenters() -> dict[str, _PerChannelGamma | _PilSharpness | _Albumentations]:
    return {
        "gamma": _PerChannelGamma(0.5, 2.0),
        "brightness": _Albumentations(A.RandomBrightnessContrast(brightness_limit=30 / 255, contrast_limit=0.2, p=1.0)),
        "sharpness": _PilSharpness(0.0, 2.0),
        "hue_saturation": _Albumentations(
            A.HueSaturationValue(hue_shift_limit=35, sat_shift_limit=50, val_shift_limit=0, p=1.0)
        ),
        "solarize": _Albumentations(A.Solarize(threshold_range=(32 / 255, 128 / 255), p=0.5)),
        "posterize": _Albumentations(A.Posterize(num_bits=(1, 8), p=1.0)),
        "invert": _Albumentations(A.InvertImg(p=1.0)),
        "autocontrast": _Albumentations(A.AutoContrast(p=1.0)),
        "equalize": _Albumentations(A.Equalize(p=1.0)),
        "rotate": _Albumentations(A.Affine(rotate=(-45, 45), border_mode=0, fill=0, p=1.0)),
    }


TEXTURE_AUGMENTER_NAMES = tuple(_build_augmenters())


class TextureAugmenter:
    """Apply ``n`` distinct augmenters, drawn at random from a pool, in random order.

    Args:
        n: how many augmenters per texture. ``0`` returns the texture unchanged (RD with Expert);
            AAND and DRAEM use 3.
        names: the pool, a subset of :data:`TEXTURE_AUGMENTER_NAMES` (default: all ten).
    """

    def __init__(self, n: int = 3, names: Sequence[str] | None = None) -> None:
        pool = _build_augmenters()
        self.names = tuple(TEXTURE_AUGMENTER_NAMES if names is None else names)
        unknown = [name for name in self.names if name not in pool]
        if unknown:
            raise ValueError(f"unknown texture augmenters {unknown}; valid: {TEXTURE_AUGMENTER_NAMES}")
        if not 0 <= n <= len(self.names):
            raise ValueError(f"n must be in [0, {len(self.names)}], got {n}")
        self.n = int(n)
        self._augmenters = [pool[name] for name in self.names]

    def __repr__(self) -> str:
        return f"TextureAugmenter(n={self.n}, names={self.names})"

    def __call__(self, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment an RGB uint8 texture; returns an RGB uint8 array of the same shape."""
        check_rgb_uint8(texture, "texture")
        rng = check_rng(rng)
        if self.n == 0:
            return texture
        chosen = rng.choice(len(self._augmenters), size=self.n, replace=False)
        out = np.ascontiguousarray(texture)
        for index in chosen:
            out = self._augmenters[int(index)](out, rng)
        return np.ascontiguousarray(out, dtype=np.uint8)
