"""DRAEM-style anomaly synthesis: a texture blended into the image through a Perlin mask.

Used by AAND (texture augmentation, clean probability 0.2, foreground masks) and by RD with Expert /
URD (no texture augmentation, always synthesise, GrabCut / Otsu / no foreground).
"""

from __future__ import annotations

import numpy as np

from kdad.data.synthesis._common import check_rgb_uint8, check_rng
from kdad.data.synthesis.perlin import perlin_mask
from kdad.data.synthesis.texture_augment import TextureAugmenter
from kdad.data.synthesis.textures import TextureSource

__all__ = ["DraemSynthesizer"]


class DraemSynthesizer:
    """Blend a (possibly augmented) texture into an image inside a random Perlin mask.

    With ``m`` the binary mask (Perlin mask AND foreground), ``t`` the texture and ``x`` the image,
    both as float RGB in [0, 1], and ``beta ~ U(beta_range)``::

        x_aug = x * (1 - m) + (1 - beta) * t * m + beta * x * m

    i.e. inside the mask the texture is pasted with opacity ``1 - beta``; outside, the image is
    returned bit-for-bit unchanged.

    Blending in [0, 1] RGB gives exactly the same tensor as blending after ImageNet normalisation:
    normalisation is a per-channel affine map ``N(v) = (v - mean) / std``, and the blend is an affine
    combination (weights ``1 - m``, ``(1 - beta) m`` and ``beta m`` sum to 1), and affine maps commute
    with affine combinations: ``N(sum w_i v_i) = sum w_i N(v_i)`` when ``sum w_i = 1``. So a reference
    implementation that blends normalised tensors and one that blends [0, 1] images define the same
    sample, and this single implementation, applied before normalisation, serves both AAND and URD.
    (The texture must of course be normalised like the image; the only remaining difference is the
    uint8 rounding of the output, at most 0.5/255 per pixel.)

    Args:
        texture_source: where textures come from (see :mod:`kdad.data.synthesis.textures`).
        beta_range: the texture opacity is ``1 - beta`` with ``beta ~ U(beta_range)``; DRAEM's
            ``rand * 0.8`` is (0.0, 0.8).
        clean_probability: probability of returning the image unchanged with an empty mask
            (AAND 0.2, URD 0.0).
        texture_augmenters: number of random texture augmenters (AAND 3, URD 0), see
            :class:`~kdad.data.synthesis.texture_augment.TextureAugmenter`.
        max_retries: how many further Perlin masks to draw when the first one (after the foreground
            cut) has at most ``min_mask_pixels`` pixels.
        min_mask_pixels: masks with this many pixels or fewer count as empty.
        perlin_min_exp, perlin_max_exp: Perlin resolution exponents, see
            :func:`~kdad.data.synthesis.perlin.perlin_mask`.
        perlin_threshold: Perlin binarisation threshold.
    """

    def __init__(
        self,
        texture_source: TextureSource,
        beta_range: tuple[float, float] = (0.0, 0.8),
        clean_probability: float = 0.0,
        texture_augmenters: int = 0,
        max_retries: int = 10,
        min_mask_pixels: int = 16,
        perlin_min_exp: int = 0,
        perlin_max_exp: int = 6,
        perlin_threshold: float = 0.5,
    ) -> None:
        if not 0.0 <= beta_range[0] <= beta_range[1] <= 1.0:
            raise ValueError(f"beta_range must satisfy 0 <= lo <= hi <= 1, got {beta_range}")
        if not 0.0 <= clean_probability <= 1.0:
            raise ValueError(f"clean_probability must be in [0, 1], got {clean_probability}")
        if max_retries < 0 or min_mask_pixels < 0:
            raise ValueError("max_retries and min_mask_pixels must be >= 0")
        self.texture_source = texture_source
        self.beta_range = (float(beta_range[0]), float(beta_range[1]))
        self.clean_probability = float(clean_probability)
        self.augmenter = TextureAugmenter(texture_augmenters)
        self.max_retries = int(max_retries)
        self.min_mask_pixels = int(min_mask_pixels)
        self.perlin_exps = (int(perlin_min_exp), int(perlin_max_exp))
        self.perlin_threshold = float(perlin_threshold)

    def __repr__(self) -> str:
        return (
            f"DraemSynthesizer(texture_source={self.texture_source!r}, beta_range={self.beta_range}, "
            f"clean_probability={self.clean_probability}, texture_augmenters={self.augmenter.n}, "
            f"max_retries={self.max_retries}, min_mask_pixels={self.min_mask_pixels})"
        )

    def sample_mask(
        self, shape: tuple[int, int], rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> np.ndarray:
        """Perlin mask AND foreground, redrawn up to ``max_retries`` times; may be all False."""
        if foreground is not None and foreground.shape != tuple(shape):
            raise ValueError(f"foreground shape {foreground.shape} does not match image shape {tuple(shape)}")
        mask = np.zeros(shape, dtype=bool)
        for _ in range(1 + self.max_retries):
            mask = perlin_mask(shape, rng, *self.perlin_exps, threshold=self.perlin_threshold)
            if foreground is not None:
                mask &= foreground.astype(bool, copy=False)
            if np.count_nonzero(mask) > self.min_mask_pixels:
                return mask
        return mask

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator, foreground: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Synthesise one anomaly.

        Args:
            image: HxWx3 uint8 RGB.
            rng: source of all randomness.
            foreground: optional bool HxW; the anomaly is confined to it.

        Returns:
            ``(augmented, mask)``: uint8 HxWx3 and bool HxW. ``mask`` is all False when the sample was
            left clean (``clean_probability``) or no usable mask was found; then ``augmented`` is a
            copy of ``image``. The label of the sample is ``mask.any()``.
        """
        check_rgb_uint8(image)
        rng = check_rng(rng)
        shape = image.shape[:2]
        # Always draw the clean/anomalous decision so the random stream does not depend on the
        # configuration of clean_probability.
        if rng.random() < self.clean_probability:
            return image.copy(), np.zeros(shape, dtype=bool)
        mask = self.sample_mask(shape, rng, foreground)
        if np.count_nonzero(mask) <= self.min_mask_pixels:
            return image.copy(), np.zeros(shape, dtype=bool)

        beta = np.float32(rng.uniform(*self.beta_range))
        texture = self.augmenter(self.texture_source.sample(rng, shape), rng)
        # Blend only the masked pixels: cheaper, and the rest of the image is exactly the input.
        inside = image[mask].astype(np.float32) / np.float32(255.0)
        pasted = texture[mask].astype(np.float32) / np.float32(255.0)
        blended = (np.float32(1.0) - beta) * pasted + beta * inside
        augmented = image.copy()
        augmented[mask] = np.clip(np.rint(blended * np.float32(255.0)), 0, 255).astype(np.uint8)
        return augmented, mask
