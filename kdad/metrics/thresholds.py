"""Decision thresholds on raw anomaly scores, and the metrics of the thresholded predictions.

**Decision rule** (one rule everywhere in kdad, see :data:`DECISION_RULE`): an image or pixel is
anomalous (NOK) iff ``score > threshold``, strictly; a score equal to the threshold is normal (OK).
The threshold-free curve metrics of :mod:`kdad.metrics._curves` sweep levels with ``score >= level``;
that is only how they enumerate thresholds and does not change this rule.

Policies (``threshold.policy``), each giving a :class:`ThresholdEstimate`:

* ``normal_quantile``: :func:`normal_quantile_threshold` on normal images the model never trained on,
  and :func:`pixel_quantile_threshold` on their pixels; :class:`NormalScoreCalibrator` streams both.
  Fixing the operating point from anomaly-free data only is what deployment can do; MVTec AD 2's
  baselines likewise fix their segmentation threshold on anomaly-free validation images.
* ``f1_val`` / ``f1_test``: :func:`f1_optimal_threshold` (images) and :func:`pixel_f1_threshold`
  (pixels), the F1-optimal operating point on labelled data, as anomalib's ``F1AdaptiveThreshold``
  does on a validation set. On the test set itself it is optimistic and only for benchmark tables.
* ``manual``: :func:`manual_threshold`.

Thresholded figures: :func:`thresholded_image_metrics` (exact) and :func:`thresholded_pixel_metrics`
(from the pooled pixel histogram; the pixel F1 corresponds to MVTec AD 2's SegF1 at a given threshold).
Rates over an empty set take their vacuous best value (precision 1 when nothing is NOK, recall 1 without
anomalies, FPR 0 without normals, F1 and IoU 1 when prediction and truth are both empty), so every
figure is a finite float and the confusion counts returned alongside say when that happened.

Records hold plain ``float``/``int``/``str``/``None`` only, so ``json.dumps(record.to_dict())`` is valid
JSON (never NaN). ``score_min``/``score_max`` are the score range of the calibration data: the
reference values of a display normalisation that maps the threshold to 0.5 (anomalib's min-max scheme).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.stats import beta

from kdad.errors import check_choice
from kdad.metrics._convert import ArrayOrTensor, as_maps, as_scores, as_vector
from kdad.metrics.histogram import GrowingHistogram

#: The rule that turns a score into a decision, used by every function here and by kdad's reports.
DECISION_RULE = "score > threshold"
#: Default target false-positive rate of the ``normal_quantile`` policy (``threshold.fpr``).
DEFAULT_FPR = 0.01
POLICIES = ("normal_quantile", "f1_val", "f1_test", "manual")
LEVELS = ("image", "pixel")
#: Confidence of the one-sided upper bound ``fpr_upper_95``.
CONFIDENCE = 0.95

_F1_POLICIES = ("f1_val", "f1_test")


def is_anomalous(scores: ArrayOrTensor, threshold: float) -> np.ndarray:
    """Boolean NOK decisions under :data:`DECISION_RULE` (``score > threshold``)."""
    return as_scores(scores, "scores") > threshold


# --------------------------------------------------------------------------------------------------
# The serialisable record
# --------------------------------------------------------------------------------------------------


def _number(what: str, value: Any) -> float:
    # bool is an Integral; a True threshold is a bug, not 1.0. Strings are refused rather than parsed.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite (JSON has no NaN/inf), got {out}")
    return out


def _field(name: str) -> str:
    return f"threshold record field {name!r}"


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{_field(name)} must be a non-negative integer, got {value!r}")
    return int(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    return str(check_choice(value, allowed, _field(name)))


_OPTIONAL_NUMBERS = (
    "target_fpr",
    "achieved_fpr",
    "fpr_upper_95",
    "f1",
    "fpr_resolution",
    "score_resolution",
    "score_min",
    "score_max",
)
_OPTIONAL_COUNTS = ("n", "n_images")


@dataclasses.dataclass(frozen=True)
class ThresholdEstimate:
    """One decision threshold and how it was obtained; fields that do not apply are ``None``.

    Attributes:
        value: the threshold; NOK iff ``score > value``.
        policy: one of :data:`POLICIES`.
        level: ``"image"`` or ``"pixel"``.
        n: calibration samples (images, or pixels for ``level="pixel"``).
        n_images: images those samples came from (the independent units for pixel thresholds).
        target_fpr: requested false-positive rate (``normal_quantile``).
        achieved_fpr: fraction of the calibration normals with ``score > value``.
        fpr_upper_95: one-sided 95 % upper confidence bound of the true FPR at ``value`` (image
            ``normal_quantile`` only; pixels of one image are not independent, so none is given for them).
        f1: F1 at ``value`` on the calibration data (``f1_*`` policies).
        fpr_resolution: smallest FPR step the calibration data can resolve, ``1 / (number of normals)``.
        score_resolution: how far ``value`` may sit from the exact threshold of the same rule: 0 for
            image thresholds (exact), the histogram bin width for pixel thresholds.
        score_min, score_max: score range of the calibration data (normalisation references).
        note: human-readable caveats (small samples, constant scores, optimistic policy); ``""`` if none.
    """

    value: float
    policy: str
    level: str
    n: int | None = None
    n_images: int | None = None
    target_fpr: float | None = None
    achieved_fpr: float | None = None
    fpr_upper_95: float | None = None
    f1: float | None = None
    fpr_resolution: float | None = None
    score_resolution: float | None = None
    score_min: float | None = None
    score_max: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        # Coerce numpy scalars to python ones here, so every record is JSON-safe however it was built.
        set_field = object.__setattr__
        set_field(self, "value", _number(_field("value"), self.value))
        set_field(self, "policy", _choice("policy", self.policy, POLICIES))
        set_field(self, "level", _choice("level", self.level, LEVELS))
        for name in _OPTIONAL_NUMBERS:
            value = getattr(self, name)
            set_field(self, name, None if value is None else _number(_field(name), value))
        for name in _OPTIONAL_COUNTS:
            value = getattr(self, name)
            set_field(self, name, None if value is None else _count(name, value))
        if not isinstance(self.note, str):
            raise ValueError(f"{_field('note')} must be a string, got {self.note!r}")

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain JSON-safe dict (every field, ``None`` for those that do not apply)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdEstimate:
        """Inverse of :meth:`to_dict`. ``value``, ``policy`` and ``level`` are required, the other
        fields default to ``None``/``""``; an unknown key or a bad value raises ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a threshold record must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [name for name in ("value", "policy", "level") if name not in data]
        if unknown or missing:
            raise ValueError(
                f"bad threshold record: unknown key(s) {unknown}, missing key(s) {missing}; allowed keys are {names}"
            )
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The stored pair: an image threshold and, for models evaluated with masks, a pixel threshold."""

    image: ThresholdEstimate
    pixel: ThresholdEstimate | None = None

    def __post_init__(self) -> None:
        for name, level in (("image", "image"), ("pixel", "pixel")):
            record = getattr(self, name)
            if record is None and name == "pixel":
                continue
            if not isinstance(record, ThresholdEstimate):
                raise ValueError(f"Thresholds.{name} must be a ThresholdEstimate, got {type(record).__name__}")
            if record.level != level:
                raise ValueError(f"Thresholds.{name} holds a {record.level!r}-level threshold")

    def to_dict(self) -> dict[str, dict[str, float | int | str | None] | None]:
        return {"image": self.image.to_dict(), "pixel": None if self.pixel is None else self.pixel.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """Inverse of :meth:`to_dict`; ``pixel`` may be missing or ``None``. Raises ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"stored thresholds must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"image", "pixel"})
        if unknown or "image" not in data:
            raise ValueError(
                f"bad stored thresholds: unknown key(s) {unknown}, image given: {'image' in data}; "
                "expected keys 'image' and optionally 'pixel'"
            )
        pixel = data.get("pixel")
        return cls(
            image=ThresholdEstimate.from_dict(data["image"]),
            pixel=None if pixel is None else ThresholdEstimate.from_dict(pixel),
        )


