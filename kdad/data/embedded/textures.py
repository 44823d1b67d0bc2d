"""Texture categories of the synthetic benchmark: weave, woodgrain, leatherette and mesh.

Each texture is drawn upright on a canvas larger than the output, then rotated by a small random angle
and cropped (``View``), so the grain orientation and phase differ in every image. Defects are drawn on
the canvas too, which lets a crack follow the wood grain or a pulled thread follow the weave, and they
return their coverage alpha so the mask goes through exactly the same warp as the pixels.

All lengths are written for a 256 px image and scaled by ``k = size / 256``.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from kdad.data.embedded.category import Category, place_defect
from kdad.data.embedded.render import (
    Rng,
    bezier,
    blend,
    blob_alpha,
    canvas_for_rotation,
    jitter_color,
    make_view,
    polyline_alpha,
    random_walk,
    smooth_noise,
    smoothstep,
    soften,
    unit,
)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return xx, yy


def _darken(img: np.ndarray, tint: np.ndarray, alpha: np.ndarray, strength: float) -> np.ndarray:
    """Multiplies ``img`` towards ``tint`` (a stain keeps the texture visible underneath)."""
    factor = 1 - (alpha * strength)[..., None] * (1 - np.asarray(tint, np.float32))
    return (img * factor).astype(np.float32)


def _stroke_between(rng: Rng, centre: np.ndarray, angle: float, length: float, bend: float) -> np.ndarray:
    """A gently curved stroke of ``length`` through ``centre`` (scratches, cuts, fibres)."""
    d = unit(angle) * length / 2
    normal = np.array([-d[1], d[0]])
    control = centre + normal * rng.uniform(-bend, bend)
    return bezier(np.stack([centre - d, control, centre + d]))


class Texture(Category):
    """Base of the texture categories: rotation + phase jitter, then one defect on the canvas."""

    kind = "texture"
    max_angle = 8.0

    @abstractmethod
    def sample(self, rng: Rng, canvas: int, size: int) -> Any:
        """Random appearance parameters of one image (everything that varies between normal images)."""

    @abstractmethod
    def draw(self, p: Any) -> np.ndarray:
        """The defect-free canvas image for parameters ``p``."""

    def render(self, rng: Rng, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
        canvas = canvas_for_rotation(size, self.max_angle)
        view = make_view(size, canvas, rng.uniform(-self.max_angle, self.max_angle))
        p = self.sample(rng, canvas, size)
        clean = self.draw(p)
        if defect is None:
            return view.warp(clean), np.zeros((size, size), bool)
        draw_defect = getattr(self, f"_{defect}")

        def attempt() -> tuple[np.ndarray, np.ndarray]:
            centre = view.to_canvas(rng.uniform(0.12, 0.88, 2) * (size - 1))
            return draw_defect(rng, p, clean, centre)

        return place_defect(view, size, attempt, view.warp, lambda: view.warp(clean))


# ================================================================================================ weave
@dataclass(frozen=True)
class WeaveParams:
    n: int
    k: float
    period: float
    offset: np.ndarray
    warp_rgb: np.ndarray
    weft_rgb: np.ndarray
    warp_gain: np.ndarray  # per-thread brightness: real yarn is never perfectly even
    weft_gain: np.ndarray
    fiber_v: np.ndarray  # streak noise along vertical (warp) and horizontal (weft) threads
    fiber_h: np.ndarray


class Weave(Texture):
    """Plain-weave fabric: beige warp and weft threads alternating over and under, with fibre streaks."""

    name = "weave"
    defects = ("hole", "stain", "pulled_thread", "misweave")
    max_angle = 7.0

    def sample(self, rng: Rng, canvas: int, size: int) -> WeaveParams:
        k = size / 256
        period = rng.uniform(9.5, 11.0) * k
        return WeaveParams(
            n=canvas,
            k=k,
            period=period,
            offset=rng.uniform(0, 2 * period, 2),
            warp_rgb=jitter_color(rng, (0.62, 0.57, 0.47), 0.05),
            weft_rgb=jitter_color(rng, (0.56, 0.53, 0.46), 0.05),
            warp_gain=rng.normal(1.0, 0.05, 64).astype(np.float32),
            weft_gain=rng.normal(1.0, 0.05, 64).astype(np.float32),
            fiber_v=smooth_noise(rng, (canvas, canvas), (7 * k, 0.8 * k)),
            fiber_h=smooth_noise(rng, (canvas, canvas), (0.8 * k, 7 * k)),
        )

    def draw(self, p: WeaveParams) -> np.ndarray:
        xx, yy = _grid(p.n)
        return self._weave(p, xx, yy)

    @staticmethod
    def _cells(p: WeaveParams, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, ...]:
        fu = (xx + p.offset[0]) / p.period
        fv = (yy + p.offset[1]) / p.period
        i, j = np.floor(fu), np.floor(fv)
        return i.astype(np.int64), j.astype(np.int64), fu - i, fv - j

    def _weave(self, p: WeaveParams, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
        i, j, tu, tv = self._cells(p, xx, yy)
        warp_on_top = (i + j) % 2 == 0
        # Thread cross-sections (bright in the middle, dark gaps between threads) and a gentle arch where a
        # thread rises over the crossing one.
        across_u = np.sin(np.pi * tu) ** 0.6
        across_v = np.sin(np.pi * tv) ** 0.6
        h_warp = across_u * (0.75 + 0.25 * np.sin(np.pi * tv)) * (1 + 0.12 * p.fiber_v)
        h_weft = across_v * (0.75 + 0.25 * np.sin(np.pi * tu)) * (1 + 0.12 * p.fiber_h)
        warp_col = p.warp_rgb * p.warp_gain[i % 64][..., None]
        weft_col = p.weft_rgb * p.weft_gain[j % 64][..., None]
        shade = np.where(warp_on_top, h_warp, h_weft)
        colour = np.where(warp_on_top[..., None], warp_col, weft_col)
        return (colour * (0.28 + 0.72 * shade)[..., None]).astype(np.float32)

    def _hole(self, rng: Rng, p: WeaveParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = blob_alpha(rng, img.shape[:2], c, rng.uniform(3.5, 13) * p.k, 0.3)
        backing = np.float32(rng.uniform(0.07, 0.16)) * (1 + 0.15 * p.fiber_v)[..., None]
        return blend(img, backing * np.ones(3, np.float32), alpha), alpha

    def _stain(self, rng: Rng, p: WeaveParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        radius = rng.uniform(7, 26) * p.k
        alpha = soften(blob_alpha(rng, img.shape[:2], c, radius, 0.35), 0.2 * radius)
        tints = [(0.55, 0.45, 0.33), (0.62, 0.62, 0.64), (1.0, 0.88, 0.55), (0.85, 0.55, 0.50)]
        tint = np.asarray(tints[rng.integers(len(tints))], np.float32)
        return _darken(img, tint, alpha, rng.uniform(0.25, 0.9)), alpha

    def _pulled_thread(self, rng: Rng, p: WeaveParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A thread pulled tight floats over the crossing threads: one straight, slightly brighter yarn where
        # the over/under pattern should be. Same colours and period, so only the interlacing is wrong.
        xx, yy = _grid(p.n)
        i, j, tu, tv = self._cells(p, xx, yy)
        ci, cj = np.floor((c + p.offset) / p.period).astype(np.int64)
        half = rng.uniform(12, 50) * p.k
        if rng.random() < 0.5:
            band = (j == cj) & (np.abs(xx - c[0]) < half)
            profile = np.sin(np.pi * tv) ** 0.6 * (1 + 0.12 * p.fiber_h)
            colour = p.weft_rgb * p.weft_gain[j % 64][..., None]
        else:
            band = (i == ci) & (np.abs(yy - c[1]) < half)
            profile = np.sin(np.pi * tu) ** 0.6 * (1 + 0.12 * p.fiber_v)
            colour = p.warp_rgb * p.warp_gain[i % 64][..., None]
        thread = colour * (0.28 + 0.72 * profile)[..., None] * np.float32(rng.uniform(1.0, 1.2))
        alpha = band.astype(np.float32)
        return blend(img, thread, alpha), alpha

    def _misweave(self, rng: Rng, p: WeaveParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A patch woven with the wrong density or out of phase: local colour statistics are unchanged.
        if rng.random() < 0.5:
            wrong = replace(p, period=p.period * rng.uniform(1.2, 1.45))
        else:
            wrong = replace(p, offset=p.offset + np.array([p.period, 0.0])[:: rng.choice([1, -1])])
        alpha = blob_alpha(rng, img.shape[:2], c, rng.uniform(9, 24) * p.k, 0.2)
        xx, yy = _grid(p.n)
        return blend(img, self._weave(wrong, xx, yy), alpha), alpha


# ================================================================================================ woodgrain
@dataclass(frozen=True)
class WoodParams:
    n: int
    k: float
    period: float
    phase: float
    meander: np.ndarray  # slow lateral drift of the growth rings (pixels)
    streaks: np.ndarray  # fine fibre streaks along the grain
    pores: np.ndarray
    broad: np.ndarray  # large, faint colour variation across the board
    light_rgb: np.ndarray
    dark_rgb: np.ndarray


class Woodgrain(Texture):
    """Flat-sawn wood: meandering growth rings along the board, fibre streaks and dark pores."""

    name = "woodgrain"
    defects = ("scratch", "crack", "stain", "wormhole")
    max_angle = 6.0

    def sample(self, rng: Rng, canvas: int, size: int) -> WoodParams:
        k = size / 256
        period = rng.uniform(13, 22) * k
        shape = (canvas, canvas)
        return WoodParams(
            n=canvas,
            k=k,
            period=period,
            phase=rng.uniform(0, 1),
            meander=smooth_noise(rng, shape, (50 * k, 160 * k), 2) * period * rng.uniform(0.7, 1.4),
            streaks=smooth_noise(rng, shape, (0.9 * k, 30 * k), 2),
            pores=smooth_noise(rng, shape, (1.0 * k, 4.0 * k)),
            broad=smooth_noise(rng, shape, (90 * k, 90 * k)),
            light_rgb=jitter_color(rng, (0.80, 0.62, 0.42), 0.05),
            dark_rgb=jitter_color(rng, (0.56, 0.36, 0.21), 0.06),
        )

    def draw(self, p: WoodParams) -> np.ndarray:
        _, yy = _grid(p.n)
        r = (yy + p.meander) / p.period + p.phase
        ring = r - np.floor(r)
        # Late wood darkens gradually through the ring and ends sharply where the next spring starts.
        late = smoothstep(0.45, 0.97, ring)
        tone = np.clip(0.6 * late + 0.12 * p.streaks + 0.06 * p.broad + 0.1, 0, 1)
        img = blend(np.broadcast_to(p.light_rgb, (p.n, p.n, 3)), p.dark_rgb, tone)
        pores = np.clip((p.pores - 2.0) * 1.5, 0, 1)
        return (img * (1 - 0.35 * pores)[..., None]).astype(np.float32)

    def _scratch(self, rng: Rng, p: WoodParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = _stroke_between(rng, c, rng.uniform(0, np.pi), rng.uniform(30, 120) * p.k, 0.15)
        alpha = polyline_alpha(img.shape[:2], points, max(1.0, rng.uniform(1.2, 3.0) * p.k))
        colour = (0.92, 0.82, 0.66) if rng.random() < 0.7 else (0.33, 0.21, 0.12)
        return blend(img, colour, alpha * rng.uniform(0.35, 0.85)), alpha

    def _crack(self, rng: Rng, p: WoodParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Cracks split along the grain: a jagged path whose heading stays close to the board axis.
        length = rng.uniform(25, 100) * p.k
        heading = rng.normal(0, 0.12) + np.pi * rng.integers(2)
        points = random_walk(rng, c - unit(heading) * length / 2, heading, length, 0.12, 2 * p.k)
        alpha = polyline_alpha(img.shape[:2], points, max(1.0, rng.uniform(1.2, 3.5) * p.k))
        return blend(img, (0.12, 0.07, 0.04), alpha * rng.uniform(0.55, 0.95)), alpha

    def _stain(self, rng: Rng, p: WoodParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        radius = rng.uniform(12, 36) * p.k
        alpha = soften(blob_alpha(rng, img.shape[:2], c, radius, 0.35), 0.2 * radius)
        tint = (0.45, 0.38, 0.34) if rng.random() < 0.6 else (0.72, 0.74, 0.80)
        return _darken(img, np.asarray(tint), alpha, rng.uniform(0.3, 0.8)), alpha

    def _wormhole(self, rng: Rng, p: WoodParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = np.zeros(img.shape[:2], np.float32)
        for _ in range(rng.integers(1, 5)):
            spot = c + rng.normal(0, 10 * p.k, 2)
            alpha = np.maximum(alpha, blob_alpha(rng, img.shape[:2], spot, max(1.0, rng.uniform(1.8, 5.5) * p.k), 0.15))
        return blend(img, (0.10, 0.06, 0.03), alpha * rng.uniform(0.7, 0.95)), alpha


# ================================================================================================ leatherette
@dataclass(frozen=True)
class LeatherParams:
    n: int
    k: float
    cell: float
    jitter: np.ndarray  # cell centre offsets of the pebble pattern (Worley noise)
    base_rgb: np.ndarray
    mottle: np.ndarray
    fine: np.ndarray
    light: np.ndarray  # direction towards the light, for the relief shading


class Leatherette(Texture):
    """Pebbled leather: rounded grains separated by a network of dark creases, lit from one side."""

    name = "leatherette"
    defects = ("cut", "poke", "fold", "glue")
    max_angle = 0.0  # isotropic: rotating it would add nothing but canvas area (and time)

    def sample(self, rng: Rng, canvas: int, size: int) -> LeatherParams:
        k = size / 256
        cell = rng.uniform(7.0, 8.5) * k
        cells = int(np.ceil(canvas / cell)) + 3
        return LeatherParams(
            n=canvas,
            k=k,
            cell=cell,
            jitter=rng.uniform(0.1, 0.9, (cells, cells, 2)),
            base_rgb=jitter_color(rng, (0.46, 0.29, 0.18), 0.06),
            mottle=smooth_noise(rng, (canvas, canvas), 45 * k, 2),
            fine=smooth_noise(rng, (canvas, canvas), 0.8 * k),
            light=unit(rng.uniform(1.0, 1.6) * np.pi),
        )

    @staticmethod
    def _worley(p: LeatherParams) -> tuple[np.ndarray, np.ndarray]:
        """Distances to the nearest and second-nearest pebble centre (3 x 3 neighbouring cells)."""
        xx, yy = _grid(p.n)
        ix, iy = np.floor(xx / p.cell).astype(np.int64), np.floor(yy / p.cell).astype(np.int64)
        f1 = np.full(xx.shape, np.inf, np.float32)
        f2 = np.full(xx.shape, np.inf, np.float32)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cx, cy = ix + dx, iy + dy
                jit = p.jitter[cy + 1, cx + 1]  # +1: the table has a border for the -1 neighbours
                d = np.hypot(xx - (cx + jit[..., 0]) * p.cell, yy - (cy + jit[..., 1]) * p.cell)
                f2 = np.minimum(f2, np.maximum(f1, d))
                f1 = np.minimum(f1, d)
        return f1, f2

    def draw(self, p: LeatherParams) -> np.ndarray:
        f1, f2 = self._worley(p)
        crease = np.exp(-(((f2 - f1) / (0.2 * p.cell)) ** 2))
        dome = np.clip(1 - (f1 / (0.8 * p.cell)) ** 2, 0, 1)
        height = 0.12 * dome - 0.3 * crease
        gy, gx = np.gradient(height)
        relief = (gx * p.light[0] + gy * p.light[1]) * (2.0 / p.k)
        shade = 0.82 + height + relief + 0.05 * p.mottle + 0.025 * p.fine
        return (p.base_rgb * shade[..., None]).astype(np.float32)

    def _cut(self, rng: Rng, p: LeatherParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = _stroke_between(rng, c, rng.uniform(0, np.pi), rng.uniform(18, 60) * p.k, 0.2)
        alpha = polyline_alpha(img.shape[:2], points, max(1.0, rng.uniform(1.0, 2.5) * p.k))
        return blend(img, (0.07, 0.04, 0.03), alpha * rng.uniform(0.55, 0.95)), alpha

    def _poke(self, rng: Rng, p: LeatherParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = np.zeros(img.shape[:2], np.float32)
        for _ in range(rng.integers(1, 4)):
            spot = c + rng.normal(0, 8 * p.k, 2)
            alpha = np.maximum(alpha, blob_alpha(rng, img.shape[:2], spot, max(1.0, rng.uniform(2.0, 5.0) * p.k), 0.1))
        return blend(img, (0.06, 0.035, 0.025), alpha * rng.uniform(0.6, 0.95)), alpha

    def _fold(self, rng: Rng, p: LeatherParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A crease: a slightly curved ridge, bright on one flank and dark on the other, that also flattens
        # the pebbles it crosses. The mask is the ridge band where the taper is at least half.
        xx, yy = _grid(p.n)
        t = unit(rng.uniform(0, np.pi))
        nrm = np.array([-t[1], t[0]])
        along = (xx - c[0]) * t[0] + (yy - c[1]) * t[1]
        half_len, width = rng.uniform(20, 60) * p.k, rng.uniform(3.0, 7.0) * p.k
        d = (xx - c[0]) * nrm[0] + (yy - c[1]) * nrm[1] + rng.uniform(-1, 1) * along**2 / (4 * half_len)
        taper = 1 - smoothstep(half_len - 2 * width, half_len, np.abs(along))
        ridge = (d / width) * np.exp(-((d / width) ** 2)) * 2.33 * taper
        flatten = np.exp(-((d / width) ** 2)) * taper * 0.6
        smooth = cv2.GaussianBlur(img, (0, 0), 1.5 * p.k + 0.5)
        out = blend(img, smooth, flatten) * (1 + rng.uniform(0.12, 0.35) * ridge)[..., None]
        alpha = ((np.abs(d) <= 1.2 * width) * taper).astype(np.float32)
        return out.astype(np.float32), alpha

    def _glue(self, rng: Rng, p: LeatherParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Dried glue fills the creases (texture smoothed) and is glossy: colour barely changes.
        alpha = soften(blob_alpha(rng, img.shape[:2], c, rng.uniform(7, 24) * p.k, 0.35), p.k)
        smooth = cv2.GaussianBlur(img, (0, 0), 2.5 * p.k + 0.5) + np.float32(rng.uniform(0.02, 0.12))
        glossy = smooth * np.array([1.04, 1.02, 0.96], np.float32)
        return blend(img, glossy, alpha * rng.uniform(0.6, 0.95)), alpha


# ================================================================================================ mesh
@dataclass(frozen=True)
class MeshParams:
    n: int
    k: float
    period: float
    wire: float  # wire diameter
    offset: np.ndarray
    metal_rgb: np.ndarray
    back_rgb: np.ndarray
    wire_gain: np.ndarray  # per-wire brightness
    back_noise: np.ndarray


class Mesh(Texture):
    """Woven wire mesh: bright metal wires crossing over and under each other on a dark backing."""

    name = "mesh"
    defects = ("broken", "bent", "fiber", "rust")
    max_angle = 15.0

    def sample(self, rng: Rng, canvas: int, size: int) -> MeshParams:
        k = size / 256
        period = rng.uniform(18, 22) * k
        return MeshParams(
            n=canvas,
            k=k,
            period=period,
            wire=period * rng.uniform(0.26, 0.32),
            offset=rng.uniform(0, 2 * period, 2),
            metal_rgb=jitter_color(rng, (0.72, 0.72, 0.74), 0.06),
            back_rgb=jitter_color(rng, (0.11, 0.11, 0.12), 0.15),
            wire_gain=rng.normal(1.0, 0.04, 64).astype(np.float32),
            back_noise=smooth_noise(rng, (canvas, canvas), 6 * k, 2),
        )

    def draw(self, p: MeshParams) -> np.ndarray:
        xx, yy = _grid(p.n)
        return self._mesh(p, xx, yy)[0]

    def _mesh(
        self, p: MeshParams, xx: np.ndarray, yy: np.ndarray, cut: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The mesh image and the coverage of vertical wires (``cut`` removes part of them)."""
        fu, fv = (xx + p.offset[0]) / p.period, (yy + p.offset[1]) / p.period
        iu, jv = np.round(fu), np.round(fv)
        du, dv = (fu - iu) * p.period, (fv - jv) * p.period  # signed distances to the nearest wires
        half = p.wire / 2
        a_v = np.clip(half - np.abs(du) + 0.5, 0, 1)
        a_h = np.clip(half - np.abs(dv) + 0.5, 0, 1)
        if cut is not None:
            a_v = a_v * (1 - cut)
        # Each wire undulates: over at every other crossing, so the upper one is decided per crossing.
        sign = np.where((iu + jv) % 2 == 0, 1.0, -1.0)
        z_v = sign * np.cos(np.pi * (fv - jv))
        z_h = -sign * np.cos(np.pi * (fu - iu))
        col_v = self._wire_colour(p, du / half, z_v, p.wire_gain[iu.astype(np.int64) % 64])
        col_h = self._wire_colour(p, dv / half, z_h, p.wire_gain[(jv.astype(np.int64) + 17) % 64])
        back = p.back_rgb * (1 + 0.25 * p.back_noise)[..., None]
        v_on_top = (z_v >= z_h)[..., None]
        lower = blend(blend(back, col_h, a_h), col_v, a_v)
        upper = blend(blend(back, col_v, a_v), col_h, a_h)
        return np.where(v_on_top, upper, lower).astype(np.float32), a_v.astype(np.float32)

    @staticmethod
    def _wire_colour(p: MeshParams, across: np.ndarray, z: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """Cylinder shading across the wire, darker where it dives under a crossing wire, plus a highlight."""
        across = np.clip(across, -1, 1)
        cyl = np.sqrt(1 - across**2)
        shade = (0.35 + 0.65 * cyl) * (0.72 + 0.28 * z) * gain + 0.3 * np.exp(-(((across + 0.35) / 0.25) ** 2))
        return p.metal_rgb * shade[..., None]

    def _broken(self, rng: Rng, p: MeshParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # One or two segments of a vertical wire missing between crossings (the view rotation makes
        # vertical/horizontal equivalent). The mask is where that wire used to be.
        xx, yy = _grid(p.n)
        fu, fv = (xx + p.offset[0]) / p.period, (yy + p.offset[1]) / p.period
        cu, cv = (c + p.offset) / p.period
        start = np.floor(cv) + rng.uniform(0.12, 0.3)
        stop = np.floor(cv) + rng.uniform(0.7, 0.88) + (rng.random() < 0.4)
        cut = ((np.round(fu) == np.round(cu)) & (fv > start) & (fv < stop)).astype(np.float32)
        img_cut, a_v_cut = self._mesh(p, xx, yy, cut)
        _, a_v = self._mesh(p, xx, yy)
        return img_cut, (a_v - a_v_cut).astype(np.float32)

    def _bent(self, rng: Rng, p: MeshParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # A dent pushes the wires sideways; the mask is where they moved by a visible amount.
        xx, yy = _grid(p.n)
        sigma = rng.uniform(9, 22) * p.k
        amplitude = rng.uniform(0.25, 0.6) * p.period
        bump = amplitude * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * sigma**2))
        direction = unit(rng.uniform(0, 2 * np.pi))
        out, _ = self._mesh(p, xx - bump * direction[0], yy - bump * direction[1])
        alpha = (bump >= max(1.0, 0.3 * amplitude)).astype(np.float32)
        return out, alpha

    def _fiber(self, rng: Rng, p: MeshParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        length = rng.uniform(30, 120) * p.k
        d = unit(rng.uniform(0, np.pi)) * length / 2
        wobble = rng.normal(0, length / 5, (2, 2))
        points = bezier(np.stack([c - d, c - d / 3 + wobble[0], c + d / 3 + wobble[1], c + d]))
        alpha = polyline_alpha(img.shape[:2], points, max(1.0, rng.uniform(1.0, 2.2) * p.k))
        colours = [(0.85, 0.82, 0.75), (0.30, 0.24, 0.20), (0.60, 0.22, 0.20)]
        return blend(img, colours[rng.integers(3)], alpha * rng.uniform(0.5, 0.95)), alpha

    def _rust(self, rng: Rng, p: MeshParams, img: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = np.zeros(img.shape[:2], np.float32)
        for _ in range(rng.integers(1, 4)):
            spot = c + rng.normal(0, 7 * p.k, 2)
            alpha = np.maximum(alpha, blob_alpha(rng, img.shape[:2], spot, max(1.0, rng.uniform(2.5, 9) * p.k), 0.4))
        grain = (1 + 0.2 * p.back_noise)[..., None]
        rust = np.asarray(jitter_color(rng, (0.55, 0.29, 0.13), 0.15)) * grain
        return blend(img, rust, alpha * rng.uniform(0.45, 0.95)), alpha


TEXTURES: tuple[Texture, ...] = (Weave(), Woodgrain(), Leatherette(), Mesh())
