"""Object categories of the synthetic benchmark: hexnut, tablet, gelcap and bolt.

A part is drawn upright and centred on a canvas from signed distance functions (exact, anti-aliased
outlines), shaded with a light whose direction is fixed in the world, so the highlights stay put while the
part rotates. One affine warp places it on a per-image background with a random pose (rotation, small
translation and scale). Shape defects (a chip, a missing tip, a bend, a squeeze) re-draw the part with
changed geometry and take the mask from the changed region; surface defects are clipped to the part.

All lengths are written for a 256 px image and scaled by ``k = size / 256``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import cv2
import numpy as np

from kdad.data.embedded.category import Category, place_defect
from kdad.data.embedded.render import (
    SUPERSAMPLE,
    Rng,
    View,
    blend,
    blob_alpha,
    jitter_color,
    make_view,
    polyline_alpha,
    random_walk,
    sdf_alpha,
    sdf_hexagon,
    sdf_round_box,
    smooth_noise,
    smoothstep,
    soften,
    text_alpha,
    unit,
)

# Direction towards the light in image coordinates (x right, y down): upper left, as on most inspection rigs.
WORLD_LIGHT_ANGLE = np.arctan2(-0.8, -0.6)


class Layer(NamedTuple):
    """A part drawn on its canvas: straight (not premultiplied) colour and coverage."""

    rgb: np.ndarray
    alpha: np.ndarray


def _local(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates relative to the canvas centre, where parts are centred."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx - c, yy - c


def _light3(light: np.ndarray, elevation: float = 0.8) -> np.ndarray:
    """A 3-D unit light vector from a 2-D canvas direction: mostly from above, partly from the side."""
    v = np.array([light[0] * 0.6, light[1] * 0.6, elevation])
    return v / np.linalg.norm(v)


def _lambert_specular(nx: np.ndarray, ny: np.ndarray, nz: np.ndarray, light: np.ndarray, shininess: float):
    """Diffuse and Blinn-Phong specular terms for unit normals and a 2-D canvas light direction."""
    l3 = _light3(light)
    halfway = (l3 + np.array([0.0, 0.0, 1.0])) / np.linalg.norm(l3 + np.array([0.0, 0.0, 1.0]))
    diffuse = np.clip(nx * l3[0] + ny * l3[1] + nz * l3[2], 0, 1)
    specular = np.clip(nx * halfway[0] + ny * halfway[1] + nz * halfway[2], 0, 1) ** shininess
    return diffuse, specular


def _normals_from_height(height: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gy, gx = np.gradient(height)
    norm = np.sqrt(gx**2 + gy**2 + 1)
    return -gx / norm, -gy / norm, 1 / norm


def _xor_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where two coverages disagree about being inside (the exact footprint of a shape change)."""
    return ((a >= 0.5) != (b >= 0.5)).astype(np.float32)


def _erase_or_shift_text(
    rng: Rng, shape: tuple[int, int], text: str, centre: np.ndarray, height: float, k: float
) -> tuple[np.ndarray, np.ndarray]:
    """A faulty imprint: (normal text coverage, faulty text coverage), partly missing or misregistered."""
    normal = text_alpha(shape, text, centre, height)
    if rng.random() < 0.55:
        spot = centre + rng.uniform(-1, 1, 2) * np.array([len(text) * height * 0.35, height * 0.3])
        eraser = blob_alpha(rng, shape, spot, rng.uniform(0.4, 0.9) * height, 0.3)
        faulty = normal * (1 - eraser)
    else:
        faulty = text_alpha(shape, text, centre + unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(2.5, 7) * k, height)
    return normal, faulty