def manual_threshold(
    value: float, level: str = "image", *, score_min: float | None = None, score_max: float | None = None
) -> ThresholdEstimate:
    """Record of a user-given threshold (``manual`` policy); the score range is optional."""
    return ThresholdEstimate(value, "manual", level, score_min=score_min, score_max=score_max)


# --------------------------------------------------------------------------------------------------
# normal_quantile
# --------------------------------------------------------------------------------------------------


def _check_fpr(fpr: float) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, numbers.Real) or not 0.0 <= fpr < 1.0:
        raise ValueError(f"target fpr must be a number in [0, 1), got {fpr!r}")
    return float(fpr)


def _allowed_exceedances(n: int, fpr: float) -> int:
    """Largest ``k`` with ``k / n <= fpr``: how many of ``n`` normals may score above the threshold."""
    k = min(math.floor(fpr * n), n)
    # fpr * n is rounded, k / n is correctly rounded like the literal fpr: settle on the definition itself.
    while k > 0 and k / n > fpr:
        k -= 1
    while k + 1 <= n and (k + 1) / n <= fpr:
        k += 1
    return k


def _first_level_within(counts: np.ndarray, allowed: int) -> tuple[int, int]:
    """Lowest level ``i`` (ascending) with at most ``allowed`` samples above it, and that count."""
    above = int(counts.sum()) - np.cumsum(counts, dtype=np.int64)
    i = int(np.argmax(above <= allowed))  # the last level always qualifies (nothing above it)
    return i, int(above[i])


