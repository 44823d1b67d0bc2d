"""The contract every synthetic category implements, and the retry loop that places its defects."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from kdad.data.synthetic_render import Rng, View

# A defect whose sampled position or size leaves (almost) nothing visible is drawn again with fresh random
# numbers from the same generator, which keeps the output deterministic.
MAX_ATTEMPTS = 16

T = TypeVar("T")


def min_defect_pixels(size: int) -> int:
    """Smallest mask area accepted: about 12 pixels at 256 px, scaled with the image area."""
    return max(3, int(round(12 * (size / 256) ** 2)))


class Category(ABC):
    """One synthetic product: renders normal images and each of its defect types with an exact mask."""

    name: str
    kind: str  # "texture" or "object"
    defects: tuple[str, ...]

    @abstractmethod
    def render(self, rng: Rng, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
        """An RGB float32 image in [0, 1] (before sensor effects) and a bool mask (all False if normal)."""

    def describe(self) -> str:
        return (self.__doc__ or "").strip().splitlines()[0]


def place_defect(view: View, size: int, attempt: Callable[[], tuple[T, np.ndarray]]) -> tuple[T, np.ndarray]:
    """Calls ``attempt() -> (canvas drawing, canvas defect alpha)`` until the warped mask is large enough.

    Returns the canvas drawing and the output-space bool mask.
    """
    need = min_defect_pixels(size)
    for _ in range(MAX_ATTEMPTS):
        img, alpha = attempt()
        mask = view.warp(alpha.astype(np.float32)) >= 0.5
        if int(mask.sum()) >= need:
            return img, mask
    raise RuntimeError(f"could not place a visible defect in {MAX_ATTEMPTS} attempts (image size {size})")