class Part(Category):
    """Base of the object categories: pose jitter, world-fixed light, background, compositing."""

    kind = "object"
    max_angle = 180.0  # degrees either way
    max_shift = 0.04  # fraction of the image size
    background_rgb: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @abstractmethod
    def sample(self, rng: Rng, size: int, light: np.ndarray) -> Any:
        """Random appearance parameters (the pose is handled by the base class)."""

    @abstractmethod
    def draw(self, p: Any) -> Layer:
        """The upright part for parameters ``p``."""

    def render(self, rng: Rng, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
        view = make_view(
            size,
            size,
            rng.uniform(-self.max_angle, self.max_angle),
            shift=tuple(rng.uniform(-1, 1, 2) * self.max_shift * size),
            scale=rng.uniform(0.97, 1.03),
            mirror=False,
        )
        light = view.direction_to_canvas(unit(WORLD_LIGHT_ANGLE + rng.normal(0, 0.15)))
        p = self.sample(rng, size, light)
        background = self.background(rng, size)
        if defect is None:
            return self._compose(background, view, self.draw(p)), np.zeros((size, size), bool)
        draw_defect = getattr(self, f"_{defect}")

        def compose(layer: Layer) -> np.ndarray:
            return self._compose(background, view, layer)

        return place_defect(view, size, lambda: draw_defect(rng, p), compose, lambda: compose(self.draw(p)))

    def background(self, rng: Rng, size: int) -> np.ndarray:
        """A matte surface with faint, large-scale unevenness and fine grain."""
        k = size / 256
        base = jitter_color(rng, self.background_rgb, 0.04)
        shade = 1 + 0.025 * smooth_noise(rng, (size, size), 80 * k, 2) + 0.02 * smooth_noise(rng, (size, size), k)
        return (base * shade[..., None]).astype(np.float32)

    @staticmethod
    def _compose(background: np.ndarray, view: View, layer: Layer) -> np.ndarray:
        # Premultiplied warp: colours outside the part never bleed into its anti-aliased edge.
        alpha = view.warp(layer.alpha)
        premultiplied = view.warp(layer.rgb * layer.alpha[..., None])
        return (background * (1 - alpha)[..., None] + premultiplied).astype(np.float32)


def _surface_defect(layer: Layer, colour: Any, alpha: np.ndarray, strength: float) -> tuple[Layer, np.ndarray]:
    """Paints ``colour`` on the part only; the mask is the painted shape clipped to the part."""
    clipped = alpha * (layer.alpha >= 0.5)
    return Layer(blend(layer.rgb, colour, clipped * strength), layer.alpha), clipped


def _tint(layer: Layer, tint: np.ndarray, alpha: np.ndarray, strength: float) -> tuple[Layer, np.ndarray]:
    """Multiplies the part's colour towards ``tint`` inside ``alpha`` (discolouration, keeps the shading)."""
    clipped = alpha * (layer.alpha >= 0.5)
    factor = 1 - (clipped * strength)[..., None] * (1 - np.asarray(tint, np.float32))
    return Layer((layer.rgb * factor).astype(np.float32), layer.alpha), clipped


# ================================================================================================ hexnut
@dataclass(frozen=True)
class NutParams:
    size: int
    k: float
    apothem: float
    light: np.ndarray
    metal_rgb: np.ndarray
    turning: np.ndarray  # concentric turning marks, indexed by (radius, angle)
    flipped: bool = False
    chip: tuple[float, float, float] | None = None  # x, y, radius of a bite taken out of the rim


class Hexnut(Part):
    """Hex nut seen from above: bevelled rim, chamfered bore, turning marks and three engraved dots."""

    name = "hexnut"
    defects = ("chip", "scratch", "discolor", "flip")
    background_rgb = (0.14, 0.14, 0.16)
    # The dots are asymmetric, so a nut lying upside down shows them mirrored, which no rotation undoes.
    mark_angles = np.deg2rad([0.0, 62.0, 148.0])

    def sample(self, rng: Rng, size: int, light: np.ndarray) -> NutParams:
        k = size / 256
        return NutParams(
            size=size,
            k=k,
            apothem=74 * k * rng.uniform(0.985, 1.015),
            light=light,
            metal_rgb=jitter_color(rng, (0.66, 0.66, 0.69), 0.05),
            turning=smooth_noise(rng, (128, 720), (0.7, 40.0), 2),
        )

    def _outer_sdf(self, p: NutParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        corner = 6 * p.k
        return sdf_hexagon(x, y, p.apothem - corner) - corner

    def draw(self, p: NutParams) -> Layer:
        k = p.k
        x, y = _local(p.size)
        rho = np.hypot(x, y)
        outer = self._outer_sdf(p, x, y)
        bore, chamfer = 29 * k, 42 * k
        sdf = np.maximum(outer, bore - rho)
        if p.chip is not None:
            sdf = np.maximum(sdf, p.chip[2] - np.hypot(x - p.chip[0], y - p.chip[1]))
        # Turning marks: concentric streaks looked up in a (radius, angle) noise table.
        map_x = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * 720).astype(np.float32)
        map_y = np.clip(rho / (p.apothem * 1.2) * 127, 0, 127).astype(np.float32)
        turning = cv2.remap(p.turning, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        shade = (0.56 if p.flipped else 0.62) + (0.03 if p.flipped else 0.06) * turning
        # Rim bevel sloping outwards and (top side only) a chamfer sloping into the bore.
        gy, gx = np.gradient(outer)
        gnorm = np.hypot(gx, gy) + 1e-6
        bevel = 1 - smoothstep(4 * k, 6 * k, -outer)
        shade = shade * (1 - bevel) + (0.5 + 0.42 * (gx * p.light[0] + gy * p.light[1]) / gnorm) * bevel
        if p.flipped:
            groove = np.exp(-(((rho - 36 * k) / (1.2 * k)) ** 2))
            shade = shade * (1 - 0.45 * groove)
        else:
            cone = 1 - smoothstep(chamfer - 1, chamfer + 1, rho)
            inward = -(x * p.light[0] + y * p.light[1]) / (rho + 1e-6)
            shade = shade * (1 - cone) + (0.52 + 0.4 * inward + 0.04 * turning) * cone
        shade = shade * (1 - 0.5 * self._marks(p, x, y))
        return Layer((p.metal_rgb * shade[..., None]).astype(np.float32), sdf_alpha(sdf))

    def _marks(self, p: NutParams, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        angles = -self.mark_angles if p.flipped else self.mark_angles
        marks = np.zeros_like(x)
        for a in angles:
            cx, cy = 57 * p.k * np.cos(a), 57 * p.k * np.sin(a)
            marks = np.maximum(marks, sdf_alpha(np.hypot(x - cx, y - cy) - 3.2 * p.k))
        return marks

    def _chip(self, rng: Rng, p: NutParams) -> tuple[Layer, np.ndarray]:
        # Find the rim along a random direction, then bite a disc out of it.
        direction = unit(rng.uniform(0, 2 * np.pi))
        radii = np.linspace(50, 100, 400) * p.k
        rim = radii[np.argmax(self._outer_sdf(p, radii * direction[0], radii * direction[1]) >= 0)]
        radius = rng.uniform(5, 18) * p.k
        centre = direction * (rim + radius * rng.uniform(0.1, 0.6))
        chipped = self.draw(replace(p, chip=(centre[0], centre[1], radius)))
        return chipped, _xor_mask(self.draw(p).alpha, chipped.alpha)

    def _scratch(self, rng: Rng, p: NutParams) -> tuple[Layer, np.ndarray]:
        layer = self.draw(p)
        centre = unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(32, 68) * p.k + (p.size - 1) / 2
        length = rng.uniform(12, 50) * p.k
        d = unit(rng.uniform(0, np.pi)) * length / 2
        alpha = polyline_alpha(
            (p.size, p.size), np.stack([centre - d, centre + d]), max(1.0, rng.uniform(0.9, 2.2) * p.k)
        )
        colour = (0.95, 0.95, 0.97) if rng.random() < 0.6 else (0.2, 0.2, 0.22)
        return _surface_defect(layer, colour, alpha, rng.uniform(0.3, 0.8))

    def _discolor(self, rng: Rng, p: NutParams) -> tuple[Layer, np.ndarray]:
        # Heat tint or oil residue on the face.
        layer = self.draw(p)
        centre = unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(34, 66) * p.k + (p.size - 1) / 2
        radius = rng.uniform(8, 25) * p.k
        alpha = soften(blob_alpha(rng, (p.size, p.size), centre, radius, 0.35), 0.2 * radius)
        tints = [(0.55, 0.62, 0.95), (0.98, 0.80, 0.45), (0.55, 0.50, 0.45)]
        return _tint(layer, np.asarray(tints[rng.integers(3)]), alpha, rng.uniform(0.25, 0.75))

    def _flip(self, rng: Rng, p: NutParams) -> tuple[Layer, np.ndarray]:
        # Upside down: bearing face (no chamfer, a groove ring, duller finish) and mirrored marks. Like
        # MVTec's metal_nut "flip", the whole part is the anomaly.
        flipped = self.draw(replace(p, flipped=True))
        return flipped, (flipped.alpha >= 0.5).astype(np.float32)


# ================================================================================================ tablet
@dataclass(frozen=True)
class TabletParams:
    size: int
    k: float
    axes: tuple[float, float]
    light: np.ndarray
    white_rgb: np.ndarray
    speckles: np.ndarray  # rows of x, y, radius, opacity: part of the normal product, like MVTec's pill
    speckle_rgb: np.ndarray
    imprint_offset: np.ndarray


class Tablet(Part):
    """Oblong white tablet with red speckles and a printed "KD5" imprint, on a dark tray."""

    name = "tablet"
    defects = ("crack", "contamination", "discolor", "faulty_imprint")
    background_rgb = (0.15, 0.17, 0.20)
    max_angle = 8.0
    text = "KD5"

    def sample(self, rng: Rng, size: int, light: np.ndarray) -> TabletParams:
        k = size / 256
        a, b = 92 * k * rng.uniform(0.98, 1.02), 41 * k * rng.uniform(0.98, 1.02)
        n = rng.integers(15, 45)
        rho, theta = np.sqrt(rng.uniform(0, 0.85, n)), rng.uniform(0, 2 * np.pi, n)
        speckles = np.stack(
            [
                a * rho * np.cos(theta),
                b * rho * np.sin(theta),
                rng.uniform(0.6, 1.5, n) * k,
                rng.uniform(0.35, 0.9, n),
            ],
            1,
        )
        return TabletParams(
            size=size,
            k=k,
            axes=(a, b),
            light=light,
            white_rgb=jitter_color(rng, (0.92, 0.90, 0.86), 0.03),
            speckles=speckles,
            speckle_rgb=jitter_color(rng, (0.72, 0.30, 0.25), 0.08),
            imprint_offset=rng.normal(0, 0.6 * k, 2),
        )

    def _shape(self, p: TabletParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coverage, normalised elliptic radius and height field of the tablet."""
        x, y = _local(p.size)
        a, b = p.axes
        rho = np.sqrt((x / a) ** 2 + (y / b) ** 2)
        grad = np.sqrt((x / a**2) ** 2 + (y / b**2) ** 2) / (rho + 1e-6)
        alpha = sdf_alpha((rho - 1) / (grad + 1e-6))
        height = 0.5 * b * np.sqrt(np.clip(1 - rho**4, 0, 1))  # flat top, rounded edge
        return alpha, rho, height

    def imprint_centre(self, p: TabletParams) -> np.ndarray:
        return (p.size - 1) / 2 + p.imprint_offset

    def draw(self, p: TabletParams, imprint: np.ndarray | None = None) -> Layer:
        alpha, _, height = self._shape(p)
        nx, ny, nz = _normals_from_height(height)
        diffuse, specular = _lambert_specular(nx, ny, nz, p.light, 25)
        rgb = p.white_rgb * (0.45 + 0.55 * diffuse)[..., None] + 0.12 * specular[..., None]
        rgb = blend(rgb, p.speckle_rgb, self._speckles(p))
        if imprint is None:
            imprint = text_alpha((p.size, p.size), self.text, self.imprint_centre(p), 18 * p.k)
        rgb = blend(rgb, np.array([0.50, 0.32, 0.33], np.float32), 0.85 * imprint)
        return Layer(rgb.astype(np.float32), alpha)

    @staticmethod
    def _speckles(p: TabletParams) -> np.ndarray:
        s = SUPERSAMPLE
        fine = np.zeros((p.size * s, p.size * s), np.uint8)
        c = (p.size - 1) / 2
        for x, y, r, opacity in p.speckles:
            centre = (int(round((x + c) * s + (s - 1) / 2)), int(round((y + c) * s + (s - 1) / 2)))
            cv2.circle(fine, centre, max(1, int(round(r * s))), int(255 * opacity), -1, cv2.LINE_8)
        return cv2.resize(fine, (p.size, p.size), interpolation=cv2.INTER_AREA) / np.float32(255)

    def _inside_point(self, rng: Rng, p: TabletParams, reach: float = 0.8) -> np.ndarray:
        rho, theta = np.sqrt(rng.uniform(0, reach)), rng.uniform(0, 2 * np.pi)
        return (p.size - 1) / 2 + rho * np.array([p.axes[0] * np.cos(theta), p.axes[1] * np.sin(theta)])

    def _crack(self, rng: Rng, p: TabletParams) -> tuple[Layer, np.ndarray]:
        length = rng.uniform(15, 70) * p.k
        heading = rng.uniform(0, 2 * np.pi)
        points = random_walk(rng, self._inside_point(rng, p), heading, length, 0.2, 2 * p.k)
        alpha = polyline_alpha((p.size, p.size), points, max(1.0, rng.uniform(1.2, 2.6) * p.k))
        return _surface_defect(self.draw(p), (0.34, 0.32, 0.31), alpha, rng.uniform(0.45, 0.9))

    def _contamination(self, rng: Rng, p: TabletParams) -> tuple[Layer, np.ndarray]:
        # Small dark particles can look like the normal speckles: only colour and size tell them apart.
        alpha = np.zeros((p.size, p.size), np.float32)
        for _ in range(rng.integers(1, 3)):
            radius = max(1.0, rng.uniform(2.0, 8.0) * p.k)
            alpha = np.maximum(alpha, blob_alpha(rng, alpha.shape, self._inside_point(rng, p), radius, 0.4))
        colours = [(0.20, 0.15, 0.10), (0.22, 0.30, 0.60), (0.42, 0.42, 0.40)]
        return _surface_defect(self.draw(p), colours[rng.integers(3)], alpha, rng.uniform(0.6, 0.95))

    def _discolor(self, rng: Rng, p: TabletParams) -> tuple[Layer, np.ndarray]:
        radius = rng.uniform(12, 35) * p.k
        alpha = soften(blob_alpha(rng, (p.size, p.size), self._inside_point(rng, p, 0.6), radius, 0.35), 0.2 * radius)
        tint = (1.0, 0.76, 0.70) if rng.random() < 0.5 else (1.0, 0.92, 0.60)
        return _tint(self.draw(p), np.asarray(tint), alpha, rng.uniform(0.3, 0.9))

    def _faulty_imprint(self, rng: Rng, p: TabletParams) -> tuple[Layer, np.ndarray]:
        normal, faulty = _erase_or_shift_text(rng, (p.size, p.size), self.text, self.imprint_centre(p), 18 * p.k, p.k)
        return self.draw(p, faulty), _xor_mask(normal, faulty)


# ================================================================================================ gelcap
@dataclass(frozen=True)
class GelcapParams:
    size: int
    k: float
    half_length: float  # half the distance between the centres of the rounded ends
    radius: float
    light: np.ndarray
    cap_rgb: np.ndarray
    body_rgb: np.ndarray
    imprint_offset: np.ndarray
    dent: tuple[float, float, float] | None = None  # axial position, width, relative depth of a squeeze


class Gelcap(Part):
    """Two-piece capsule: dark green cap, cream body printed "KD 50", glossy, on a light grey tray."""

    name = "gelcap"
    defects = ("squeeze", "crack", "poke", "faulty_imprint")
    background_rgb = (0.78, 0.78, 0.76)
    max_angle = 6.0
    text = "KD 50"

    def sample(self, rng: Rng, size: int, light: np.ndarray) -> GelcapParams:
        k = size / 256
        return GelcapParams(
            size=size,
            k=k,
            half_length=60 * k * rng.uniform(0.98, 1.02),
            radius=31 * k * rng.uniform(0.98, 1.02),
            light=light,
            cap_rgb=jitter_color(rng, (0.12, 0.38, 0.25), 0.06),
            body_rgb=jitter_color(rng, (0.93, 0.89, 0.78), 0.03),
            imprint_offset=rng.normal(0, 0.6 * k, 2),
        )

    def split(self, p: GelcapParams) -> float:
        return -6 * p.k

    def body_radius(self, p: GelcapParams, x: np.ndarray) -> np.ndarray:
        if p.dent is None:
            return np.full_like(x, p.radius)
        u0, width, depth = p.dent
        return p.radius * (1 - depth * np.exp(-(((x - u0) / width) ** 2)))

    def imprint_centre(self, p: GelcapParams) -> np.ndarray:
        return (p.size - 1) / 2 + np.array([30 * p.k, 0.0]) + p.imprint_offset

    def draw(self, p: GelcapParams, imprint: np.ndarray | None = None) -> Layer:
        x, y = _local(p.size)
        on_cap = x < self.split(p)
        r = np.where(on_cap, p.radius * 1.05, self.body_radius(p, x))
        ux = np.clip(x, -p.half_length, p.half_length)
        q = np.hypot(x - ux, y)  # distance to the axis segment
        nx, ny = (x - ux) / r, y / r
        nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
        diffuse, specular = _lambert_specular(nx, ny, nz, p.light, 40)
        colour = np.where(on_cap[..., None], p.cap_rgb, p.body_rgb)
        seam = 1 - 0.35 * np.exp(-(((x - self.split(p)) / (1.2 * p.k)) ** 2))
        rgb = colour * ((0.3 + 0.7 * diffuse) * seam)[..., None] + 0.45 * specular[..., None]
        if imprint is None:
            imprint = text_alpha((p.size, p.size), self.text, self.imprint_centre(p), 12 * p.k)
        rgb = blend(rgb, np.array([0.18, 0.18, 0.20], np.float32), 0.9 * imprint * ~on_cap)
        return Layer(rgb.astype(np.float32), sdf_alpha(q - r))

    def _point_on(self, rng: Rng, p: GelcapParams) -> np.ndarray:
        c = (p.size - 1) / 2
        return np.array(
            [c + rng.uniform(-1, 1) * (p.half_length + 0.5 * p.radius), c + rng.uniform(-0.6, 0.6) * p.radius]
        )

    def _squeeze(self, rng: Rng, p: GelcapParams) -> tuple[Layer, np.ndarray]:
        # Pinched body: the radius shrinks locally; everything across the pinch changes (outline and shading).
        dent = (
            rng.uniform(self.split(p) + 12 * p.k, p.half_length),
            rng.uniform(6, 16) * p.k,
            rng.uniform(0.06, 0.25),
        )
        squeezed = replace(p, dent=dent)
        x, _ = _local(p.size)
        pinch = (p.radius - self.body_radius(squeezed, x) >= 0.5) & (x >= self.split(p))
        normal = self.draw(p)
        return self.draw(squeezed), (pinch & (normal.alpha >= 0.5)).astype(np.float32)

    def _crack(self, rng: Rng, p: GelcapParams) -> tuple[Layer, np.ndarray]:
        points = random_walk(
            rng, self._point_on(rng, p), rng.uniform(0, 2 * np.pi), rng.uniform(12, 45) * p.k, 0.25, 2 * p.k
        )
        alpha = polyline_alpha((p.size, p.size), points, max(1.0, rng.uniform(0.9, 2.0) * p.k))
        return _surface_defect(self.draw(p), (0.22, 0.2, 0.18), alpha, rng.uniform(0.4, 0.85))

    def _poke(self, rng: Rng, p: GelcapParams) -> tuple[Layer, np.ndarray]:
        alpha = blob_alpha(rng, (p.size, p.size), self._point_on(rng, p), max(1.0, rng.uniform(2.0, 5.0) * p.k), 0.15)
        return _surface_defect(self.draw(p), (0.12, 0.11, 0.10), alpha, rng.uniform(0.6, 0.95))

    def _faulty_imprint(self, rng: Rng, p: GelcapParams) -> tuple[Layer, np.ndarray]:
        normal, faulty = _erase_or_shift_text(rng, (p.size, p.size), self.text, self.imprint_centre(p), 12 * p.k, p.k)
        return self.draw(p, faulty), _xor_mask(normal, faulty)


# ================================================================================================ bolt
@dataclass(frozen=True)
class BoltParams:
    size: int
    k: float
    light: np.ndarray
    metal_rgb: np.ndarray
    thread_phase: float
    tip_end: float  # axial end of the part (shortened by a missing tip)
    bend: tuple[float, float] = (0.0, 0.0)  # start and curvature of a bent shaft
    worn: tuple[float, float] | None = None  # axial range whose thread is flattened


class Bolt(Part):
    """Machine screw seen from the side: head, plain shank, helical thread, pointed tip; any orientation."""

    name = "bolt"
    defects = ("scratch_head", "thread_damage", "missing_tip", "bent")
    background_rgb = (0.86, 0.86, 0.84)
    max_shift = 0.05
    # Axial layout for k = 1: head [-80, -54], shank to -34, thread to 64, tip tapering to 80.
    head, shank_end, tip_start = (-80.0, -54.0), -34.0, 64.0
    head_half, shank_half, crest, root, pitch = 22.0, 11.0, 12.5, 9.5, 5.8

    def sample(self, rng: Rng, size: int, light: np.ndarray) -> BoltParams:
        return BoltParams(
            size=size,
            k=size / 256,
            light=light,
            metal_rgb=jitter_color(rng, (0.58, 0.58, 0.60), 0.05),
            thread_phase=rng.uniform(0, 1),
            tip_end=80.0,
        )

    def _profile(self, p: BoltParams, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-height of the shaft along the axis (k = 1 units), and where it is threaded."""
        tri = 1 - 2 * np.abs((u / self.pitch + p.thread_phase) % 1 - 0.5)
        depth = np.full_like(u, self.crest - self.root)
        if p.worn is not None:
            depth = np.where((u >= p.worn[0]) & (u <= p.worn[1]), 0.25 * depth, depth)
        threaded = u >= self.shank_end
        half = np.where(threaded, self.root + depth * tri, self.shank_half)
        taper = np.clip((80.0 - u) / (80.0 - self.tip_start), 0.0, 1.0)
        half = np.where(u > self.tip_start, np.maximum(half * taper, 1.5), half)
        return half, threaded

    def axial(self, p: BoltParams) -> tuple[np.ndarray, np.ndarray]:
        """Canvas coordinates in k = 1 units along (u) and across (v) the possibly bent axis."""
        x, y = _local(p.size)
        u, v = x / p.k, y / p.k
        start, curvature = p.bend
        return u, v - curvature * np.maximum(u - start, 0) ** 2

    def draw(self, p: BoltParams) -> Layer:
        u, v = self.axial(p)
        half, threaded = self._profile(p, u)
        body = np.maximum(np.abs(v) - half, np.maximum(self.head[1] - u - 1, u - p.tip_end))
        head_c, head_w = sum(self.head) / 2, (self.head[1] - self.head[0]) / 2
        head = sdf_round_box(u - head_c, v, head_w, self.head_half, 4.0)
        sdf = np.minimum(body, head) * p.k
        on_head = head < body
        across = np.clip(v / np.where(on_head, self.head_half, half), -1, 1)
        nz = np.sqrt(1 - across**2)
        diffuse, specular = _lambert_specular(np.zeros_like(nz), across, nz, p.light, 30)
        # Helix flanks as slanted stripes; flattened (worn) thread loses them.
        stripes = np.cos(2 * np.pi * ((u + 0.14 * v) / self.pitch + p.thread_phase))
        relief = threaded & ~on_head & (u < p.tip_end)
        if p.worn is not None:
            relief = relief & ~((u >= p.worn[0]) & (u <= p.worn[1]))
        shade = (0.3 + 0.7 * diffuse) * (1 + 0.22 * stripes * relief)
        rgb = p.metal_rgb * shade[..., None] + 0.5 * specular[..., None]
        return Layer(rgb.astype(np.float32), sdf_alpha(sdf))

    def _changed_between(self, p: BoltParams, q: BoltParams, region: np.ndarray) -> np.ndarray:
        """Mask of ``region`` restricted to either version of the part."""
        inside = (self.draw(p).alpha >= 0.5) | (self.draw(q).alpha >= 0.5)
        return (inside & region).astype(np.float32)

    def _scratch_head(self, rng: Rng, p: BoltParams) -> tuple[Layer, np.ndarray]:
        layer = self.draw(p)
        centre_uv = np.array([rng.uniform(-74, -60), rng.uniform(-14, 14)])
        d = unit(rng.uniform(0, np.pi)) * rng.uniform(12, 28) / 2
        c = (p.size - 1) / 2
        points = (np.stack([centre_uv - d, centre_uv + d]) * p.k) + c
        alpha = polyline_alpha((p.size, p.size), points, max(1.0, rng.uniform(1.2, 2.6) * p.k))
        u, v = self.axial(p)
        head_c, head_w = sum(self.head) / 2, (self.head[1] - self.head[0]) / 2
        head = sdf_round_box(u - head_c, v, head_w, self.head_half, 4.0) <= 0
        colour = (0.95, 0.95, 0.96) if rng.random() < 0.6 else (0.2, 0.2, 0.22)
        return _surface_defect(layer, colour, alpha * head, rng.uniform(0.5, 0.9))

    def _thread_damage(self, rng: Rng, p: BoltParams) -> tuple[Layer, np.ndarray]:
        start = rng.uniform(self.shank_end + 2, self.tip_start - 8)
        worn = replace(p, worn=(start, start + rng.uniform(10, 28)))
        u, _ = self.axial(p)
        return self.draw(worn), self._changed_between(p, worn, (u >= worn.worn[0]) & (u <= worn.worn[1]))

    def _missing_tip(self, rng: Rng, p: BoltParams) -> tuple[Layer, np.ndarray]:
        broken = replace(p, tip_end=p.tip_end - rng.uniform(8, 26))
        return self.draw(broken), _xor_mask(self.draw(p).alpha, self.draw(broken).alpha)

    def _bent(self, rng: Rng, p: BoltParams) -> tuple[Layer, np.ndarray]:
        start = rng.uniform(-10, 40)
        curvature = rng.choice([-1, 1]) * rng.uniform(7, 20) / (p.tip_end - start) ** 2
        bent = replace(p, bend=(start, curvature))
        u, _ = self.axial(p)
        moved = np.abs(curvature * np.maximum(u - start, 0) ** 2) * p.k >= 0.75
        return self.draw(bent), self._changed_between(p, bent, moved)


OBJECTS: tuple[Part, ...] = (Hexnut(), Tablet(), Gelcap(), Bolt())