def _fpr_upper_bound(n: int, k: int) -> float:
    """One-sided Clopper-Pearson upper bound for ``k`` exceedances in ``n``: ``Beta(k+1, n-k)`` quantile.

    For a threshold at the ``(n - k)``-th order statistic of continuous i.i.d. scores, the true FPR is
    exactly ``Beta(k + 1, n - k)`` distributed, so the bound holds with exactly 95 % coverage; with ties
    (discrete scores) it is conservative.
    """
    return 1.0 if k >= n else float(beta.ppf(CONFIDENCE, k + 1, n - k))


def _pct(x: float) -> str:
    return f"{100.0 * x:.3g} %"


def _quantile_note(n: int, unit: str, fpr: float, allowed: int, constant: float | None) -> list[str]:
    parts = []
    if constant is not None:
        parts.append(f"all {n} calibration {unit}s score {constant:.6g}: the model does not tell them apart")
    if fpr == 0.0:
        parts.append(f"target FPR 0: the threshold is the highest normal {unit} score")
    elif allowed == 0:
        parts.append(
            f"with {n} normal {unit}s the smallest FPR that can be checked is {_pct(1.0 / n)} "
            f"(target {_pct(fpr)}): the threshold is the highest normal {unit} score"
        )
    return parts


def normal_quantile_threshold(normal_scores: ArrayOrTensor, fpr: float = DEFAULT_FPR) -> ThresholdEstimate:
    """Image threshold for a target false-positive rate, from scores of held-out normal images.

    The value is the smallest observed score ``t`` with ``#{s > t} / n <= fpr``, so the calibration FPR is
    met exactly or conservatively; tied scores are never split (all of them are OK at ``t``). That ``t`` is
    the ``(n - k)``-th order statistic with ``k = max{k : k / n <= fpr}``, which makes ``fpr_upper_95``
    (Clopper-Pearson for ``k`` of ``n``) a distribution-free 95 % bound on the true FPR at ``t``. A
    ``note`` explains when ``n`` is too small to resolve ``fpr`` (``n < 1 / fpr``), when that bound exceeds
    twice the target, and when every score is equal (then ``t`` is that score and the FPR is 0).
    """
    fpr = _check_fpr(fpr)
    scores = as_vector(normal_scores, "normal_scores", binary=False)
    if scores.size == 0:
        raise ValueError("normal_quantile_threshold needs at least one normal score")
    levels, counts = np.unique(scores, return_counts=True)
    n = int(scores.size)
    allowed = _allowed_exceedances(n, fpr)
    i, above = _first_level_within(counts, allowed)
    upper = _fpr_upper_bound(n, allowed)
    parts = _quantile_note(n, "image", fpr, allowed, float(levels[0]) if levels.size == 1 else None)
    if upper > 2.0 * fpr:
        parts.append(f"the true FPR at this threshold may be up to {_pct(upper)} (one-sided 95 % bound)")
    return ThresholdEstimate(
        value=float(levels[i]),
        policy="normal_quantile",
        level="image",
        n=n,
        n_images=n,
        target_fpr=fpr,
        achieved_fpr=above / n,
        fpr_upper_95=upper,
        fpr_resolution=1.0 / n,
        score_resolution=0.0,
        score_min=float(levels[0]),
        score_max=float(levels[-1]),
        note="; ".join(parts),
    )


