"""Anomaly synthesis blocks: pseudo-anomalies on normal training images.

All blocks work on single numpy samples (HxWx3 uint8 RGB images, HxW bool masks) so they can run in
DataLoader workers, and draw all randomness from a ``numpy.random.Generator`` passed in by the caller:
the same generator state gives the same output. See ``docs/synthesis.md``.
"""

from kdad.data.synthesis.draem import DraemSynthesizer
from kdad.data.synthesis.foreground import FOREGROUND_METHODS, foreground_mask
from kdad.data.synthesis.perlin import perlin_mask, perlin_noise_2d
from kdad.data.synthesis.simplex import SimplexNoisePatch, fractal_bound, simplex_noise_3d
from kdad.data.synthesis.texture_augment import TEXTURE_AUGMENTER_NAMES, TextureAugmenter
from kdad.data.synthesis.textures import (
    PROCEDURAL_KINDS,
    FolderTextureSource,
    ProceduralTextureSource,
    TextureSource,
    make_texture_source,
)

__all__ = [
    "FOREGROUND_METHODS",
    "PROCEDURAL_KINDS",
    "TEXTURE_AUGMENTER_NAMES",
    "DraemSynthesizer",
    "FolderTextureSource",
    "ProceduralTextureSource",
    "SimplexNoisePatch",
    "TextureAugmenter",
    "TextureSource",
    "foreground_mask",
    "fractal_bound",
    "make_texture_source",
    "perlin_mask",
    "perlin_noise_2d",
    "simplex_noise_3d",
]
