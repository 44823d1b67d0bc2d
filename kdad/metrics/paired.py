"""Paired comparison of two methods over the same (category, seed) runs: is A better than B, measured.

Reading means is not enough when a few categories and seeds carry a std of several points. For n paired runs
(A_i, B_i) — the same category, seed, budget and data for both — this gives the mean difference A − B, a paired
bootstrap confidence interval of that mean (pairs resampled with replacement, percentile interval; seeded, so a
table is reproducible), the Wilcoxon signed-rank test's two-sided p-value (scipy; exact for small n without ties,
zero differences dropped, as Wilcoxon's original procedure) and the win / tie / loss counts. The bootstrap
interval is the primary statement (it is about the size of the difference); the signed-rank p-value is the
distribution-free test of "no systematic difference" people expect beside it. With n < 6 no two-sided signed-rank
p-value can fall below 0.05 — :attr:`PairedComparison.note` says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 10_000
# Smallest n at which a two-sided exact signed-rank test can reach p < 0.05 (2 / 2**6 = 0.031).
MIN_PAIRS_FOR_5_PERCENT = 6


@dataclass(frozen=True)
class PairedComparison:
    """A − B over paired runs (fractions, as the metrics are stored). ``significant``: the bootstrap interval
    excludes 0."""

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    confidence: float
    wilcoxon_p: float
    wins: int
    ties: int
    losses: int
    note: str = ""

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"significant": self.significant}


def paired_comparison(
    values: Sequence[float],
    baseline: Sequence[float],
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Compare ``values`` (method A) with ``baseline`` (method B) pair by pair (same order: same category and
    seed at each index). Pairs where either value is NaN are dropped. Raises ``ValueError`` for unequal lengths,
    a confidence outside (0, 1) or no complete pair."""
    if len(values) != len(baseline):
        raise ValueError(f"paired comparison needs one baseline value per value, got {len(values)} and {len(baseline)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = np.asarray(values, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    keep = ~(np.isnan(a) | np.isnan(b))
    difference = a[keep] - b[keep]
    n = int(difference.size)
    if n == 0:
        raise ValueError("paired comparison needs at least one pair where both values are finite")
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return PairedComparison(
        n=n,
        mean_difference=float(difference.mean()),
        ci_low=float(low),
        ci_high=float(high),
        confidence=confidence,
        wilcoxon_p=signed_rank_p(difference),
        wins=int((difference > 0).sum()),
        ties=int((difference == 0).sum()),
        losses=int((difference < 0).sum()),
        note=_note(n, int((difference != 0).sum())),
    )


def signed_rank_p(difference: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped); 1.0 when every difference is
    zero (no evidence of any difference)."""
    nonzero = difference[difference != 0]
    if nonzero.size == 0:
        return 1.0
    return float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)


def _note(n: int, nonzero: int) -> str:
    if nonzero < MIN_PAIRS_FOR_5_PERCENT:
        return (
            f"{nonzero} non-zero pair(s): a two-sided signed-rank test cannot reach p < 0.05 below "
            f"{MIN_PAIRS_FOR_5_PERCENT}"
        )
    if n < 10:
        return f"n = {n}: the bootstrap interval is rough with so few pairs"
    return ""


def format_comparison(result: PairedComparison, scale: float = 100.0) -> str:
    """``+1.2 [−0.3, +2.8], p = 0.12, 7/1/4`` (difference and interval ×``scale``, wins/ties/losses)."""

    def signed(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{scale * x:+.1f}"

    return (
        f"{signed(result.mean_difference)} [{signed(result.ci_low)}, {signed(result.ci_high)}], "
        f"p = {result.wilcoxon_p:.3g}, {result.wins}/{result.ties}/{result.losses}"
    )
