"""Exact image-level metrics on raw (unbounded) per-image anomaly scores.

Scores are ranked as given: no sigmoid or other squashing, which would turn large scores into ties.
Label 1 means anomalous. Each function returns ``nan`` when the labels contain only one class, since
none of these metrics is meaningful then.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from kdad.metrics._convert import ArrayOrTensor, as_vector
from kdad.metrics._curves import auroc_from_counts, average_precision_from_counts, f1_max_from_counts


def counts_per_distinct_score(scores: ArrayOrTensor, labels: ArrayOrTensor) -> tuple[np.ndarray, np.ndarray]:
    """(negatives, positives) per distinct score, ascending; the exact input of the curve metrics."""
    s = as_vector(scores, "scores", binary=False)
    y = as_vector(labels, "labels", binary=True)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    distinct, level = np.unique(s, return_inverse=True)
    pos = np.bincount(level[y], minlength=distinct.size)
    neg = np.bincount(level[~y], minlength=distinct.size)
    return neg, pos


def image_auroc(scores: ArrayOrTensor, labels: ArrayOrTensor) -> float:
    """Exact rank-based AUROC (Mann-Whitney U / (P N)); a tied anomalous/normal pair counts 1/2.

    Returns nan when either class is missing.
    """
    return auroc_from_counts(*counts_per_distinct_score(scores, labels))


def average_precision(scores: ArrayOrTensor, labels: ArrayOrTensor) -> float:
    """Exact step-wise average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct scores taken
    as thresholds (``score >= t``), i.e. ``sklearn.metrics.average_precision_score`` (no interpolation).

    Returns nan when either class is missing (with no normal image it would trivially be 1).
    """
    return average_precision_from_counts(*counts_per_distinct_score(scores, labels))


def f1_max(scores: ArrayOrTensor, labels: ArrayOrTensor) -> float:
    """Exact maximum of ``F1 = 2 TP / (2 TP + FP + FN)`` over every distinct score used as threshold
    (``score >= t``).

    Returns nan when either class is missing.
    """
    return f1_max_from_counts(*counts_per_distinct_score(scores, labels))


def max_per_unit(
    scores: ArrayOrTensor, labels: ArrayOrTensor, units: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image scores and labels -> one (score, label) per unit, both the maximum over the unit's images.

    A unit is the physical item several images show (e.g. Real-IAD's five camera views of one sample): the item
    scores as its most anomalous view and is anomalous when any view is. Units come out in order of first appearance.
    """
    s = as_vector(scores, "scores", binary=False)
    y = as_vector(labels, "labels", binary=True)
    if not s.shape == y.shape == (len(units),):
        raise ValueError(f"scores {s.shape}, labels {y.shape} and {len(units)} units differ in length")
    index: dict[Hashable, int] = {}
    ids = np.array([index.setdefault(unit, len(index)) for unit in units], dtype=np.int64)
    unit_scores = np.full(len(index), -np.inf)
    np.maximum.at(unit_scores, ids, s.astype(np.float64))
    unit_labels = np.zeros(len(index), dtype=bool)
    np.logical_or.at(unit_labels, ids, y)
    return unit_scores, unit_labels