def _pixel_note(hist: GrowingHistogram, n: int, n_images: int | None) -> str:
    source = f"{n} pixels" if n_images is None else f"{n} pixels of {n_images} images"
    return (
        f"from a histogram of {source}, exact to one bin ({hist.bin_width:.3g}); pixels of one image are "
        "correlated, so the FPR on new images is only as certain as the image count allows (no binomial bound)"
    )


def _after_bin(hist: GrowingHistogram, last_ok: int, first_nok_edge: int) -> float:
    """Threshold that puts bins ``<= last_ok`` OK and bins ``>= first_nok_edge`` NOK under ``score > t``.

    One ulp below the edge makes ``score > t`` the same as ``score >= edge``, i.e. exactly those bins.
    The ``max`` covers grids finer than the float spacing of the scores (e.g. constant scores), where
    edges round together and a bin holds only its lower edge as a value.
    """
    return max(hist.edge(last_ok), math.nextafter(hist.edge(first_nok_edge), -math.inf))


def pixel_quantile_threshold(
    hist: GrowingHistogram, fpr: float = DEFAULT_FPR, *, channel: int = 0, n_images: int | None = None
) -> ThresholdEstimate:
    """Pixel threshold for a target FPR from a histogram of normal-pixel scores (count channel ``channel``).

    Same rule as :func:`normal_quantile_threshold`, on bins: the exact threshold lies in the lowest bin
    ``i`` with at most ``k`` normal pixels in the bins above it; the value returned is the top of that bin
    (or the largest score, if lower), so it is at most one bin width (``score_resolution``) above the exact
    one, errs on the conservative side, and ``achieved_fpr`` is exact for it.
    """
    fpr = _check_fpr(fpr)
    _, counts, _ = hist.occupied()
    normal = counts[channel] if counts.size else np.zeros(0, np.int64)
    n = int(normal.sum())
    if n == 0:
        raise ValueError("pixel_quantile_threshold needs at least one normal pixel")
    allowed = _allowed_exceedances(n, fpr)
    i, above = _first_level_within(normal, allowed)
    # The largest score caps the value when nothing lies above bin i (it is then exact, e.g. constant maps).
    value = max(hist.edge(i), min(math.nextafter(hist.edge(i + 1), -math.inf), hist.max))
    parts = _quantile_note(n, "pixel", fpr, allowed, hist.min if hist.min == hist.max else None)
    parts.append(_pixel_note(hist, n, n_images))
    return ThresholdEstimate(
        value=value,
        policy="normal_quantile",
        level="pixel",
        n=n,
        n_images=n_images,
        target_fpr=fpr,
        achieved_fpr=above / n,
        fpr_resolution=1.0 / n,
        score_resolution=hist.bin_width,
        score_min=hist.min,
        score_max=hist.max,
        note="; ".join(parts),
    )


