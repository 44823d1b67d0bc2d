"""Vectorised drawing primitives for the embedded synthetic benchmark (see ``kdad.data.embedded``).

Conventions used throughout: images are float32 arrays in [0, 1] (H x W x 3, RGB) until the sensor model
quantises them; points are ``(x, y)`` in pixels with pixel centres at integer coordinates (OpenCV's
convention); an *alpha* is a float32 H x W coverage map in [0, 1] whose ``>= 0.5`` level set is the exact
geometric shape, which is how every ground-truth mask is derived.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Rng = np.random.Generator

# Strokes and text are drawn this many times finer, then box-averaged: sub-pixel widths and anti-aliasing
# without a per-pixel distance computation.
SUPERSAMPLE = 4


# --------------------------------------------------------------------------------------------- noise
def smooth_noise(rng: Rng, shape: tuple[int, int], cell: float | tuple[float, float], octaves: int = 1) -> np.ndarray:
    """Zero-mean, unit-std value noise whose features are about ``cell`` pixels (``(cell_y, cell_x)``).

    Each octave is a coarse Gaussian grid upsampled with bicubic interpolation (O(pixels), unlike a blur
    whose cost grows with the feature size); anisotropic cells give streaks such as fibres or wood grain.
    """
    h, w = shape
    cy, cx = (cell, cell) if np.isscalar(cell) else cell
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for _ in range(octaves):
        cy, cx = max(float(cy), 1.0), max(float(cx), 1.0)
        gh, gw = int(np.ceil(h / cy)) + 3, int(np.ceil(w / cx)) + 3
        coarse = rng.standard_normal((gh, gw), dtype=np.float32)
        big = cv2.resize(coarse, (int(round(gw * cx)), int(round(gh * cy))), interpolation=cv2.INTER_CUBIC)
        # Skip the first cell: bicubic borders are clamped and would be smoother than the rest.
        oy, ox = int(cy), int(cx)
        out += amp * big[oy : oy + h, ox : ox + w]
        cy, cx, amp = cy / 2, cx / 2, amp / 2
    return out / (float(out.std()) + 1e-6)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


# --------------------------------------------------------------------------------------------- shapes
def sdf_alpha(sdf: np.ndarray) -> np.ndarray:
    """Coverage from a signed distance in pixels (negative inside): a one-pixel anti-aliased edge."""
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)


def sdf_hexagon(x: np.ndarray, y: np.ndarray, apothem: float) -> np.ndarray:
    """Exact signed distance to a regular hexagon with flat top and bottom (Inigo Quilez's formula)."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(x), np.abs(y)
    d = 2 * np.minimum(kx * px + ky * py, 0.0)
    px, py = px - d * kx, py - d * ky
    px = px - np.clip(px, -kz * apothem, kz * apothem)
    py = py - apothem
    return np.hypot(px, py) * np.sign(py)


def sdf_round_box(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float, radius: float) -> np.ndarray:
    qx = np.abs(x) - half_w + radius
    qy = np.abs(y) - half_h + radius
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _bbox(shape: tuple[int, int], lo: np.ndarray, hi: np.ndarray) -> tuple[int, int, int, int] | None:
    """Integer window ``(x0, y0, x1, y1)`` covering ``[lo, hi]`` clipped to the image, None if empty."""
    h, w = shape
    x0, y0 = max(int(np.floor(lo[0])), 0), max(int(np.floor(lo[1])), 0)
    x1, y1 = min(int(np.ceil(hi[0])) + 1, w), min(int(np.ceil(hi[1])) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def blob_alpha(
    rng: Rng, shape: tuple[int, int], center: np.ndarray, radius: float, irregularity: float = 0.25
) -> np.ndarray:
    """An irregular filled blob: a circle whose radius is modulated by a few random harmonics."""
    alpha = np.zeros(shape, np.float32)
    harmonics = np.arange(2, 7)
    amps = rng.normal(0.0, irregularity, harmonics.size) / np.sqrt(harmonics - 1)
    phases = rng.uniform(0, 2 * np.pi, harmonics.size)
    reach = radius * (1 + np.abs(amps).sum()) + 2
    box = _bbox(shape, center - reach, center + reach)
    if box is None:
        return alpha
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - center[0], yy - center[1]
    theta = np.arctan2(dy, dx)
    r = radius * (1 + np.sum(amps[:, None, None] * np.cos(harmonics[:, None, None] * theta + phases[:, None, None]), 0))
    alpha[y0:y1, x0:x1] = sdf_alpha(np.hypot(dx, dy) - np.maximum(r, 0.3 * radius))
    return alpha


def soften(alpha: np.ndarray, sigma: float) -> np.ndarray:
    """Blurs a hard alpha so a stain fades out; its 0.5 level set stays close to the original outline."""
    if sigma < 0.3:
        return alpha
    return cv2.GaussianBlur(alpha, (0, 0), sigma)


def polyline_alpha(shape: tuple[int, int], points: np.ndarray, width: float) -> np.ndarray:
    """Coverage of an open polyline stroked with ``width`` pixels (round caps)."""
    alpha = np.zeros(shape, np.float32)
    pts = np.asarray(points, np.float64)
    pad = width / 2 + 2
    box = _bbox(shape, pts.min(0) - pad, pts.max(0) + pad)
    if box is None:
        return alpha
    x0, y0, x1, y1 = box
    s = SUPERSAMPLE
    fine = np.zeros(((y1 - y0) * s, (x1 - x0) * s), np.uint8)
    p = np.round((pts - [x0, y0]) * s + (s - 1) / 2).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(fine, [p], False, 255, thickness=max(1, int(round(width * s))), lineType=cv2.LINE_8)
    alpha[y0:y1, x0:x1] = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA) / np.float32(255)
    return alpha


def text_alpha(
    shape: tuple[int, int], text: str, center: np.ndarray, height: float, weight: float = 0.12
) -> np.ndarray:
    """Coverage of ``text`` (Hershey simplex), capital height ``height`` pixels, centred on ``center``.

    ``weight`` is the stroke thickness relative to the height.
    """
    font = cv2.FONT_HERSHEY_SIMPLEX
    s = SUPERSAMPLE
    thickness = max(1, int(round(height * weight * s)))
    (tw, th), _ = cv2.getTextSize(text, font, 1.0, thickness)
    scale = height * s / th
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    alpha = np.zeros(shape, np.float32)
    half = np.array([tw, th], np.float64) / (2 * s) + height * weight + 2
    box = _bbox(shape, center - half, center + half)
    if box is None:
        return alpha
    x0, y0, x1, y1 = box
    fine = np.zeros(((y1 - y0) * s, (x1 - x0) * s), np.uint8)
    org = np.round((center - [x0, y0]) * s + [-tw / 2, th / 2]).astype(int)
    cv2.putText(fine, text, (int(org[0]), int(org[1])), font, scale, 255, thickness, cv2.LINE_8)
    alpha[y0:y1, x0:x1] = cv2.resize(fine, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA) / np.float32(255)
    return alpha


def random_walk(rng: Rng, start: np.ndarray, angle: float, length: float, wiggle: float, step: float) -> np.ndarray:
    """Points of a jagged path (cracks): a heading that drifts by ``wiggle`` radians per step."""
    n = max(int(length / step), 2)
    headings = angle + np.cumsum(rng.normal(0.0, wiggle, n))
    steps = step * np.stack([np.cos(headings), np.sin(headings)], 1)
    return np.vstack([start, start + np.cumsum(steps, 0)])


def bezier(points: np.ndarray, n: int = 48) -> np.ndarray:
    """A quadratic or cubic Bezier curve through ``points`` (3 or 4 control points) as ``n`` points."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p = np.asarray(points, np.float64)
    if len(p) == 3:
        return (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


# --------------------------------------------------------------------------------------------- compositing
def blend(img: np.ndarray, color: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    """``img`` covered by ``color`` (a colour or an image) with opacity ``alpha``."""
    a = alpha[..., None]
    return (img * (1 - a) + np.asarray(color, np.float32) * a).astype(np.float32)


def jitter_color(rng: Rng, rgb: tuple[float, float, float], spread: float) -> np.ndarray:
    """A colour with a common brightness change and a smaller per-channel hue change."""
    base = np.asarray(rgb, np.float32)
    return (base * rng.uniform(1 - spread, 1 + spread) * rng.uniform(1 - spread / 5, 1 + spread / 5, 3)).astype(
        np.float32
    )


# --------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class View:
    """Maps a square drawing canvas to the output image: rotation about the canvas centre, then a crop.

    Textures and parts are drawn upright on the canvas (so a crack can follow the grain, a scratch can be
    clipped to a screw head) and one ``warpAffine`` per layer places them; masks go through the same warp
    and are thresholded at 0.5, so they stay aligned with the pixels they label.
    """

    canvas: int
    size: int
    matrix: np.ndarray  # 2 x 3, canvas -> output
    mirror: bool  # outside the canvas: mirrored (textures tile on) or empty (a part on its background)

    def warp(self, layer: np.ndarray) -> np.ndarray:
        border = cv2.BORDER_REFLECT_101 if self.mirror else cv2.BORDER_CONSTANT
        return cv2.warpAffine(layer, self.matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=border)

    def mask(self, alpha: np.ndarray) -> np.ndarray:
        """The output-space bool mask of a canvas coverage: warped like the pixels, then its 0.5 level set."""
        return self.warp(alpha.astype(np.float32)) >= 0.5

    def to_output(self, point: np.ndarray) -> np.ndarray:
        """Where a canvas point lands in the output image."""
        return self.matrix[:, :2] @ np.asarray(point, np.float64) + self.matrix[:, 2]

    def to_canvas(self, point: np.ndarray) -> np.ndarray:
        inverse = cv2.invertAffineTransform(self.matrix)
        return inverse[:, :2] @ np.asarray(point, np.float64) + inverse[:, 2]

    def direction_to_canvas(self, vector: np.ndarray) -> np.ndarray:
        """A world direction (e.g. towards the light) expressed on the canvas, unit length."""
        inverse = cv2.invertAffineTransform(self.matrix)[:, :2]
        v = inverse @ np.asarray(vector, np.float64)
        return v / np.linalg.norm(v)


def make_view(
    size: int,
    canvas: int,
    angle_deg: float,
    shift: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    mirror: bool = True,
) -> View:
    centre = (canvas - 1) / 2
    matrix = cv2.getRotationMatrix2D((centre, centre), angle_deg, scale)
    matrix[:, 2] += np.array([(size - 1) / 2 - centre + shift[0], (size - 1) / 2 - centre + shift[1]])
    return View(canvas, size, matrix, mirror)


def canvas_for_rotation(size: int, max_angle_deg: float) -> int:
    """Side of a square canvas whose rotation by up to ``max_angle_deg`` still covers the output."""
    a = np.deg2rad(min(abs(max_angle_deg), 45.0))
    return int(np.ceil(size * (np.cos(a) + np.sin(a)))) + 4


# --------------------------------------------------------------------------------------------- sensor
def apply_sensor(rng: Rng, img: np.ndarray, noise: tuple[float, float] = (0.006, 0.016)) -> np.ndarray:
    """Camera effects shared by normal and defective images, then quantisation to uint8.

    Exposure, white balance, an illumination ramp, slight defocus and read noise all vary per image, so that
    image-level statistics (mean brightness, contrast) overlap between good and defective images and a
    detector cannot just memorise one picture.
    """
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * (xx / w - 0.5) + np.sin(direction) * (yy / h - 0.5)) * rng.uniform(0.0, 0.12)
    gain = rng.uniform(0.9, 1.1) * rng.uniform(0.99, 1.01, 3).astype(np.float32)
    out = img * (1 + ramp)[..., None] * gain
    sigma = rng.uniform(0.0, 0.7)
    if sigma > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(*noise))
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
