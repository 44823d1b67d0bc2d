"""Tests of kdad.metrics against brute-force references written here from the metric definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from kdad.metrics import (
    IMAGE_KEYS,
    PIXEL_KEYS,
    AnomalyMetrics,
    GrowingHistogram,
    PerImageAuproAccumulator,
    PixelMetricAccumulator,
    average_precision,
    f1_max,
    image_auroc,
    per_image_aupro,
)

EIGHT = np.ones((3, 3), dtype=bool)

# --------------------------------------------------------------------------------------------------
# Brute-force references (deliberately naive: pairwise comparisons and explicit threshold loops)
# --------------------------------------------------------------------------------------------------


def bf_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def bf_threshold_table(s: np.ndarray, y: np.ndarray) -> list[tuple[int, int]]:
    """(tp, fp) for every distinct score used as threshold, highest threshold first."""
    return [(int(((s >= t) & (y == 1)).sum()), int(((s >= t) & (y == 0)).sum())) for t in np.unique(s)[::-1]]


def bf_ap(s: np.ndarray, y: np.ndarray) -> float:
    n_pos = int((y == 1).sum())
    ap, prev_recall = 0.0, 0.0
    for tp, fp in bf_threshold_table(s, y):
        recall = tp / n_pos
        ap += (recall - prev_recall) * (tp / (tp + fp))
        prev_recall = recall
    return ap


def bf_f1(s: np.ndarray, y: np.ndarray) -> float:
    n_pos = int((y == 1).sum())
    return max(2 * tp / (2 * tp + fp + (n_pos - tp)) for tp, fp in bf_threshold_table(s, y))


def area_clipped(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Piecewise-linear area over [0, limit], segment by segment (no library helper involved)."""
    area = 0.0
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:], strict=True):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area


def bf_standard_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """MVTec AD AUPRO: every distinct score is a shared threshold, regions averaged explicitly."""
    regions = []
    for b in range(maps.shape[0]):
        lab, n = ndimage.label(masks[b], structure=EIGHT)
        regions += [maps[b][lab == i] for i in range(1, n + 1)]
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(float((normal >= t).mean()))
        ys.append(float(np.mean([(r >= t).mean() for r in regions])))
    return area_clipped(np.array(xs), np.array(ys), limit) / limit


def rd4ad_reference(amap: np.ndarray, mask: np.ndarray, num_th: int = 200, limit: float = 0.3) -> float:
    """Line-by-line transcription of RD4AD's compute_pro on one image, with sklearn.metrics.auc inlined."""
    labeled, n = ndimage.label(mask, structure=EIGHT)
    regions = [np.argwhere(labeled == i) for i in range(1, n + 1)]
    binary = np.zeros_like(amap, dtype=bool)
    min_th, max_th = amap.min(), amap.max()
    delta = (max_th - min_th) / num_th
    pros, fprs = [], []
    for th in np.arange(min_th, max_th, delta):
        binary[amap <= th] = 0
        binary[amap > th] = 1
        pros.append(np.mean([binary[r[:, 0], r[:, 1]].sum() / len(r) for r in regions]))
        inverse = 1 - mask
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
    pro, fpr = np.array(pros), np.array(fprs)
    keep = fpr < limit
    pro, fpr = pro[keep], fpr[keep] / fpr[keep].max()
    dx = np.diff(fpr)
    direction = 1.0
    if np.any(dx < 0):
        assert np.all(dx <= 0), "x is neither increasing nor decreasing"
        direction = -1.0
    return float(direction * np.trapezoid(pro, fpr))


