"""Vectorised 3-D simplex noise and the RD++ simplex-noise patch.

RD++ (Tien et al., CVPR 2023) makes a pseudo-anomalous copy of each training image by adding a small
rectangle of fractal 3-D simplex noise (the third axis runs over the colour channels) to the image
in [0, 1] RGB, before ImageNet normalisation.

The noise is classic simplex noise (Perlin 2001, in the formulation popularised by Gustavson), with a
permutation table drawn from the caller's generator; it is evaluated for all points at once with
numpy instead of point by point.

RD++'s released code draws OpenSimplex noise instead (``dataset/noise.py``, a port of lmas/opensimplex), a
different lattice with a different output scale: at the same ``frequency`` one octave of it has about 0.74x the
root mean square of classic simplex and features about 1.84x as large (measured, see ``OPENSIMPLEX_AMPLITUDE``).
kdad does not reimplement OpenSimplex; ``calibration="opensimplex"`` (the default of :class:`SimplexNoisePatch`,
i.e. of RD++ in kdad) scales classic simplex's amplitude and lattice by those two measured factors, so that the
patch has the released field's amplitude, maximum and smoothness at the released settings (held by
``tests/test_parity_rd.py`` against the recorded statistics of the released generator). ``calibration="none"``
is plain classic simplex, RD++'s noise in kdad before (about 1.3x the released root mean square, finer).
"""

from __future__ import annotations

import numpy as np

from kdad.data.synthesis._common import check_rng, to_float01
from kdad.errors import check_choice

__all__ = ["SimplexNoisePatch", "fractal_bound", "simplex_noise_3d"]

# Skew / unskew factors for 3-D: the skewed lattice turns the cube grid into tetrahedra (simplices).
_F3 = 1.0 / 3.0
_G3 = 1.0 / 6.0
# The 12 gradient directions: midpoints of the cube's edges.
_GRADIENTS = np.array(
    [
        [1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0],
        [1, 0, 1], [-1, 0, 1], [1, 0, -1], [-1, 0, -1],
        [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1],
    ],
    dtype=np.float64,
)  # fmt: skip
# Scales the summed corner contributions to roughly [-1, 1].
_OUTPUT_SCALE = 32.0
# Radius^2 of each corner's kernel; 0.6 is the usual choice (continuous across simplex borders).
_KERNEL_R2 = 0.6

# Classic simplex matched to the OpenSimplex generator of RD++'s released code (dataset/noise.py @ 7f2ceb7, run as
# plain Python outside the repository). One octave far from the origin, 32 released seeds vs 128 kdad permutations:
# root mean square 0.315 (released) vs 0.425 (classic) -> amplitude x 0.741; lag-0.37 correlation 0.704 vs 0.260,
# equal when classic's coordinates are scaled by 0.543 -> features x 1.84. With both, over 64 seeds, the 6-octave
# (persistence 0.6) and 1-octave fields at frequency 4-32, 31-64 px, match the released root mean square within
# 3 %, its maximum within 14 % (OpenSimplex's tails are a little heavier) and its neighbour correlation within 0.01
# (kdad/methods/rdpp/README.md, "Pseudo-anomalies").
OPENSIMPLEX_AMPLITUDE = 0.741
OPENSIMPLEX_LATTICE = 0.543
CALIBRATIONS = ("opensimplex", "none")


def _permutation_table(rng: np.random.Generator) -> np.ndarray:
    # Doubled so that perm[a + perm[b]] never needs a modulo (a, perm[b] < 256).
    perm = rng.permutation(256)
    return np.concatenate([perm, perm])