class NormalScoreCalibrator:
    """Streams held-out normal images and returns the ``normal_quantile`` :class:`Thresholds`.

    Image scores are kept (8 bytes per image: the image quantile is exact); normal-pixel scores go into a
    fixed-memory :class:`GrowingHistogram` (``16 * n_bins`` bytes), as in
    :class:`kdad.metrics.pixel.PixelMetricAccumulator`.
    """

    def __init__(self, pixel: bool = True, n_bins: int = 2**16) -> None:
        self.pixel = pixel
        self._hist = GrowingHistogram(n_bins=n_bins, n_channels=1) if pixel else None
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        if self._hist is not None:
            self._hist.reset()

    @property
    def n_images(self) -> int:
        return sum(s.size for s in self._scores)

    def update(self, image_scores: ArrayOrTensor, maps: ArrayOrTensor | None = None) -> None:
        """Add normal images: scores ``[B]``, and with ``pixel=True`` their maps ``[B, H, W]`` (or
        ``[B, 1, H, W]``). Inputs are validated before any state changes."""
        scores = as_vector(image_scores, "image_scores", binary=False)
        if self._hist is not None:
            if maps is None:
                raise ValueError("pixel=True needs maps in every update")
            score_maps = as_maps(maps, "maps", binary=False)
            if score_maps.shape[0] != scores.size:
                raise ValueError(f"maps {score_maps.shape} and {scores.size} image scores differ in batch size")
            flat = score_maps.reshape(-1)
            self._hist.add(flat, np.zeros(flat.size, dtype=bool))
        self._scores.append(scores)

    def image_threshold(self, fpr: float = DEFAULT_FPR) -> ThresholdEstimate:
        return normal_quantile_threshold(np.concatenate(self._scores) if self._scores else np.zeros(0), fpr)

    def pixel_threshold(self, fpr: float = DEFAULT_FPR) -> ThresholdEstimate:
        if self._hist is None:
            raise ValueError("this calibrator was built with pixel=False")
        return pixel_quantile_threshold(self._hist, fpr, n_images=self.n_images)

    def compute(self, fpr: float = DEFAULT_FPR) -> Thresholds:
        """Image threshold and, with ``pixel=True``, pixel threshold, both for the same target ``fpr``."""
        pixel = self.pixel_threshold(fpr) if self._hist is not None else None
        return Thresholds(self.image_threshold(fpr), pixel)


# --------------------------------------------------------------------------------------------------
# f1_val / f1_test
# --------------------------------------------------------------------------------------------------


def _check_f1_policy(policy: str) -> str:
    return check_choice(policy, _F1_POLICIES, "F1-optimal threshold policy")


def _best_f1_level(neg: np.ndarray, pos: np.ndarray) -> tuple[int, float]:
    """Level ``j`` maximising F1 when levels ``>= j`` are NOK, and that F1.

    Ties go to the highest such level (fewest NOK calls, hence fewest false alarms).
    """
    n_pos = float(pos.sum())
    tp = np.cumsum(pos[::-1], dtype=np.float64)[::-1]
    fp = np.cumsum(neg[::-1], dtype=np.float64)[::-1]
    # Equal fractions 2TP / (TP + FP + P) of integers round to the same float, so ties compare exactly.
    f1 = 2.0 * tp / (tp + fp + n_pos)
    j = f1.size - 1 - int(np.argmax(f1[::-1]))
    return j, float(f1[j])


def _between(lower: float, upper: float) -> float:
    """Midpoint of two consecutive distinct scores; any value in ``[lower, upper)`` separates them."""
    mid = 0.5 * lower + 0.5 * upper  # halves first: no overflow near the float range
    return mid if lower <= mid < upper else lower


