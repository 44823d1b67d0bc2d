"""Tests of kdad.metrics.thresholds against hand-made examples and naive numpy references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kdad.metrics import (
    DECISION_RULE,
    THRESHOLDED_IMAGE_KEYS,
    THRESHOLDED_PIXEL_KEYS,
    AnomalyMetrics,
    GrowingHistogram,
    NormalScoreCalibrator,
    PixelMetricAccumulator,
    ThresholdEstimate,
    Thresholds,
    f1_max,
    f1_optimal_threshold,
    is_anomalous,
    manual_threshold,
    normal_quantile_threshold,
    pixel_quantile_threshold,
    thresholded_image_metrics,
    thresholded_pixel_metrics,
)

# --------------------------------------------------------------------------------------------------
# Naive references, written from the definitions (score > t is NOK)
# --------------------------------------------------------------------------------------------------


def ref_quantile(scores: np.ndarray, fpr: float) -> float:
    """Smallest observed score t with mean(scores > t) <= fpr, by trying every observed score."""
    return min(t for t in scores if (scores > t).sum() / scores.size <= fpr)


def ref_counts(scores: np.ndarray, anomalous: np.ndarray, t: float) -> tuple[int, int, int, int]:
    nok = scores > t
    return (
        int((nok & anomalous).sum()),
        int((nok & ~anomalous).sum()),
        int((~nok & ~anomalous).sum()),
        int((~nok & anomalous).sum()),
    )


def ref_f1(scores: np.ndarray, anomalous: np.ndarray, t: float) -> float:
    tp, fp, _, fn = ref_counts(scores, anomalous, t)
    return 2 * tp / (2 * tp + fp + fn)


def crafted_maps(seed: int, n_images: int = 8, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy maps with raised rectangles on the defect masks of the anomalous images."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n_images, size, size))
    masks = np.zeros(maps.shape, dtype=bool)
    labels = np.arange(n_images) % 2
    for b in np.flatnonzero(labels):
        y, x = rng.integers(0, size - 4, 2)
        h, w = rng.integers(2, 5, 2)
        masks[b, y : y + h, x : x + w] = True
    maps += masks * rng.uniform(1.0, 3.0)
    return maps, masks, labels


def test_decision_rule_is_strict() -> None:
    assert DECISION_RULE == "score > threshold"
    assert is_anomalous(torch.tensor([0.25, 0.5, 0.75]), 0.5).tolist() == [False, False, True]


# --------------------------------------------------------------------------------------------------
# normal_quantile, images
# --------------------------------------------------------------------------------------------------


def test_quantile_hand_made_with_ties() -> None:
    scores = np.array([0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    est = normal_quantile_threshold(scores, fpr=0.2)
    assert est.value == 5.0  # 6 and 7 above: exactly 20 %
    assert est.achieved_fpr == 0.2
    # 50 % allows 5 above; 2.0 would leave 7 above, so t is the tied 3.0 and all three 3s stay OK (40 %).
    est = normal_quantile_threshold(scores, fpr=0.5)
    assert est.value == 3.0
    assert est.achieved_fpr == 0.4
    assert (est.n, est.fpr_resolution, est.score_min, est.score_max) == (10, 0.1, 0.0, 7.0)


def test_quantile_uses_the_fpr_definition_not_a_rounded_product() -> None:
    # 0.29 * 100 == 28.999999999999996: flooring it would allow 28 exceedances instead of 29.
    est = normal_quantile_threshold(np.arange(100.0), fpr=0.29)
    assert est.value == 70.0
    assert est.achieved_fpr == 0.29


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.3])
def test_quantile_matches_naive_reference(seed: int, fpr: float) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=int(rng.integers(5, 200))), 1)  # rounded: many ties
    est = normal_quantile_threshold(torch.from_numpy(scores), fpr)
    assert est.value == ref_quantile(scores, fpr)
    assert est.achieved_fpr == pytest.approx((scores > est.value).mean(), abs=0)
    assert est.achieved_fpr <= fpr


def test_quantile_small_n_note_and_bound() -> None:
    est = normal_quantile_threshold(np.linspace(0.0, 1.0, 20), fpr=0.01)
    assert est.value == 1.0  # the highest normal score: nothing finer than 1/20 can be checked
    assert est.achieved_fpr == 0.0
    assert "with 20 normal images the smallest FPR that can be checked is 5 %" in est.note
    # Zero exceedances in 20: the Clopper-Pearson bound has the closed form 1 - 0.05 ** (1 / 20).
    assert est.fpr_upper_95 == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-9)
    large = normal_quantile_threshold(np.linspace(0.0, 1.0, 1000), fpr=0.01)
    assert large.note == ""
    assert 0.01 < large.fpr_upper_95 < 0.02


def test_quantile_upper_bound_has_95_percent_coverage() -> None:
    # Uniform normal scores: the true FPR at t is 1 - t, so the coverage of the bound can be counted.
    rng = np.random.default_rng(0)
    covered = [
        1.0 - est.value <= est.fpr_upper_95
        for est in (normal_quantile_threshold(rng.random(50), fpr=0.05) for _ in range(2000))
    ]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)


def test_quantile_constant_scores() -> None:
    est = normal_quantile_threshold(np.full(200, -1.25), fpr=0.01)
    assert est.value == -1.25
    assert est.achieved_fpr == 0.0
    assert est.score_min == est.score_max == -1.25
    assert "all 200 calibration images score -1.25" in est.note
    assert thresholded_image_metrics([-1.25, 0.0], [0, 1], est.value)["fpr"] == 0.0
    assert ThresholdEstimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est


def test_quantile_invalid_inputs() -> None:
    with pytest.raises(ValueError, match="at least one"):
        normal_quantile_threshold(np.zeros(0))
    for fpr in (-0.1, 1.0, math.nan, True):
        with pytest.raises(ValueError, match="fpr"):
            normal_quantile_threshold(np.arange(5.0), fpr)
    with pytest.raises(ValueError, match="non-finite"):
        normal_quantile_threshold(np.array([0.0, math.nan]))


# --------------------------------------------------------------------------------------------------
# normal_quantile, pixels
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [64, 2**16])
@pytest.mark.parametrize("fpr", [0.01, 0.2])
def test_pixel_quantile_within_one_bin_of_exact(n_bins: int, fpr: float) -> None:
    maps = np.random.default_rng(1).gamma(2.0, size=(10, 16, 16))
    calib = NormalScoreCalibrator(n_bins=n_bins)
    for lo in (0, 4):
        calib.update(maps[lo : lo + 4].max(axis=(1, 2)), maps[lo : lo + 4])
    pixels = maps[:8].reshape(-1)
    est = calib.pixel_threshold(fpr)
    exact = ref_quantile(pixels, fpr)
    assert exact <= est.value < exact + est.score_resolution  # conservative, within one bin
    assert est.score_resolution == calib._hist.bin_width
    assert est.achieved_fpr == (pixels > est.value).mean()  # exact for the value returned
    assert est.achieved_fpr <= fpr
    assert (est.n, est.n_images, est.fpr_upper_95) == (pixels.size, 8, None)
    assert "correlated" in est.note


@pytest.mark.parametrize("value", [0.0, 0.3, -2.5, 1e6])
def test_pixel_quantile_constant_maps(value: float) -> None:
    calib = NormalScoreCalibrator()
    calib.update(torch.full((3,), value, dtype=torch.float64), torch.full((3, 1, 5, 5), value, dtype=torch.float64))
    thresholds = calib.compute(fpr=0.01)
    assert thresholds.image.value == value
    assert thresholds.pixel is not None
    assert thresholds.pixel.value == value
    assert thresholds.pixel.achieved_fpr == 0.0
    assert (thresholds.pixel.score_min, thresholds.pixel.score_max) == (value, value)


def test_calibrator_validation_and_image_only() -> None:
    calib = NormalScoreCalibrator()
    with pytest.raises(ValueError, match="needs maps"):
        calib.update(np.zeros(2))
    with pytest.raises(ValueError, match="batch size"):
        calib.update(np.zeros(2), np.zeros((3, 4, 4)))
    assert calib.n_images == 0
    image_only = NormalScoreCalibrator(pixel=False)
    image_only.update(np.arange(200.0))
    thresholds = image_only.compute(fpr=0.01)
    assert thresholds.pixel is None
    assert thresholds.image.value == 197.0
    with pytest.raises(ValueError, match="pixel=False"):
        image_only.pixel_threshold()


# --------------------------------------------------------------------------------------------------
# F1-optimal
# --------------------------------------------------------------------------------------------------


def test_f1_threshold_hand_made() -> None:
    # NOK = {0.2, 0.2, 0.5, 0.9}: TP 3, FP 1, F1 6/7 beats NOK = {0.5, 0.9} (F1 4/5).
    est = f1_optimal_threshold([0.1, 0.2, 0.2, 0.5, 0.9], [0, 0, 1, 1, 1], policy="f1_val")
    assert est.value == pytest.approx(0.15, abs=1e-15)
    assert est.f1 == pytest.approx(6 / 7, abs=1e-15)
    assert est.achieved_fpr == 0.5
    assert (est.policy, est.level, est.score_resolution) == ("f1_val", "image", 0.0)
    assert "validation" in est.note


def test_f1_ties_go_to_the_highest_threshold() -> None:
    # NOK = {4}: F1 2/3; NOK = everything: F1 2/3 too. The fewer NOK calls win.
    est = f1_optimal_threshold([1.0, 2.0, 3.0, 4.0], [1, 0, 0, 1])
    assert est.value == 3.5
    assert est.f1 == pytest.approx(2 / 3, abs=1e-15)
    assert "optimistic" in est.note


def test_f1_everything_nok_sits_just_below_the_minimum() -> None:
    est = f1_optimal_threshold([1.0, 2.0, 3.0], [1, 0, 1])
    assert est.value == np.nextafter(1.0, -np.inf)
    assert thresholded_image_metrics([1.0, 2.0, 3.0], [1, 0, 1], est.value)["recall"] == 1.0


def test_f1_midpoint_respects_the_strict_rule_between_adjacent_floats() -> None:
    # 0.5 a + 0.5 b rounds (ties to even) up to b here, which would leave b OK under score > t.
    a = np.nextafter(1.0, 2.0)
    b = np.nextafter(a, 2.0)
    est = f1_optimal_threshold([a, b], [0, 1])
    assert a <= est.value < b
    assert est.f1 == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_f1_threshold_reaches_f1_max_and_never_splits_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(60) < 0.4
    scores = np.round(rng.normal(size=60) + labels, 1)
    est = f1_optimal_threshold(scores, labels.astype(int))
    assert est.value not in set(scores)  # a midpoint or below the minimum, never an observed score
    assert ref_f1(scores, labels, est.value) == pytest.approx(est.f1, abs=1e-15)
    assert est.f1 == pytest.approx(f1_max(scores, labels), abs=1e-15)
    assert est.achieved_fpr == (scores[~labels] > est.value).mean()


def test_f1_one_class_and_bad_policy_raise() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous images, got 0 normal and 3 anomalous"):
        f1_optimal_threshold([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="got 3 normal and 0 anomalous"):
        f1_optimal_threshold([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="policy"):
        f1_optimal_threshold([0.1, 0.2], [0, 1], policy="normal_quantile")
    acc = PixelMetricAccumulator()
    acc.update(np.random.default_rng(0).random((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="both normal and anomalous pixels"):
        acc.f1_threshold()


# --------------------------------------------------------------------------------------------------
# Thresholded metrics
# --------------------------------------------------------------------------------------------------


def test_thresholded_image_metrics_hand_made() -> None:
    scores = [0.1, 0.4, 0.5, 0.5, 0.8, 0.9]
    labels = [0, 0, 1, 0, 1, 1]
    # t = 0.5: the two 0.5s are OK (strict rule), NOK = {0.8, 0.9}.
    out = thresholded_image_metrics(scores, labels, 0.5)
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (2, 0, 3, 1)
    assert out["precision"] == 1.0
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["fpr"] == 0.0
    assert out["f1"] == pytest.approx(4 / 5)
    assert out["accuracy"] == pytest.approx(5 / 6)
    out = thresholded_image_metrics(torch.tensor(scores), torch.tensor(labels), 0.45)
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (3, 1, 2, 0)
    assert (out["precision"], out["recall"], out["fpr"]) == (0.75, 1.0, pytest.approx(1 / 3))
    assert out["f1"] == pytest.approx(6 / 7)


def test_thresholded_image_metrics_empty_denominators() -> None:
    nothing_nok = thresholded_image_metrics([0.1, 0.2], [0, 1], 5.0)
    assert (nothing_nok["precision"], nothing_nok["recall"], nothing_nok["f1"]) == (1.0, 0.0, 0.0)
    all_normal = thresholded_image_metrics([0.1, 0.2], [0, 0], 5.0)
    assert (all_normal["recall"], all_normal["f1"], all_normal["fpr"], all_normal["accuracy"]) == (1.0, 1.0, 0.0, 1.0)
    all_anomalous = thresholded_image_metrics([0.1, 0.2], [1, 1], 0.15)
    assert (all_anomalous["fpr"], all_anomalous["precision"], all_anomalous["recall"]) == (0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="at least one image"):
        thresholded_image_metrics([], [], 0.0)
    with pytest.raises(ValueError, match="finite"):
        thresholded_image_metrics([0.1], [0], math.nan)


@pytest.mark.parametrize("n_bins", [32, 2**16])
@pytest.mark.parametrize("seed", range(3))
def test_thresholded_pixel_metrics_within_one_bin(n_bins: int, seed: int) -> None:
    maps, masks, _ = crafted_maps(seed)
    acc = PixelMetricAccumulator(n_bins=n_bins)
    acc.update(maps[:5], masks[:5])
    acc.update(torch.from_numpy(maps[5:]).float().double(), torch.from_numpy(masks[5:]))
    width = acc.bin_width
    flat, anomalous = maps.reshape(-1), masks.reshape(-1)
    for t in [*np.quantile(flat, [0.05, 0.5, 0.9, 0.99]), flat.min() - 1.0, flat.max(), 0.3]:
        out = acc.thresholded(float(t))
        tp, fp = out["pixel_tp"], out["pixel_fp"]
        # The histogram counts those of some threshold t' in [t, t + width): between the two exact tables.
        hi_tp, hi_fp, _, _ = ref_counts(flat, anomalous, t)
        lo_tp, lo_fp, _, _ = ref_counts(flat, anomalous, t + width)
        assert lo_tp <= tp <= hi_tp
        assert lo_fp <= fp <= hi_fp
        assert out["pixel_tp"] + out["pixel_fn"] == anomalous.sum()
        assert out["pixel_fp"] + out["pixel_tn"] == (~anomalous).sum()
        assert out["pixel_iou"] == pytest.approx(tp / (tp + fp + out["pixel_fn"]), abs=1e-15)
        assert out["pixel_f1"] == pytest.approx(2 * tp / (2 * tp + fp + out["pixel_fn"]), abs=1e-15)
    # Below every score and at the maximum the histogram is exact.
    assert acc.thresholded(float(flat.min()) - 1.0)["pixel_recall"] == 1.0
    assert acc.thresholded(float(flat.max()))["pixel_tp"] == 0


@pytest.mark.parametrize("n_bins", [32, 2**16])
def test_pixel_f1_threshold_is_exact_at_its_value(n_bins: int) -> None:
    maps, masks, _ = crafted_maps(seed=4)
    acc = PixelMetricAccumulator(n_bins=n_bins)
    acc.update(maps, masks)
    est = acc.f1_threshold()
    flat, anomalous = maps.reshape(-1), masks.reshape(-1)
    exact_f1 = ref_f1(flat, anomalous, est.value)
    assert est.f1 == pytest.approx(exact_f1, abs=1e-15)
    assert est.f1 == pytest.approx(acc.compute()["pixel_f1_max"], abs=1e-15)
    assert acc.thresholded(est.value)["pixel_f1"] == pytest.approx(exact_f1, abs=1e-15)
    assert est.achieved_fpr == (flat[~anomalous] > est.value).mean()
    assert (est.level, est.n, est.n_images, est.score_resolution) == ("pixel", flat.size, 8, acc.bin_width)
    # The best threshold over all exact levels beats the binned one by at most what one bin holds.
    exact_best = max(ref_f1(flat, anomalous, t) for t in np.unique(flat))
    assert est.f1 <= exact_best + 1e-15
    if n_bins == 2**16:
        assert est.f1 == pytest.approx(exact_best, abs=1e-15)


def test_pixel_f1_threshold_on_constant_maps() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, :2, :2] = True
    acc = PixelMetricAccumulator()
    acc.update(np.full((2, 4, 4), 0.3), masks)
    est = acc.f1_threshold()
    assert est.value < 0.3  # the only split is "everything NOK"
    assert est.f1 == pytest.approx(2 * 4 / (2 * 4 + 28), abs=1e-15)
    assert acc.thresholded(est.value)["pixel_f1"] == est.f1
    assert acc.thresholded(0.3)["pixel_tp"] == 0  # a score equal to the threshold is OK


@pytest.mark.parametrize("low", [0.3, float(np.nextafter(0.3, 1.0))])
def test_pixel_f1_threshold_separates_adjacent_floats(low: float) -> None:
    # Two scores one ulp apart: the grid is finer than the float spacing, so bin edges round together.
    high = float(np.nextafter(low, 1.0))
    maps = np.array([[[low, low], [high, high]]])
    masks = np.array([[[False, False], [True, True]]])
    acc = PixelMetricAccumulator()
    acc.update(maps, masks)
    est = acc.f1_threshold()
    assert low <= est.value < high
    assert est.f1 == 1.0
    assert acc.thresholded(est.value)["pixel_iou"] == 1.0


def test_histogram_counts_above_by_hand() -> None:
    hist = GrowingHistogram(n_bins=4, n_channels=2)
    scores = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    hist.add(scores, np.array([0, 0, 1, 0, 1, 1], dtype=bool))
    assert hist.bin_width == 1.0  # bins [0,1) [1,2) [2,3) [3,4)
    assert hist.counts_above(-1.0).tolist() == [3, 3]
    assert hist.counts_above(3.0).tolist() == [0, 0]
    assert hist.counts_above(np.nextafter(2.0, -np.inf)).tolist() == [0, 2]  # exact: 2.0 and 3.0
    assert hist.counts_above(1.0).tolist() == [0, 2]  # 1.5 shares the bin of 1.0: counted as at t' = 2^-
    assert hist.counts_above(0.2).tolist() == [1, 3]
    out = thresholded_pixel_metrics(hist, float(np.nextafter(2.0, -np.inf)))
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (2, 0, 3, 1)
    assert (out["iou"], out["f1"], out["precision"]) == (pytest.approx(2 / 3), pytest.approx(4 / 5), 1.0)
    with pytest.raises(ValueError, match="empty"):
        thresholded_pixel_metrics(GrowingHistogram(), 0.0)
    # Bin width 4 and an edge at 0: one ulp below 0 underflows to -0.0 when rescaled, yet 0 and 4 are above.
    wide = GrowingHistogram(n_bins=4, n_channels=1)
    wide.add(np.array([-4.0, 0.0, 4.0]), np.zeros(3, dtype=bool))
    assert wide.bin_width == 4.0
    assert wide.counts_above(float(np.nextafter(0.0, -np.inf))).tolist() == [2]


def test_pixel_quantile_from_two_channel_histogram() -> None:
    hist = GrowingHistogram(n_bins=8, n_channels=2)
    hist.add(np.array([0.0, 1.0, 2.0, 3.0, 9.0]), np.array([0, 0, 0, 0, 1], dtype=bool))
    est = pixel_quantile_threshold(hist, fpr=0.25, n_images=1)
    # Normal pixels 0,1,2,3 allow one above: the exact threshold is 2; bin [2, 4) makes it 4^- here.
    assert 2.0 <= est.value < 2.0 + est.score_resolution
    assert est.achieved_fpr == 0.0


# --------------------------------------------------------------------------------------------------
# AnomalyMetrics
# --------------------------------------------------------------------------------------------------


def test_anomaly_metrics_thresholded_and_f1_thresholds() -> None:
    maps, masks, labels = crafted_maps(seed=7)
    scores = maps.reshape(8, -1).max(axis=1)
    metrics = AnomalyMetrics(pixel=True)
    metrics.update(scores[:3], labels[:3], maps[:3], masks[:3])
    metrics.update(scores[3:], labels[3:], maps[3:], masks[3:])
    thresholds = metrics.f1_thresholds()
    assert thresholds.pixel is not None
    out = metrics.thresholded(thresholds.image.value, thresholds.pixel.value)
    assert tuple(out) == THRESHOLDED_IMAGE_KEYS + THRESHOLDED_PIXEL_KEYS
    computed = metrics.compute()
    assert out["image_f1"] == pytest.approx(computed["image_f1_max"], abs=1e-15)
    assert out["pixel_f1"] == pytest.approx(computed["pixel_f1_max"], abs=1e-15)
    assert out["image_threshold"] == thresholds.image.value
    assert tuple(metrics.thresholded(thresholds.image.value)) == THRESHOLDED_IMAGE_KEYS  # no pixel threshold


def test_anomaly_metrics_image_only_and_empty() -> None:
    metrics = AnomalyMetrics(pixel=False)
    with pytest.raises(ValueError, match="no images"):
        metrics.thresholded(0.5)
    metrics.update([0.1, 0.9, 0.4], [0, 1, 1])
    assert metrics.f1_thresholds(policy="f1_val").pixel is None
    out = metrics.thresholded(0.5, pixel_threshold=0.5)  # no masks seen: pixel keys are left out
    assert tuple(out) == THRESHOLDED_IMAGE_KEYS
    assert (out["image_tp"], out["image_fn"]) == (1, 1)


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def test_thresholds_round_trip_through_json() -> None:
    calib = NormalScoreCalibrator()
    calib.update(np.arange(50.0), np.random.default_rng(0).random((50, 4, 4)))
    thresholds = calib.compute()
    text = json.dumps(thresholds.to_dict(), allow_nan=False)
    assert Thresholds.from_dict(json.loads(text)) == thresholds
    image_only = Thresholds(manual_threshold(0.7, score_min=0.0, score_max=2.0))
    assert Thresholds.from_dict(image_only.to_dict()) == image_only
    assert Thresholds.from_dict({"image": {"value": 1, "policy": "manual", "level": "image"}}).image.value == 1.0
    assert all(type(v) in (float, int, str, type(None)) for v in thresholds.image.to_dict().values())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"image": {"value": 0.5, "policy": "manual", "level": "image", "colour": 1}},
            r"unknown key\(s\) \['colour'\]",
        ),
        ({"image": {"policy": "manual", "level": "image"}}, r"missing key\(s\) \['value'\]"),
        ({"image": {"value": 0.5, "policy": "guess", "level": "image"}}, "'policy' 'guess': choose one of normal"),
        ({"image": {"value": "0.5", "policy": "manual", "level": "image"}}, "'value' must be a number"),
        ({"image": {"value": math.nan, "policy": "manual", "level": "image"}}, "'value' must be finite"),
        ({"image": {"value": 0.5, "policy": "manual", "level": "image", "n": -3}}, "'n' must be a non-negative"),
        ({"image": {"value": 0.5, "policy": "manual", "level": "pixel"}}, "Thresholds.image holds a 'pixel'"),
        ({"pixel": {"value": 0.5, "policy": "manual", "level": "pixel"}}, "image given: False"),
        ({"image": [0.5]}, "must be a mapping"),
        ([], "must be a mapping"),
    ],
)
def test_from_dict_rejects_bad_records(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Thresholds.from_dict(data)  # type: ignore[arg-type]