def exact_pixel_reference(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> dict[str, float]:
    """Exact pixel metrics for larger data: rank statistic + one sort, every distinct score a threshold.

    Checked against the brute-force references above on small data in test_exact_reference_is_exact.
    """
    s, y = maps.ravel(), masks.ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    auroc = (stats.rankdata(s)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    last_of_level = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = np.cumsum(y[order])[last_of_level].astype(float)
    fp = np.cumsum(~y[order])[last_of_level].astype(float)
    ap = float(np.sum(np.diff(np.r_[0.0, tp / n_pos]) * tp / (tp + fp)))
    f1 = float(np.max(2 * tp / (tp + fp + n_pos)))
    weights = np.zeros(maps.shape)
    n_regions = 0
    for b in range(maps.shape[0]):
        lab, n = ndimage.label(masks[b], structure=EIGHT)
        n_regions += n
        sizes = np.bincount(lab.ravel())
        weights[b][lab > 0] = 1.0 / sizes[lab[lab > 0]]
    pro = np.cumsum(weights.ravel()[order])[last_of_level] / n_regions
    aupro = area_clipped(np.r_[0.0, fp / n_neg], np.r_[0.0, pro], limit) / limit
    return {"pixel_auroc": auroc, "pixel_ap": ap, "pixel_f1_max": f1, "pixel_aupro": aupro}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def blob_data(
    n_images: int, size: int, seed: int, anomalous_fraction: float = 0.5, strength: float = 2.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Realistic-looking test set: smooth noisy maps, elliptic defects of varied size, some normal images,
    spurious hot spots on normal regions. Returns (maps float64, masks bool, labels int)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    maps = np.empty((n_images, size, size))
    masks = np.zeros((n_images, size, size), dtype=bool)
    labels = (rng.random(n_images) < anomalous_fraction).astype(int)
    for b in range(n_images):
        if labels[b]:
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, size, 2)
                ry, rx = rng.uniform(1, size / 6, 2)
                masks[b] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.5) * 3
        signal = ndimage.gaussian_filter(masks[b].astype(float), 2) * strength * rng.uniform(0.3, 1.5)
        hot = np.zeros((size, size))
        hot[tuple(rng.integers(0, size, 2))] = rng.uniform(0, 40)
        maps[b] = noise + signal + ndimage.gaussian_filter(hot, 2) + rng.normal(scale=0.05, size=(size, size))
    return maps, masks, labels


def small_tied_data(seed: int, n_images: int = 6, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Small maps quantised to 1/8, so scores tie a lot and histogram bins hold one level each."""
    maps, masks, _ = blob_data(n_images, size, seed, anomalous_fraction=0.7)
    return np.round(maps * 8) / 8, masks


def accumulate(maps: np.ndarray, masks: np.ndarray, splits: list[int] | None = None, **kw: float) -> dict[str, float]:
    acc = PixelMetricAccumulator(**kw)
    bounds = np.cumsum([0, *(splits or [maps.shape[0]])])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        acc.update(torch.from_numpy(maps[lo:hi]), torch.from_numpy(masks[lo:hi]))
    return acc.compute()


# --------------------------------------------------------------------------------------------------
# Image level
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [0, 1, 6])
def test_image_metrics_match_brute_force(seed: int, decimals: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(int)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + y * rng.uniform(0, 2), decimals)  # decimals=0 gives many ties
    assert image_auroc(s, y) == pytest.approx(bf_auroc(s, y), abs=1e-12)
    assert average_precision(s, y) == pytest.approx(bf_ap(s, y), abs=1e-12)
    assert f1_max(s, y) == pytest.approx(bf_f1(s, y), abs=1e-12)


def test_image_metrics_hand_computed() -> None:
    s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    assert image_auroc(s, y) == pytest.approx(0.75)
    # Thresholds 0.8, 0.4, 0.35: (R, P) = (.5, 1), (.5, .5), (1, 2/3).
    assert average_precision(s, y) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert f1_max(s, y) == pytest.approx(0.8)


def test_image_constant_scores() -> None:
    s, y = np.full(10, 3.0), np.array([1, 1, 1] + [0] * 7)
    assert image_auroc(s, y) == 0.5
    assert average_precision(s, y) == pytest.approx(0.3)
    assert f1_max(s, y) == pytest.approx(2 * 3 / (2 * 3 + 7))


def test_image_missing_class_gives_nan() -> None:
    for y in (np.zeros(5, int), np.ones(5, int)):
        s = np.arange(5.0)
        assert math.isnan(image_auroc(s, y))
        assert math.isnan(average_precision(s, y))
        assert math.isnan(f1_max(s, y))


def test_image_perfect_and_inverted() -> None:
    s, y = np.array([-3.0, -1.0, 2.0, 7.0, 9.0]), np.array([0, 0, 1, 1, 1])
    assert image_auroc(s, y) == 1.0 and average_precision(s, y) == 1.0 and f1_max(s, y) == 1.0
    assert image_auroc(-s, y) == 0.0


def test_image_inputs_torch_numpy_and_lists_agree() -> None:
    s = [0.3, 5.0, -2.0, 1.0, 1.0]
    y = [0, 1, 0, 1, 0]
    ref = image_auroc(np.array(s), np.array(y))
    assert image_auroc(torch.tensor(s), torch.tensor(y, dtype=torch.bool)) == ref
    assert image_auroc(s, y) == ref
    assert image_auroc(torch.tensor(s).unsqueeze(1), torch.tensor(y).float()) == ref


def test_image_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        image_auroc([0.1, math.nan], [0, 1])
    with pytest.raises(ValueError, match="non-finite"):
        image_auroc([0.1, math.inf], [0, 1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="differ"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])


def test_large_scores_rank_correctly_where_a_sigmoid_would_tie() -> None:
    rng = np.random.default_rng(0)
    normal, anomalous = rng.uniform(50, 55, 30), rng.uniform(55.5, 60, 30)
    s, y = np.r_[normal, anomalous], np.r_[np.zeros(30, int), np.ones(30, int)]
    # Squashing first would make every score 1.0 in float32, i.e. a coin flip.
    squashed = torch.sigmoid(torch.tensor(s, dtype=torch.float32)).numpy()
    assert np.all(squashed == 1.0) and image_auroc(squashed, y) == 0.5
    assert image_auroc(s, y) == 1.0
    # Same at pixel level.
    maps = np.stack([np.full((4, 4), v) for v in s])
    masks = np.zeros(maps.shape, bool)
    masks[30:, 1:3, 1:3] = True
    maps[30:][~masks[30:]] = 52.0
    out = accumulate(maps, masks)
    assert out["pixel_auroc"] == pytest.approx(1.0, abs=1e-12)
    assert out["pixel_aupro"] == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Pixel level: standard metrics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_exact_reference_is_exact(seed: int) -> None:
    maps, masks = small_tied_data(seed)
    ref = exact_pixel_reference(maps, masks)
    s, y = maps.ravel(), masks.ravel().astype(int)
    assert ref["pixel_auroc"] == pytest.approx(bf_auroc(s, y), abs=1e-12)
    assert ref["pixel_ap"] == pytest.approx(bf_ap(s, y), abs=1e-12)
    assert ref["pixel_f1_max"] == pytest.approx(bf_f1(s, y), abs=1e-12)
    assert ref["pixel_aupro"] == pytest.approx(bf_standard_aupro(maps, masks), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_pixel_metrics_exact_when_bins_resolve_every_level(seed: int, limit: float) -> None:
    # Levels 1/8 apart over a range of ~10 fall in distinct bins, so the histogram result is exact.
    maps, masks = small_tied_data(seed)
    out = accumulate(maps, masks, aupro_limit=limit)
    s, y = maps.ravel(), masks.ravel().astype(int)
    assert out["pixel_auroc"] == pytest.approx(bf_auroc(s, y), abs=1e-12)
    assert out["pixel_ap"] == pytest.approx(bf_ap(s, y), abs=1e-12)
    assert out["pixel_f1_max"] == pytest.approx(bf_f1(s, y), abs=1e-12)
    assert out["pixel_aupro"] == pytest.approx(bf_standard_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_single_component_vs_many_components() -> None:
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(3, 16, 16))
    one = np.zeros(maps.shape, bool)
    one[0, 2:12, 3:13] = True  # one large region: PRO is just its pixel recall
    many = np.zeros(maps.shape, bool)
    many[1, 2:12, 3:13] = True
    many[1, 14, 14] = True  # a 1-pixel region weighs as much as the 100-pixel one
    many[2, ::4, ::4] = True  # 16 isolated single-pixel regions
    many[2, 1, 1] = True  # diagonal neighbour of (0, 0): 8-connectivity merges them
    for masks in (one, many):
        m = np.round((maps + 2 * masks) * 16) / 16
        assert accumulate(m, masks)["pixel_aupro"] == pytest.approx(bf_standard_aupro(m, masks), abs=1e-12)
    # Regions are counted image by image with 8-connectivity: 2 in image 1, 16 in image 2.
    acc = PixelMetricAccumulator()
    acc.update(maps, many)
    assert acc._n_components == 18


def test_pixel_accuracy_on_realistic_maps() -> None:
    maps, masks, _ = blob_data(40, 64, seed=11)
    ref = exact_pixel_reference(maps, masks)
    out = accumulate(maps, masks, splits=[16, 16, 8])
    for key, value in ref.items():
        assert abs(out[key] - value) < 1e-3, (key, out[key], value)
    # The bins are fine enough that the error is far below the required 1e-3 on such data.
    assert max(abs(out[k] - v) for k, v in ref.items()) < 1e-4
    # Sanity: the data are neither trivial nor hopeless.
    assert 0.8 < ref["pixel_auroc"] < 0.999 and 0.3 < ref["pixel_aupro"] < 0.99


def test_streaming_split_invariance() -> None:
    maps, masks, _ = blob_data(40, 32, seed=5)
    whole = accumulate(maps, masks)
    for splits in ([1] * 40, [7, 13, 20], [39, 1]):
        parts = accumulate(maps, masks, splits=splits)
        for key in whole:
            assert parts[key] == pytest.approx(whole[key], abs=1e-12), (splits, key)


def test_range_growth_rebins_exactly() -> None:
    # Integer scores whose range doubles with every batch, negative ones included, then a far outlier:
    # ~15 regrids, yet the final range stays below n_bins, so the final bin width is 1 and every integer
    # level keeps its own bin. Any inexact merge would show up as a difference from the exact result.
    rng = np.random.default_rng(2)
    n = 12
    masks = np.zeros((n, 8, 8), bool)
    masks[1::2, 2:5, 2:6] = True
    masks[1::2, 7, 7] = True
    maps = np.empty((n, 8, 8))
    for b in range(n):
        scale = 2.0**b
        maps[b] = np.round(rng.normal(size=(8, 8)) * scale + masks[b] * scale * 2)
    maps[-1, 0, 0] = 2.0**15
    assert maps.max() - maps.min() < 2**16 - 1
    grow = accumulate(maps, masks, splits=[1] * n)
    shrink = accumulate(maps[::-1].copy(), masks[::-1].copy(), splits=[1] * n)  # widest batch first
    ref = exact_pixel_reference(maps, masks)
    for key, value in ref.items():
        assert grow[key] == pytest.approx(value, abs=1e-12), key
        assert shrink[key] == pytest.approx(value, abs=1e-12), key


def test_histogram_grid_independent_of_arrival_order() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=500) * 10.0**k - 3.0 * k for k in range(-3, 4)]
    chunks[2][0] = 1e7  # outlier in the middle of the stream
    hists = []
    for order in (range(7), reversed(range(7)), [3, 0, 6, 1, 5, 2, 4]):
        h = GrowingHistogram(n_bins=1024)
        for i in order:
            h.add(chunks[i], (chunks[i] > 0).astype(int), chunks[i], np.abs(chunks[i]))
        hists.append(h)
    first = hists[0]
    assert first.counts.sum() == 3500
    for h in hists[1:]:
        assert (h.exponent, h.origin) == (first.exponent, first.origin)
        np.testing.assert_array_equal(h.counts, first.counts)
        np.testing.assert_allclose(h.weights, first.weights, rtol=1e-12)
    # Width is the smallest power of two for which the range spans at most n_bins bins.
    span = 1e7 - min(c.min() for c in chunks)
    assert span / 1024 <= first.bin_width < 2 * span / 1023


def test_extreme_magnitudes_keep_their_order() -> None:
    # Subnormals, zeros of both signs and values near the float64 limits all on one grid. The bin width
    # is then ~2**1008, so the normal scores share two bins (documented coarsening) while the
    # anomalous ones stay above them.
    maps = np.array([[[-1e300, -5e-324], [0.0, -0.0]], [[5e-324, 1e300], [1e308, 1.7e308]]])
    masks = np.zeros(maps.shape, bool)
    masks[1, 1] = True
    out = accumulate(maps, masks)
    assert out["pixel_auroc"] == 1.0 and out["pixel_ap"] == 1.0 and out["pixel_aupro"] == 1.0
    out = accumulate(-maps, masks)
    assert out["pixel_auroc"] == 0.0


def test_negative_scores_and_offsets_do_not_matter() -> None:
    maps, masks, _ = blob_data(12, 24, seed=8)
    base = accumulate(maps, masks)
    shifted = accumulate(maps - 1000.0, masks)
    scaled = accumulate(maps * 1e-3 - 5.0, masks)
    ref = exact_pixel_reference(maps, masks)
    for key in ref:
        assert shifted[key] == pytest.approx(ref[key], abs=1e-4), key
        assert scaled[key] == pytest.approx(ref[key], abs=1e-4), key
        assert base[key] == pytest.approx(ref[key], abs=1e-4), key


def test_constant_maps() -> None:
    masks = np.zeros((3, 10, 10), bool)
    masks[1, 2:5, 2:5] = True
    masks[2, 6:, 6:] = True
    out = accumulate(np.full(masks.shape, 7.0), masks)
    assert out["pixel_auroc"] == 0.5
    assert out["pixel_ap"] == pytest.approx(masks.mean())
    # One threshold, straight ROC/PRO line from (0, 0) to (1, 1): area 0.3**2 / 2, normalised by 0.3.
    assert out["pixel_aupro"] == pytest.approx(0.15)
    assert out["pixel_aupro_per_image"] == 0.0


def test_pixel_perfect_and_inverted_detector() -> None:
    maps, masks, _ = blob_data(10, 32, seed=4)
    perfect = masks * 10.0 + np.random.default_rng(0).uniform(-1, 1, masks.shape)
    out = accumulate(perfect, masks)
    for key in PIXEL_KEYS:
        assert out[key] == pytest.approx(1.0, abs=1e-12), key
    out = accumulate(-perfect, masks)
    assert out["pixel_auroc"] == pytest.approx(0.0, abs=1e-12)
    assert out["pixel_aupro"] == pytest.approx(0.0, abs=1e-12)


def test_images_without_anomalies_count_as_normal_pixels() -> None:
    maps, masks = small_tied_data(0)
    extra = np.round(np.random.default_rng(1).normal(size=(3, 12, 12)) * 8) / 8 + 1.0
    all_maps = np.concatenate([maps, extra])
    all_masks = np.concatenate([masks, np.zeros(extra.shape, bool)])
    with_normals = accumulate(all_maps, all_masks)
    assert with_normals["pixel_aupro"] == pytest.approx(bf_standard_aupro(all_maps, all_masks), abs=1e-12)
    assert with_normals["pixel_aupro"] != pytest.approx(accumulate(maps, masks)["pixel_aupro"], abs=1e-6)
    # Only normal images: every pixel metric is undefined.
    only_normal = accumulate(extra, np.zeros(extra.shape, bool))
    assert all(math.isnan(only_normal[key]) for key in PIXEL_KEYS)


def test_state_memory_does_not_grow() -> None:
    def state_bytes(obj: object, seen: set[int] | None = None) -> int:
        seen = set() if seen is None else seen
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            return obj.nbytes
        if isinstance(obj, list | tuple | dict):
            items = obj.values() if isinstance(obj, dict) else obj
            return 8 * len(obj) + sum(state_bytes(v, seen) for v in items)
        if hasattr(obj, "__dict__"):
            return sum(state_bytes(v, seen) for v in vars(obj).values())
        return 0

    maps, masks, _ = blob_data(8, 32, seed=1)
    acc = PixelMetricAccumulator(n_bins=2**12)
    acc.update(maps, masks)
    after_one, reported = state_bytes(acc), acc.state_nbytes()
    for k in range(60):
        acc.update(maps * (1 + k), masks)  # widening range forces regrids too
    assert state_bytes(acc) == after_one
    assert acc.state_nbytes() == reported == 2**12 * 3 * 8


# --------------------------------------------------------------------------------------------------
# Pixel level: RD4AD per-image AUPRO
# --------------------------------------------------------------------------------------------------


def rng_strength(seed: int) -> float:
    return [0.5, 1.0, 2.5, 6.0][seed % 4]


@pytest.mark.parametrize("seed", range(8))
def test_per_image_aupro_matches_rd4ad_reference(seed: int) -> None:
    maps, masks, _ = blob_data(6, 32, seed=100 + seed, anomalous_fraction=1.0, strength=rng_strength(seed))
    for amap, mask in zip(maps, masks, strict=True):
        if not mask.any() or mask.all():
            continue
        expected = rd4ad_reference(amap, mask.astype(int))
        assert per_image_aupro(amap, mask) == pytest.approx(expected, abs=1e-12)
        assert per_image_aupro(torch.from_numpy(amap).float(), torch.from_numpy(mask)) == pytest.approx(
            rd4ad_reference(amap.astype(np.float32).astype(np.float64), mask.astype(int)), abs=1e-12
        )


def test_per_image_aupro_other_parameters() -> None:
    maps, masks, _ = blob_data(4, 24, seed=7, anomalous_fraction=1.0)
    for amap, mask in zip(maps, masks, strict=True):
        if mask.any() and not mask.all():
            for num_th, limit in ((50, 0.3), (200, 0.1), (300, 0.6)):
                assert per_image_aupro(amap, mask, num_th, limit) == pytest.approx(
                    rd4ad_reference(amap, mask.astype(int), num_th, limit), abs=1e-12
                )


def test_per_image_aupro_degenerate_cases() -> None:
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    rng = np.random.default_rng(0)
    # Constant map: nothing is ever detected.
    assert per_image_aupro(np.full((8, 8), 3.0), mask) == 0.0
    # Perfect map: every kept FPR is 0, so the reference would divide 0/0; we score the PRO reached.
    assert per_image_aupro(mask * 5.0, mask) == pytest.approx(1.0, abs=1e-12)
    assert per_image_aupro(mask * 5.0 + rng.uniform(0, 0.1, (8, 8)), mask) == pytest.approx(1.0)
    # Undefined: no region, or no normal pixel.
    assert math.isnan(per_image_aupro(rng.normal(size=(8, 8)), np.zeros((8, 8), bool)))
    assert math.isnan(per_image_aupro(rng.normal(size=(8, 8)), np.ones((8, 8), bool)))
    # Even the top threshold leaves > 30 % of normal pixels detected: no curve below the FPR limit.
    bad = np.where(mask, 0.0, 1.0)
    assert per_image_aupro(bad, mask) == 0.0


def test_per_image_accumulator_is_mean_over_images_with_both_classes() -> None:
    maps, masks, _ = blob_data(10, 32, seed=3)
    masks[0] = True  # fully anomalous image: skipped
    masks[1] = False  # anomalous label, empty mask: skipped
    expected = [rd4ad_reference(m, k.astype(int)) for m, k in zip(maps, masks, strict=True) if k.any() and not k.all()]
    acc = PerImageAuproAccumulator()
    acc.update(torch.from_numpy(maps[:4]), torch.from_numpy(masks[:4]))
    acc.update(maps[4:], masks[4:].astype(np.uint8))
    assert acc.n_images == len(expected)
    assert acc.compute() == pytest.approx(float(np.mean(expected)), abs=1e-12)
    pixel = PixelMetricAccumulator()
    pixel.update(maps, masks)
    assert pixel.compute()["pixel_aupro_per_image"] == pytest.approx(acc.compute(), abs=1e-15)
    acc.reset()
    assert math.isnan(acc.compute())


# --------------------------------------------------------------------------------------------------
# AnomalyMetrics
# --------------------------------------------------------------------------------------------------


def test_anomaly_metrics_end_to_end() -> None:
    maps, masks, labels = blob_data(20, 32, seed=9)
    masks[np.flatnonzero(labels)[0]] = False  # a "logical" anomaly: label 1, no mask
    scores = maps.reshape(20, -1).max(axis=1)
    metrics = AnomalyMetrics(pixel=True, aupro_limit=0.3)
    for lo in range(0, 20, 8):
        metrics.update(
            torch.from_numpy(scores[lo : lo + 8]),
            torch.from_numpy(labels[lo : lo + 8]),
            torch.from_numpy(maps[lo : lo + 8]).float().unsqueeze(1),  # [B, 1, H, W] float32
            torch.from_numpy(masks[lo : lo + 8]).unsqueeze(1),
        )
    out = metrics.compute()
    assert tuple(out) == IMAGE_KEYS + PIXEL_KEYS
    assert all(isinstance(v, float) for v in out.values())
    assert out["image_auroc"] == pytest.approx(bf_auroc(scores, labels), abs=1e-12)
    assert out["image_ap"] == pytest.approx(bf_ap(scores, labels), abs=1e-12)
    assert out["image_f1_max"] == pytest.approx(bf_f1(scores, labels), abs=1e-12)
    ref = exact_pixel_reference(maps.astype(np.float32).astype(np.float64), masks)
    for key, value in ref.items():
        # 20 small maps: F1-max moves in steps of ~1e-3 per pixel, so bin merging shows at that scale.
        assert out[key] == pytest.approx(value, abs=1e-3), key
    metrics.reset()
    assert all(math.isnan(v) for v in metrics.compute().values())


def test_anomaly_metrics_image_only() -> None:
    metrics = AnomalyMetrics(pixel=False)
    metrics.update(np.array([0.1, 2.0]), np.array([0, 1]))
    metrics.update(torch.tensor([0.5]), torch.tensor([0]), maps=torch.zeros(1, 4, 4))  # maps ignored
    out = metrics.compute()
    assert tuple(out) == IMAGE_KEYS
    assert out["image_auroc"] == 1.0


def test_anomaly_metrics_rejects_bad_batches_without_changing_state() -> None:
    metrics = AnomalyMetrics()
    maps = torch.randn(2, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1, 2:4, 2:4] = True
    metrics.update(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), maps, masks)
    before = metrics.compute()
    bad_maps = maps.clone()
    bad_maps[0, 0, 0] = float("nan")
    cases = [
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), bad_maps, masks), "non-finite"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), maps, masks.float() * 0.5), "only 0 and 1"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([1, 0]), maps, masks), "label 0 but a non-empty mask"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), maps[:, :4], masks), "same batch"),
        ((torch.tensor([0.0]), torch.tensor([0]), maps, masks), "same batch"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), None, None), "needs maps"),
        ((torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), maps[0], masks[0]), r"\[B, H, W\]"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            metrics.update(*args)
    after = metrics.compute()
    assert after.keys() == before.keys()
    assert all(after[k] == before[k] or (math.isnan(after[k]) and math.isnan(before[k])) for k in before)
    assert metrics.n_images == 2


def test_half_precision_maps_are_accepted() -> None:
    maps, masks = small_tied_data(1)
    exact = accumulate(maps, masks)
    for dtype in (torch.float16, torch.bfloat16):
        acc = PixelMetricAccumulator()
        # Values on a 1/8 grid below 32 are exactly representable in both formats.
        acc.update(torch.from_numpy(maps).to(dtype), torch.from_numpy(masks))
        out = acc.compute()
        for key in PIXEL_KEYS:
            assert out[key] == pytest.approx(exact[key], abs=1e-12), (dtype, key)