def _f1_note(policy: str, n_pos: int, n_neg: int, unit: str) -> str:
    if policy == "f1_test":
        return "optimistic: F1-optimal on the test set it is evaluated on; for benchmark reporting only"
    return f"F1-optimal on a labelled validation set ({n_pos} anomalous, {n_neg} normal {unit}s)"


def _check_both_classes(n_pos: int, n_neg: int, unit: str) -> None:
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"an F1-optimal threshold needs both normal and anomalous {unit}s, got {n_neg} normal and {n_pos} anomalous"
        )


def f1_optimal_threshold(scores: ArrayOrTensor, labels: ArrayOrTensor, *, policy: str = "f1_test") -> ThresholdEstimate:
    """Exact F1-optimal image threshold under ``score > threshold``.

    Candidates are the midpoints between consecutive distinct scores and the value just below the
    minimum (every image NOK); equal scores are never split. Ties in F1 go to the highest threshold.
    The F1 reached equals :func:`kdad.metrics.image.f1_max`. Raises ``ValueError`` unless both classes
    are present. ``policy`` is ``"f1_test"`` (the record then says it is optimistic) or ``"f1_val"``.
    """
    policy = _check_f1_policy(policy)
    s = as_vector(scores, "scores", binary=False)
    y = as_vector(labels, "labels", binary=True)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    _check_both_classes(n_pos, n_neg, "image")
    levels, level = np.unique(s, return_inverse=True)
    pos = np.bincount(level[y], minlength=levels.size)
    neg = np.bincount(level[~y], minlength=levels.size)
    j, f1 = _best_f1_level(neg, pos)
    value = math.nextafter(float(levels[0]), -math.inf) if j == 0 else _between(levels[j - 1], levels[j])
    return ThresholdEstimate(
        value=value,
        policy=policy,
        level="image",
        n=int(s.size),
        n_images=int(s.size),
        achieved_fpr=int(neg[j:].sum()) / n_neg,
        f1=f1,
        fpr_resolution=1.0 / n_neg,
        score_resolution=0.0,
        score_min=float(levels[0]),
        score_max=float(levels[-1]),
        note=_f1_note(policy, n_pos, n_neg, "image"),
    )


