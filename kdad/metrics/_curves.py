"""Threshold-curve metrics computed from per-score-level counts.

Every function takes counts grouped by score level in ASCENDING score order: for image metrics one
level per distinct score (exact), for pixel metrics one level per histogram bin (approximate). A
level that holds no sample is allowed and changes nothing, so histograms need no compaction. The
threshold convention is "score >= level is predicted anomalous", evaluated at every level.
"""

from __future__ import annotations

import math

import numpy as np


def _check_counts(neg: np.ndarray, pos: np.ndarray) -> tuple[float, float]:
    if neg.shape != pos.shape or neg.ndim != 1:
        raise ValueError(f"count arrays must be 1-D and aligned, got {neg.shape} and {pos.shape}")
    return float(neg.sum()), float(pos.sum())


def auroc_from_counts(neg: np.ndarray, pos: np.ndarray) -> float:
    """Mann-Whitney AUROC: P(s_pos > s_neg) + 1/2 P(s_pos == s_neg); nan if a class is empty.

    Equal to the trapezoidal area under the ROC curve through all levels, because a tie block is a
    straight ROC segment whose area is exactly the 1/2 credit.
    """
    n_neg, n_pos = _check_counts(neg, pos)
    if n_neg == 0 or n_pos == 0:
        return math.nan
    neg = neg.astype(np.float64)
    neg_below = np.cumsum(neg) - neg
    wins = np.dot(pos.astype(np.float64), neg_below + 0.5 * neg)
    return float(wins / (n_pos * n_neg))


def _tail_counts(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) at each level, in DESCENDING score order (threshold decreasing)."""
    return np.cumsum(pos[::-1], dtype=np.float64), np.cumsum(neg[::-1], dtype=np.float64)


def average_precision_from_counts(neg: np.ndarray, pos: np.ndarray) -> float:
    """Step-wise AP = sum_n (R_n - R_{n-1}) P_n over levels (scikit-learn semantics).

    nan if a class is empty.
    """
    n_neg, n_pos = _check_counts(neg, pos)
    if n_neg == 0 or n_pos == 0:
        return math.nan
    tp, fp = _tail_counts(neg, pos)
    # R_n - R_{n-1} is just the positives entering at level n, which avoids differencing rounded recalls.
    d_recall = pos[::-1].astype(np.float64) / n_pos
    predicted = tp + fp
    # Levels above every sample predict nothing (0/0 precision) but also add no recall, so 0 is safe.
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    return float(np.dot(d_recall, precision))


def f1_max_from_counts(neg: np.ndarray, pos: np.ndarray) -> float:
    """Maximum over levels of F1 = 2 TP / (2 TP + FP + FN); nan if a class is empty."""
    n_neg, n_pos = _check_counts(neg, pos)
    if n_neg == 0 or n_pos == 0:
        return math.nan
    tp, fp = _tail_counts(neg, pos)
    # 2TP + FP + FN == TP + FP + P, which is never 0 once P > 0.
    return float(np.max(2.0 * tp / (tp + fp + n_pos)))


def trapezoid_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under a curve with non-decreasing ``x``, restricted to ``x <= limit``.

    When the curve crosses ``limit`` between two points, ``y`` is linearly interpolated at exactly
    ``x = limit`` so the partial segment is counted (the MVTec AD evaluation convention). Vertical
    steps (repeated ``x``) add no area.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if 0 < inside < x.size and xs[-1] < limit:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs = np.append(xs, limit)
        ys = np.append(ys, y_lim)
    if xs.size < 2:
        return 0.0
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) * 0.5))


def aupro_from_counts(neg: np.ndarray, pro_mass: np.ndarray, n_components: int, limit: float) -> float:
    """Standard (MVTec AD) normalised AUPRO up to FPR ``limit`` from per-level tallies.

    ``neg[i]`` counts normal pixels at level ``i``; ``pro_mass[i]`` sums ``1 / |component|`` over the
    anomalous pixels at level ``i``, so the tail mass divided by ``n_components`` is the mean per-region
    overlap at that threshold. Returns nan without normal pixels or without any component.
    """
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"AUPRO FPR limit must be in (0, 1], got {limit}")
    n_neg = float(neg.sum())
    if n_neg == 0 or n_components == 0:
        return math.nan
    fpr = np.cumsum(neg[::-1], dtype=np.float64) / n_neg
    pro = np.cumsum(pro_mass[::-1], dtype=np.float64) / n_components
    # Cumulative sums can overshoot 1 by rounding; the curve must end at (1, 1) exactly.
    np.minimum(fpr, 1.0, out=fpr)
    np.minimum(pro, 1.0, out=pro)
    # The threshold above every score gives the origin, which the per-level points never include.
    fpr = np.concatenate(([0.0], fpr))
    pro = np.concatenate(([0.0], pro))
    return trapezoid_up_to(fpr, pro, limit) / limit
