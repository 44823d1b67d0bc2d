"""Tests for the anomaly synthesis blocks (kdad.data.synthesis)."""

from __future__ import annotations

import math
import pickle
import random
from pathlib import Path

import cv2
import numpy as np
import pytest

from kdad.data.synthesis import (
    FOREGROUND_METHODS,
    PROCEDURAL_KINDS,
    TEXTURE_AUGMENTER_NAMES,
    DraemSynthesizer,
    FolderTextureSource,
    ProceduralTextureSource,
    SimplexNoisePatch,
    TextureAugmenter,
    TextureSource,
    foreground_mask,
    fractal_bound,
    make_texture_source,
    perlin_mask,
    perlin_noise_2d,
    simplex_noise_3d,
)
from kdad.data.synthesis import simplex as simplex_module


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _disc_image(size: int = 128, fg: int = 200, bg: int = 30, radius: float = 0.3) -> np.ndarray:
    image = np.full((size, size, 3), bg, dtype=np.uint8)
    cv2.circle(image, (size // 2, size // 2), int(radius * size), (fg, fg, fg), -1)
    return image


def _disc_truth(size: int = 128, radius: float = 0.3) -> np.ndarray:
    return _disc_image(size, 255, 0, radius)[..., 0] > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _random_image(seed: int = 0, size: int = 64) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


class _ConstantTexture:
    """Texture source returning one colour, so the blend formula can be checked exactly."""

    def __init__(self, value: int) -> None:
        self.value = value

    def sample(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
        return np.full((*size, 3), self.value, dtype=np.uint8)


# --- Perlin ------------------------------------------------------------------------------------------


def test_perlin_noise_range_and_arbitrary_sizes() -> None:
    for shape, res in [((64, 64), (4, 4)), ((100, 37), (32, 3)), ((17, 250), (1, 16))]:
        noise = perlin_noise_2d(shape, res, _rng(0))
        assert noise.shape == shape and noise.dtype == np.float32
        assert np.abs(noise).max() <= 1.0 + 1e-5
        assert noise.std() > 0.05


def test_perlin_mask_binary_shape_deterministic() -> None:
    mask = perlin_mask((96, 80), _rng(1))
    assert mask.dtype == bool and mask.shape == (96, 80)
    assert np.array_equal(mask, perlin_mask((96, 80), _rng(1)))
    assert any(not np.array_equal(mask, perlin_mask((96, 80), _rng(s))) for s in range(2, 5))


def test_perlin_mask_coverage_varies_and_is_neither_always_empty_nor_full() -> None:
    rng = _rng(2)
    coverage = np.array([perlin_mask((64, 64), rng).mean() for _ in range(200)])
    assert (coverage > 0).mean() > 0.5
    assert (coverage < 1).all()
    assert coverage.std() > 0.01


def test_perlin_mask_structure_follows_resolution() -> None:
    def mean_components(exp: int) -> float:
        rng = _rng(3)
        counts = [
            cv2.connectedComponents(perlin_mask((128, 128), rng, exp, exp + 1).astype(np.uint8))[0] - 1
            for _ in range(20)
        ]
        return float(np.mean(counts))

    coarse, fine = mean_components(1), mean_components(5)
    assert fine > 4 * coarse  # more lattice cells -> many more, smaller blobs


def test_perlin_mask_rejects_bad_exponents() -> None:
    with pytest.raises(ValueError):
        perlin_mask((32, 32), _rng(0), min_exp=3, max_exp=3)


# --- textures ----------------------------------------------------------------------------------------


def test_procedural_textures_each_kind() -> None:
    for kind in PROCEDURAL_KINDS:
        source = ProceduralTextureSource([kind])
        texture = source.sample(_rng(4), (48, 70))
        assert texture.shape == (48, 70, 3) and texture.dtype == np.uint8, kind
        assert texture.std() > 1.0, kind
        assert np.array_equal(texture, source.sample(_rng(4), (48, 70))), kind
        assert not np.array_equal(texture, source.sample(_rng(5), (48, 70))), kind


def test_procedural_source_is_diverse_and_validates_kinds() -> None:
    source = ProceduralTextureSource()
    means = np.array([source.sample(_rng(s), (32, 32)).mean(axis=(0, 1)) for s in range(30)])
    assert means.std(axis=0).min() > 10  # colours vary between samples
    with pytest.raises(ValueError, match="valid"):
        ProceduralTextureSource(["nope"])


def _write_texture_tree(root: Path) -> None:
    rng = _rng(6)
    (root / "banded").mkdir(parents=True)
    (root / "dotted" / "deeper").mkdir(parents=True)
    for i, path in enumerate(
        [root / "banded" / "a.png", root / "banded" / "b.JPG", root / "dotted" / "deeper" / "c.bmp"]
    ):
        image = rng.integers(0, 256, size=(20 + i, 30, 3), dtype=np.uint8)
        assert cv2.imwrite(str(path), image)
    (root / "banded" / "notes.txt").write_text("not an image")


def test_folder_texture_source_reads_tree(tmp_path: Path) -> None:
    _write_texture_tree(tmp_path / "dtd")
    source = make_texture_source(str(tmp_path / "dtd"))
    assert isinstance(source, FolderTextureSource) and isinstance(source, TextureSource)
    assert len(source) == 3
    samples = [source.sample(_rng(s), (40, 50)) for s in range(12)]
    assert all(s.shape == (40, 50, 3) and s.dtype == np.uint8 for s in samples)
    assert len({s.tobytes() for s in samples}) > 1
    assert np.array_equal(source.sample(_rng(7), (40, 50)), source.sample(_rng(7), (40, 50)))


def test_folder_texture_source_errors_name_the_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty_textures"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="empty_textures"):
        FolderTextureSource(empty)
    with pytest.raises(FileNotFoundError, match="missing_textures"):
        FolderTextureSource(tmp_path / "missing_textures")


def test_make_texture_source_defaults_to_procedural() -> None:
    assert isinstance(make_texture_source(None), ProceduralTextureSource)
    assert isinstance(make_texture_source(""), ProceduralTextureSource)


# --- texture augmentation ------------------------------------------------------------------------------


def test_texture_augmenter_changes_texture_and_is_deterministic() -> None:
    texture = ProceduralTextureSource(["noise"]).sample(_rng(8), (64, 64))
    augmenter = TextureAugmenter(3)
    # Global random state must play no part: scramble it between the two calls.
    random.seed(1)
    np.random.seed(1)
    first = augmenter(texture, _rng(9))
    random.seed(2)
    np.random.seed(2)
    second = augmenter(texture, _rng(9))
    assert np.array_equal(first, second)
    assert first.shape == texture.shape and first.dtype == np.uint8
    outputs = [augmenter(texture, _rng(s)) for s in range(10, 20)]
    assert sum(not np.array_equal(o, texture) for o in outputs) >= 9
    assert len({o.tobytes() for o in outputs}) == len(outputs)


@pytest.mark.parametrize("name", TEXTURE_AUGMENTER_NAMES)
def test_each_texture_augmenter_is_seeded_by_the_generator(name: str) -> None:
    texture = ProceduralTextureSource(["marble"]).sample(_rng(10), (48, 48))
    augmenter = TextureAugmenter(1, names=[name])
    outputs = [augmenter(texture, _rng(s)) for s in (11, 11, 12, 13, 14, 15)]
    assert np.array_equal(outputs[0], outputs[1])
    assert all(o.shape == texture.shape and o.dtype == np.uint8 for o in outputs)
    if name in {"invert", "autocontrast", "equalize"}:  # no random parameters
        assert not np.array_equal(outputs[0], texture)
    else:
        assert len({o.tobytes() for o in outputs}) > 1


def test_texture_augmenter_zero_is_identity_and_validates() -> None:
    texture = _random_image(1)
    assert TextureAugmenter(0)(texture, _rng(0)) is texture
    with pytest.raises(ValueError):
        TextureAugmenter(11)
    with pytest.raises(ValueError, match="valid"):
        TextureAugmenter(1, names=["blur"])


# --- DRAEM blending --------------------------------------------------------------------------------------


def test_draem_deterministic_and_seed_dependent() -> None:
    synth = DraemSynthesizer(ProceduralTextureSource(), texture_augmenters=3, clean_probability=0.2)
    image = _random_image(2)
    a_img, a_mask = synth(image, _rng(20))
    b_img, b_mask = synth(image, _rng(20))
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    others = [synth(image, _rng(s))[0] for s in range(21, 25)]
    assert any(not np.array_equal(a_img, o) for o in others)


def test_draem_changes_only_inside_mask() -> None:
    synth = DraemSynthesizer(ProceduralTextureSource())
    image = _random_image(3)
    changed_fraction = []
    for seed in range(10):
        out, mask = synth(image, _rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape and mask.shape == image.shape[:2]
        assert mask.sum() > synth.min_mask_pixels
        assert np.array_equal(out[~mask], image[~mask])
        changed_fraction.append(np.any(out[mask] != image[mask], axis=-1).mean())
    assert np.mean(changed_fraction) > 0.8


def test_draem_blend_formula() -> None:
    image = np.full((64, 64, 3), 40, dtype=np.uint8)
    synth = DraemSynthesizer(_ConstantTexture(240), beta_range=(0.25, 0.25))
    out, mask = synth(image, _rng(0))
    assert mask.any()
    expected = round((0.75 * 240 / 255 + 0.25 * 40 / 255) * 255)
    assert np.all(out[mask] == expected) and np.all(out[~mask] == 40)
    # beta = 1 keeps the image: the texture has zero weight.
    out, mask = DraemSynthesizer(_ConstantTexture(240), beta_range=(1.0, 1.0))(image, _rng(0))
    assert mask.any() and np.array_equal(out, image)


def test_draem_respects_foreground() -> None:
    synth = DraemSynthesizer(ProceduralTextureSource())
    image = _random_image(4)
    foreground = np.zeros((64, 64), dtype=bool)
    foreground[16:48, 8:40] = True
    for seed in range(15):
        out, mask = synth(image, _rng(seed), foreground)
        assert not (mask & ~foreground).any()
        assert np.array_equal(out[~foreground], image[~foreground])


def test_draem_empty_foreground_gives_clean_sample() -> None:
    synth = DraemSynthesizer(ProceduralTextureSource(), max_retries=3)
    image = _random_image(5)
    out, mask = synth(image, _rng(0), np.zeros((64, 64), dtype=bool))
    assert not mask.any() and np.array_equal(out, image)
    with pytest.raises(ValueError, match="shape"):
        synth(image, _rng(0), np.ones((32, 32), dtype=bool))


def test_draem_clean_probability() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    rng = _rng(30)
    synth = DraemSynthesizer(_ConstantTexture(255), clean_probability=0.2, min_mask_pixels=0)
    clean = np.mean([not synth(image, rng)[1].any() for _ in range(1000)])
    assert abs(clean - 0.2) < 0.05
    always = DraemSynthesizer(_ConstantTexture(255), clean_probability=0.0, min_mask_pixels=0)
    assert all(always(image, rng)[1].any() for _ in range(100))


def test_draem_is_picklable_for_dataloader_workers() -> None:
    synth = DraemSynthesizer(ProceduralTextureSource(), texture_augmenters=3)
    clone = pickle.loads(pickle.dumps(synth))
    image = _random_image(6)
    assert np.array_equal(synth(image, _rng(1))[0], clone(image, _rng(1))[0])


def test_blocks_reject_legacy_random_state() -> None:
    with pytest.raises(TypeError, match="Generator"):
        perlin_mask((8, 8), 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        DraemSynthesizer(ProceduralTextureSource())(_random_image(), np.random)  # type: ignore[arg-type]


# --- simplex noise --------------------------------------------------------------------------------------


def _scalar_simplex(x: float, y: float, z: float, perm: np.ndarray) -> float:
    """Straightforward per-point classic 3-D simplex noise, branch by branch, as a reference."""
    skew = (x + y + z) / 3.0
    i, j, k = math.floor(x + skew), math.floor(y + skew), math.floor(z + skew)
    unskew = (i + j + k) / 6.0
    x0, y0, z0 = x - i + unskew, y - j + unskew, z - k + unskew
    if x0 >= y0:
        if y0 >= z0:
            first, second = (1, 0, 0), (1, 1, 0)
        elif x0 >= z0:
            first, second = (1, 0, 0), (1, 0, 1)
        else:
            first, second = (0, 0, 1), (1, 0, 1)
    elif y0 < z0:
        first, second = (0, 0, 1), (0, 1, 1)
    elif x0 < z0:
        first, second = (0, 1, 0), (0, 1, 1)
    else:
        first, second = (0, 1, 0), (1, 1, 0)
    total = 0.0
    for step, n in (((0, 0, 0), 0), (first, 1), (second, 2), ((1, 1, 1), 3)):
        dx, dy, dz = x0 - step[0] + n / 6.0, y0 - step[1] + n / 6.0, z0 - step[2] + n / 6.0
        t = 0.6 - dx * dx - dy * dy - dz * dz
        if t > 0:
            index = perm[(i & 255) + step[0] + perm[(j & 255) + step[1] + perm[(k & 255) + step[2]]]] % 12
            g = simplex_module._GRADIENTS[index]
            total += t**4 * (g[0] * dx + g[1] * dy + g[2] * dz)
    return 32.0 * total


def test_vectorised_simplex_matches_scalar_reference() -> None:
    rng = _rng(40)
    perm = simplex_module._permutation_table(rng)
    points = rng.uniform(-40.0, 40.0, size=(3, 300))
    points[:, :50] = np.round(points[:, :50])  # lattice points and ties between coordinates
    points[2, 50:100] = points[0, 50:100]
    fast = simplex_module._simplex_points(points[0], points[1], points[2], perm)
    slow = np.array([_scalar_simplex(*p, perm) for p in points.T])
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_simplex_noise_bounded_deterministic_and_smooth() -> None:
    single = simplex_noise_3d((3, 64, 64), _rng(41), frequency=4.0)
    assert single.shape == (3, 64, 64) and single.dtype == np.float32
    assert np.abs(single).max() <= 1.0 and single.std() > 0.15
    fractal = simplex_noise_3d((3, 64, 64), _rng(41), frequency=32.0, octaves=6, persistence=0.6)
    assert np.abs(fractal).max() <= fractal_bound(6, 0.6)
    normalised = simplex_noise_3d((3, 64, 64), _rng(41), 32.0, 6, 0.6, normalise=True)
    assert np.abs(normalised).max() <= 1.0
    assert np.array_equal(fractal, simplex_noise_3d((3, 64, 64), _rng(41), 32.0, 6, 0.6))
    assert not np.array_equal(fractal, simplex_noise_3d((3, 64, 64), _rng(42), 32.0, 6, 0.6))

    def neighbour_correlation(noise: np.ndarray) -> float:
        return float(np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1])

    smooth = simplex_noise_3d((1, 64, 64), _rng(43), frequency=32.0)
    rough = simplex_noise_3d((1, 64, 64), _rng(43), frequency=1.0)
    assert neighbour_correlation(smooth) > 0.95
    assert neighbour_correlation(rough) < 0.5


def test_simplex_patch_geometry_and_confinement() -> None:
    patcher = SimplexNoisePatch()
    image = _random_image(7, size=128)
    base = image.astype(np.float32) / 255.0
    rng = _rng(50)
    heights, widths = [], []
    for _ in range(60):
        noisy, mask = patcher(image, rng)
        assert noisy.dtype == np.float32 and noisy.shape == image.shape
        rows, cols = np.nonzero(mask)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == h * w  # a single axis-aligned rectangle
        assert 10 <= h < 32 and 10 <= w < 32
        heights.append(h)
        widths.append(w)
        delta = noisy - base
        assert np.all(delta[~mask] == 0)
        assert np.abs(delta).max() <= patcher.max_abs_delta + 1e-6
    assert len(set(heights)) > 5 and len(set(widths)) > 5


def test_simplex_patch_amplitude_statistics_and_determinism() -> None:
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    base = image.astype(np.float32) / 255.0
    deltas = {}
    for amplitude in (0.1, 0.2):
        noisy, mask = SimplexNoisePatch(amplitude=amplitude)(image, _rng(51))
        deltas[amplitude] = (noisy - base)[mask]
    # Same seed -> same patch and noise, so the change scales exactly with the amplitude.
    np.testing.assert_allclose(deltas[0.2], 2.0 * deltas[0.1], atol=1e-6)
    patches = [SimplexNoisePatch()(image, _rng(s)) for s in range(52, 62)]
    inside = np.concatenate([(noisy - base)[mask].ravel() for noisy, mask in patches])
    assert 0.02 < inside.std() < 0.2  # about a quarter of the 0.2 amplitude: smooth fractal noise
    first, first_mask = SimplexNoisePatch()(image, _rng(60))
    again, again_mask = SimplexNoisePatch()(image.astype(np.float32) / 255.0, _rng(60))
    np.testing.assert_allclose(first, again, atol=1e-6)
    assert np.array_equal(first_mask, again_mask)


# --- foreground -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "params"),
    [("threshold", {"threshold": 115}), ("otsu", {}), ("grabcut", {})],
)
def test_foreground_finds_bright_disc(method: str, params: dict) -> None:
    mask = foreground_mask(_disc_image(), method, **params)
    assert mask.dtype == bool and _iou(mask, _disc_truth()) > 0.85


@pytest.mark.parametrize(
    ("method", "params"),
    [("threshold", {"threshold": 115, "invert": True}), ("otsu", {"invert": True}), ("grabcut", {})],
)
def test_foreground_finds_dark_disc(method: str, params: dict) -> None:
    mask = foreground_mask(_disc_image(fg=30, bg=200), method, **params)
    assert _iou(mask, _disc_truth()) > 0.85


def test_foreground_geometric_methods() -> None:
    image = _random_image(8, size=100)
    assert foreground_mask(image, "none").all()
    disc = foreground_mask(image, "disc")
    assert abs(disc.sum() - math.pi * 45**2) < 0.02 * disc.sum()
    assert disc[50, 50] and not disc[0, 0] and not disc[50, 2]
    rect = foreground_mask(image, "rect")
    rows, cols = np.nonzero(rect)
    assert rect.sum() == 70 * 70 and rows.min() == 15 and cols.min() == 15


def test_foreground_unknown_method_and_parameter() -> None:
    with pytest.raises(ValueError) as info:
        foreground_mask(_disc_image(), "magic")
    assert all(name in str(info.value) for name in FOREGROUND_METHODS)
    with pytest.raises(TypeError):
        foreground_mask(_disc_image(), "otsu", threshold=3)


def test_foreground_empty_mask_falls_back_with_warning() -> None:
    with pytest.warns(UserWarning, match="threshold"):
        mask = foreground_mask(_disc_image(), "threshold", threshold=255)
    assert mask.all()