def pixel_f1_threshold(
    hist: GrowingHistogram,
    *,
    policy: str = "f1_test",
    n_images: int | None = None,
    normal_channel: int = 0,
    anomalous_channel: int = 1,
) -> ThresholdEstimate:
    """F1-optimal pixel threshold from a histogram of normal and anomalous pixel counts (pooled pixels).

    The analogue of :func:`f1_optimal_threshold` on bins: the candidates split the occupied bins into
    OK / NOK, each placed just below the bin edge midway in the gap between the two occupied bins (or
    just below the minimum score). ``score > value`` then selects exactly the NOK bins, so ``f1`` is
    the exact pooled F1 at ``value``; the optimum over all thresholds may differ by the pixels of one bin
    (``score_resolution``). ``f1`` equals the histogram ``pixel_f1_max``.
    """
    policy = _check_f1_policy(policy)
    _, counts, _ = hist.occupied()
    if counts.shape[1] == 0:
        raise ValueError("pixel_f1_threshold needs pixels; the histogram is empty")
    neg, pos = counts[normal_channel], counts[anomalous_channel]
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    _check_both_classes(n_pos, n_neg, "pixel")
    occupied = np.flatnonzero(neg + pos)
    k, f1 = _best_f1_level(neg[occupied], pos[occupied])
    if k == 0:
        value = math.nextafter(hist.min, -math.inf)
    else:
        last_ok, first_nok = int(occupied[k - 1]), int(occupied[k])
        value = _after_bin(hist, last_ok, (last_ok + 1 + first_nok) // 2)
    note = _f1_note(policy, n_pos, n_neg, "pixel") + "; " + _pixel_note(hist, n_pos + n_neg, n_images)
    return ThresholdEstimate(
        value=value,
        policy=policy,
        level="pixel",
        n=n_pos + n_neg,
        n_images=n_images,
        achieved_fpr=int(neg[occupied[k] :].sum()) / n_neg,
        f1=f1,
        fpr_resolution=1.0 / n_neg,
        score_resolution=hist.bin_width,
        score_min=hist.min,
        score_max=hist.max,
        note=note,
    )


# --------------------------------------------------------------------------------------------------
# Thresholded metrics
# --------------------------------------------------------------------------------------------------


def _confusion_summary(tp: int, fp: int, tn: int, fn: int) -> dict[str, float | int]:
    """Counts and rates; an empty denominator gives the vacuous best value (see the module docstring)."""
    positives, negatives, predicted = tp + fn, fp + tn, tp + fp
    union = tp + fp + fn
    return {
        "precision": tp / predicted if predicted else 1.0,
        "recall": tp / positives if positives else 1.0,
        "fpr": fp / negatives if negatives else 0.0,
        # 2TP / (2TP + FP + FN) is the harmonic mean of precision and recall whenever one is defined.
        "f1": 2 * tp / (tp + union) if union else 1.0,
        "iou": tp / union if union else 1.0,
        "accuracy": (tp + tn) / (positives + negatives),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def thresholded_image_metrics(scores: ArrayOrTensor, labels: ArrayOrTensor, threshold: float) -> dict[str, float | int]:
    """Exact image-level figures at ``threshold`` under ``score > threshold`` (label 1 = anomalous).

    Returns ``precision``, ``recall`` (TPR), ``fpr``, ``f1``, ``accuracy`` and the counts ``tp``, ``fp``,
    ``tn``, ``fn``. Empty denominators take the vacuous best value (precision 1 when no image is NOK,
    recall 1 without anomalous images, FPR 0 without normal ones). Raises ``ValueError`` without images.
    """
    s = as_vector(scores, "scores", binary=False)
    y = as_vector(labels, "labels", binary=True)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    if s.size == 0:
        raise ValueError("thresholded_image_metrics needs at least one image")
    nok = s > _number("threshold", threshold)
    tp, fp = int((nok & y).sum()), int((nok & ~y).sum())
    out = _confusion_summary(tp, fp, int((~y).sum()) - fp, int(y.sum()) - tp)
    del out["iou"]  # an image-level Jaccard index is not a figure anyone reports
    return out


def thresholded_pixel_metrics(
    hist: GrowingHistogram, threshold: float, *, normal_channel: int = 0, anomalous_channel: int = 1
) -> dict[str, float | int]:
    """Pooled pixel figures of the predicted masks ``score > threshold``, from the histogram counts.

    Dataset level: every pixel of every image is pooled into one confusion table (as the threshold-free
    pixel metrics are). Returns ``precision``, ``recall``, ``fpr``, ``f1`` (MVTec AD 2's SegF1 at this
    threshold), ``iou`` (``TP / (TP + FP + FN)``), ``accuracy`` and the counts. No pass over the data:
    the counts come from :meth:`GrowingHistogram.counts_above`, exact when the threshold is below or at
    or above every score or was derived from such a histogram, else equal to the exact figures at some
    threshold within one bin width above ``threshold``. F1 and IoU are 1 if no pixel is anomalous and
    none is predicted so. Raises ``ValueError`` on an empty histogram.
    """
    if hist.empty:
        raise ValueError("thresholded_pixel_metrics needs pixels; the histogram is empty")
    above = hist.counts_above(_number("threshold", threshold))
    totals = hist.counts.sum(axis=1)
    tp, fp = int(above[anomalous_channel]), int(above[normal_channel])
    return _confusion_summary(tp, fp, int(totals[normal_channel]) - fp, int(totals[anomalous_channel]) - tp)
