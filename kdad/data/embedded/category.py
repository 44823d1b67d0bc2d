"""The contract every synthetic category implements, and how its defects are placed (never failing)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import numpy as np

from kdad.data.embedded.render import Rng, View

# A defect whose sampled position or size leaves (almost) nothing visible is drawn again with fresh random
# numbers from the same generator, which keeps the output deterministic.
MAX_ATTEMPTS = 16

# The fallback spot covers the normal rendering with this much of a pure colour (a corner of the RGB cube).
# Every channel then moves the same way at every pixel of the spot, so the sensor's blur cannot average the
# change away, and the corner is the one farthest from the spot's pixels, so every pixel changes a lot.
_SPOT_OPACITY = 0.8
_CORNERS = np.array([[r, g, b] for r in (0.0, 1.0) for g in (0.0, 1.0) for b in (0.0, 1.0)], np.float32)

# One entry per fallback placement, collected by ``fallback_tally`` (a context variable: per thread).
_TALLY: ContextVar[list[int] | None] = ContextVar("kdad_synthetic_fallbacks", default=None)

T = TypeVar("T")


def min_defect_pixels(size: int) -> int:
    """Smallest mask area accepted: about 12 pixels at 256 px, scaled with the image area."""
    return max(3, int(round(12 * (size / 256) ** 2)))


def fallback_radius(size: int) -> float:
    """Radius of the fallback spot: 4 px at 256 px (about 50 pixels), never under 2 px (13 pixels).

    Its area always exceeds ``min_defect_pixels(size)`` (about 50 k^2 against 12 k^2, and 13 against 3).
    """
    return max(2.0, 4.0 * size / 256)


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


@contextmanager
def fallback_tally() -> Iterator[list[int]]:
    """Collects the fallback placements made in this thread while open: one entry each."""
    tally: list[int] = []
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def place_defect(
    view: View,
    size: int,
    attempt: Callable[[], tuple[T, np.ndarray]],
    compose: Callable[[T], np.ndarray],
    normal: Callable[[], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Draws a defect until its mask is large enough; returns the output image and its bool mask.

    ``attempt() -> (canvas drawing, canvas defect alpha)`` draws one try with fresh random numbers,
    ``compose(drawing)`` makes the output image (before sensor effects) of a drawing, and ``normal()`` the
    output image without the defect (only called by the fallback).

    If no try in ``MAX_ATTEMPTS`` is large enough (a numeric library that rounds a 3 px imprint below half
    coverage, say), the fallback paints a spot of guaranteed size and contrast on the normal image where the
    last try changed it most (see ``_fallback``): no draw ever fails, and the mask labels exactly the pixels
    that differ from the normal rendering.
    """
    need = min_defect_pixels(size)
    for _ in range(MAX_ATTEMPTS):
        drawing, alpha = attempt()
        mask = view.mask(alpha)
        if int(mask.sum()) >= need:
            return compose(drawing), mask
    tally = _TALLY.get()
    if tally is not None:
        tally.append(1)
    return _fallback(view, compose(drawing), normal())


def _fallback(view: View, last: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normal image with a spot where the last attempt ``last`` was drawn, and the spot as the mask.

    The last attempt itself is dropped: what it drew is too small or too faint to label, and keeping it
    would leave changed pixels outside the mask.
    """
    mask = _disc(view.size, _spot_centre(view, last, normal), fallback_radius(view.size))
    return _stamp(normal, mask), mask


def _spot_centre(view: View, last: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Where the last attempt changed the output most, else where the canvas centre (the part) lands."""
    change = np.abs(last - normal).sum(-1)
    if float(change.max()) > 0:
        y, x = np.unravel_index(int(np.argmax(change)), change.shape)
        centre = np.array([x, y], np.float64)
    else:
        centre = view.to_output(np.full(2, (view.canvas - 1) / 2))
    # Kept whole inside the image, so the spot always has its full area.
    radius = fallback_radius(view.size)
    return np.clip(centre, radius, view.size - 1 - radius)


def _disc(size: int, centre: np.ndarray, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2


def _stamp(normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``normal`` with the pixels in ``mask`` pulled towards the RGB corner farthest from all of them."""
    pixels = np.clip(normal[mask], 0.0, 1.0)
    nearest = np.abs(pixels[None] - _CORNERS[:, None]).sum(-1).min(1)  # per corner, its closest pixel
    corner = _CORNERS[int(np.argmax(nearest))]
    out = normal.astype(np.float32, copy=True)
    out[mask] = (1 - _SPOT_OPACITY) * out[mask] + np.float32(_SPOT_OPACITY) * corner
    return out