def _corner_contribution(
    perm: np.ndarray, cells: tuple[np.ndarray, ...], offsets: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Kernel-weighted gradient dot product of one simplex corner for every point."""
    ci, cj, ck = cells
    x, y, z = offsets
    grad = _GRADIENTS[perm[ci + perm[cj + perm[ck]]] % 12]
    t = _KERNEL_R2 - x * x - y * y - z * z
    dot = grad[:, 0] * x + grad[:, 1] * y + grad[:, 2] * z
    t = np.maximum(t, 0.0)
    t2 = t * t
    return t2 * t2 * dot


def _simplex_points(x: np.ndarray, y: np.ndarray, z: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Simplex noise at flat arrays of points (x, y, z), float64 in ~[-1, 1]."""
    skew = (x + y + z) * _F3
    i, j, k = np.floor(x + skew), np.floor(y + skew), np.floor(z + skew)
    unskew = (i + j + k) * _G3
    x0, y0, z0 = x - (i - unskew), y - (j - unskew), z - (k - unskew)

    # The simplex containing a point is given by the order of its in-cell offsets. Ranking with
    # ">=" (ties broken x before y before z) is a strict total order, so the ranks are always a
    # permutation of {0, 1, 2}: the largest axis steps first, the smallest never.
    x_ge_y, x_ge_z, y_ge_z = x0 >= y0, x0 >= z0, y0 >= z0
    rank_x = x_ge_y.astype(np.int64) + x_ge_z
    rank_y = (~x_ge_y).astype(np.int64) + y_ge_z
    rank_z = (~x_ge_z).astype(np.int64) + ~y_ge_z
    first = (rank_x == 2, rank_y == 2, rank_z == 2)
    second = (rank_x >= 1, rank_y >= 1, rank_z >= 1)

    base = (i.astype(np.int64) & 255, j.astype(np.int64) & 255, k.astype(np.int64) & 255)
    origin = (x0, y0, z0)
    total = _corner_contribution(perm, base, origin)
    for steps, n_steps in ((first, 1), (second, 2)):
        cells = tuple(b + s for b, s in zip(base, steps, strict=True))
        offsets = tuple(o - s + n_steps * _G3 for o, s in zip(origin, steps, strict=True))
        total += _corner_contribution(perm, cells, offsets)
    far_cells = tuple(b + 1 for b in base)
    far_offsets = tuple(o - 1.0 + 3.0 * _G3 for o in origin)
    total += _corner_contribution(perm, far_cells, far_offsets)
    return _OUTPUT_SCALE * total


def fractal_bound(octaves: int, persistence: float, calibration: str = "none") -> float:
    """Upper bound on |fractal sum| relative to one octave of classic simplex: sum_k persistence**k (times
    ``OPENSIMPLEX_AMPLITUDE`` with ``calibration="opensimplex"``)."""
    scale = OPENSIMPLEX_AMPLITUDE if _check_calibration(calibration) == "opensimplex" else 1.0
    return scale * float(sum(persistence**k for k in range(octaves)))


def _check_calibration(calibration: str) -> str:
    return check_choice(calibration, CALIBRATIONS, "simplex calibration")


def simplex_noise_3d(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    frequency: float = 32.0,
    octaves: int = 1,
    persistence: float = 0.5,
    normalise: bool = False,
    calibration: str = "none",
) -> np.ndarray:
    """Fractal 3-D simplex noise on the integer grid of ``shape`` = (D, H, W), float32.

    Args:
        shape: output shape (D, H, W); grid point (d, h, w) is sampled at (w, h, d) / frequency.
        rng: draws the permutation table and a random offset of the sampling grid (so two calls
            with different generators never share the lattice-aligned, always-zero origin).
        frequency: despite the name (kept from RD++), the feature size of the first octave in grid
            units: coordinates are divided by it, so larger values mean smoother noise. Each octave
            halves it (doubles the spatial frequency).
        octaves: number of summed octaves.
        persistence: amplitude ratio between consecutive octaves.
        normalise: divide by ``fractal_bound(octaves, persistence)`` so the result stays within ~[-1, 1] (times
            the calibration's amplitude). RD++ does not normalise (its 6-octave, 0.6-persistence sum reaches about
            2.4x one octave).
        calibration: "none" (classic simplex) or "opensimplex": the amplitude times ``OPENSIMPLEX_AMPLITUDE`` and
            the coordinates times ``OPENSIMPLEX_LATTICE``, so that ``frequency`` means what it means to the
            OpenSimplex generator of RD++'s released code (see the module docstring).

    Returns:
        float32 array of ``shape``; each octave lies in ~[-1, 1] (x ``OPENSIMPLEX_AMPLITUDE`` calibrated), the
        sum within ``fractal_bound(octaves, persistence, calibration)`` (or that over the uncalibrated bound if
        ``normalise``).
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (D, H, W), got {shape}")
    if octaves < 1 or frequency <= 0:
        raise ValueError(f"need octaves >= 1 and frequency > 0, got {octaves}, {frequency}")
    calibrated = _check_calibration(calibration) == "opensimplex"
    rng = check_rng(rng)
    perm = _permutation_table(rng)
    offset = rng.uniform(0.0, 256.0, size=3)
    d, h, w = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    x, y, z = w.ravel() + offset[0], h.ravel() + offset[1], d.ravel() + offset[2]

    total = np.zeros(x.shape, dtype=np.float64)
    amplitude = OPENSIMPLEX_AMPLITUDE if calibrated else 1.0
    scale = float(frequency) / (OPENSIMPLEX_LATTICE if calibrated else 1.0)
    for _ in range(octaves):
        total += amplitude * _simplex_points(x / scale, y / scale, z / scale, perm)
        amplitude *= persistence
        scale /= 2.0
    if normalise:
        total /= fractal_bound(octaves, persistence)
    return total.reshape(shape).astype(np.float32)


class SimplexNoisePatch:
    """RD++ pseudo-anomaly: a random rectangle of fractal simplex noise added to the image.

    Args:
        size_range: patch height and width are each drawn uniformly from ``[lo, hi)`` pixels
            (clipped to the image size).
        amplitude: the noise is multiplied by this before it is added (image units: [0, 1]).
        octaves, persistence, frequency: fractal simplex parameters, see :func:`simplex_noise_3d`.
        calibration: "opensimplex" (default: the released RD++ generator's amplitude and feature size, see the
            module docstring) or "none" (classic simplex, ~1.3x the released root mean square and finer: kdad's
            RD++ noise before the parity check).
    """

    def __init__(
        self,
        size_range: tuple[int, int] = (10, 32),
        amplitude: float = 0.2,
        octaves: int = 6,
        persistence: float = 0.6,
        frequency: float = 32.0,
        calibration: str = "opensimplex",
    ) -> None:
        lo, hi = (int(s) for s in size_range)
        if not 1 <= lo < hi:
            raise ValueError(f"size_range must satisfy 1 <= lo < hi, got {size_range}")
        self.size_range = (lo, hi)
        self.amplitude = float(amplitude)
        self.octaves = int(octaves)
        self.persistence = float(persistence)
        self.frequency = float(frequency)
        self.calibration = _check_calibration(str(calibration))

    @property
    def max_abs_delta(self) -> float:
        """Bound on the per-pixel change: amplitude times the fractal bound."""
        return self.amplitude * fractal_bound(self.octaves, self.persistence, self.calibration)

    def _patch_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        lo, hi = self.size_range
        # Clipping keeps small images usable; lo is clipped too so the range never becomes empty.
        patch_h = int(rng.integers(min(lo, height), min(hi, height + 1)))
        patch_w = int(rng.integers(min(lo, width), min(hi, width + 1)))
        top = int(rng.integers(0, height - patch_h + 1))
        left = int(rng.integers(0, width - patch_w + 1))
        return top, left, patch_h, patch_w

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Add one noise patch.

        Args:
            image: HxWx3 uint8 RGB, or float in [0, 1].
            rng: source of all randomness.

        Returns:
            ``(noisy, mask)``: float32 HxWx3 image in [0, 1] units and the bool HxW patch mask.
            ``noisy`` is deliberately not clipped (as in RD++): inside the patch it may leave [0, 1]
            by up to :attr:`max_abs_delta`, which the ImageNet normalisation that follows handles
            fine; clip it yourself if a consumer needs a valid image.
        """
        rng = check_rng(rng)
        noisy = to_float01(image)
        height, width = noisy.shape[:2]
        top, left, patch_h, patch_w = self._patch_box(height, width, rng)
        noise = simplex_noise_3d(
            (3, patch_h, patch_w), rng, self.frequency, self.octaves, self.persistence, calibration=self.calibration
        )
        # (C, h, w) -> (h, w, C): the noise's z axis is the colour channel.
        noisy[top : top + patch_h, left : left + patch_w] += self.amplitude * noise.transpose(1, 2, 0)
        mask = np.zeros((height, width), dtype=bool)
        mask[top : top + patch_h, left : left + patch_w] = True
        return noisy, mask
