"""2-D Perlin noise and DRAEM-style binary Perlin masks.

The mask recipe follows DRAEM (Zavrtanik et al., ICCV 2021): Perlin noise with a per-axis lattice
resolution of ``2**u`` (``u`` drawn independently per axis), rotated by a random angle in
[-90, 90] degrees, then thresholded at 0.5. The resulting blobs are the shapes of the synthetic
anomalies used by DRAEM-derived methods (AAND, RD with Expert).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from kdad.data.synthesis._common import check_rng, check_size

__all__ = ["perlin_mask", "perlin_noise_2d"]

# sqrt(2) maps the theoretical range of 2-D gradient noise with unit gradients, [-sqrt(2)/2, sqrt(2)/2],
# onto [-1, 1]; DRAEM uses the same scaling, so its 0.5 threshold keeps its meaning here.
_PERLIN_SCALE = np.float32(math.sqrt(2.0))


def _fade(t: np.ndarray) -> np.ndarray:
    # Perlin's quintic 6t^5 - 15t^4 + 10t^3: zero first and second derivative at lattice points,
    # which avoids visible creases along the cell borders.
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _lattice_coords(length: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell index and in-cell offset for pixel positions ``i * res / length``.

    Using continuous lattice coordinates (rather than repeating each gradient ``length / res`` times)
    means any image size works with any resolution: there is no divisibility requirement, so nothing
    has to be generated larger and cropped, and exactly ``res`` cells span the axis.
    """
    pos = np.arange(length, dtype=np.float32) * np.float32(res / length)
    cell = np.minimum(pos.astype(np.int64), res - 1)
    return cell, pos - cell.astype(np.float32)


def perlin_noise_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of ``shape`` with ``res`` lattice cells per axis, float32 in ~[-1, 1].

    Gradients are random unit vectors on the ``(res_y + 1) x (res_x + 1)`` lattice (not tiled: the
    noise does not need to wrap around).
    """
    height, width = check_size(shape)
    res_y, res_x = (int(r) for r in res)
    if res_y < 1 or res_x < 1:
        raise ValueError(f"res must be >= 1 per axis, got {res}")
    rng = check_rng(rng)

    angles = rng.uniform(0.0, 2.0 * math.pi, size=(res_y + 1, res_x + 1))
    grad_y = np.sin(angles).astype(np.float32)
    grad_x = np.cos(angles).astype(np.float32)

    cy, fy = _lattice_coords(height, res_y)
    cx, fx = _lattice_coords(width, res_x)
    fy, fx = fy[:, None], fx[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # Dot product of the corner's gradient with the offset from that corner to the pixel. Two 1-D
        # takes (rows, then columns) are much cheaper than one 2-D fancy index.
        gy = grad_y[cy + dy][:, cx + dx]
        gx = grad_x[cy + dy][:, cx + dx]
        return gy * (fy - dy) + gx * (fx - dx)

    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    u, v = _fade(fx), _fade(fy)
    top = n00 + u * (n01 - n00)
    bottom = n10 + u * (n11 - n10)
    return (_PERLIN_SCALE * (top + v * (bottom - top))).astype(np.float32)


def _rotate(noise: np.ndarray, angle_deg: float) -> np.ndarray:
    height, width = noise.shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle_deg, 1.0)
    # Constant 0 fill (below the 0.5 threshold) as in DRAEM's imgaug rotation: the corners that
    # rotate in from outside never become anomalous.
    return cv2.warpAffine(
        noise, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    min_exp: int = 0,
    max_exp: int = 6,
    threshold: float = 0.5,
    max_rotation: float = 90.0,
) -> np.ndarray:
    """Binary DRAEM Perlin mask, bool HxW.

    Args:
        shape: (H, W) of the mask.
        rng: source of all randomness.
        min_exp, max_exp: the lattice resolution per axis is ``2**u`` with ``u`` drawn independently
            per axis from ``{min_exp, ..., max_exp - 1}`` (``torch.randint(min_exp, max_exp)``
            semantics; DRAEM uses 0 and 6, i.e. 1 to 32 cells).
        threshold: noise values strictly above it are in the mask.
        max_rotation: the noise is rotated by an angle uniform in [-max_rotation, max_rotation] degrees.
    """
    if not 0 <= min_exp < max_exp:
        raise ValueError(f"need 0 <= min_exp < max_exp, got {min_exp}, {max_exp}")
    rng = check_rng(rng)
    exps = rng.integers(min_exp, max_exp, size=2)
    noise = perlin_noise_2d(shape, (2 ** int(exps[0]), 2 ** int(exps[1])), rng)
    angle = float(rng.uniform(-max_rotation, max_rotation))
    if angle != 0.0:
        noise = _rotate(noise, angle)
    return noise > threshold
