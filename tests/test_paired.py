"""Paired comparison of methods over (category, seed) runs: statistics and the compare table's section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kdad.metrics.paired import paired_comparison, signed_rank_p
from kdad.runner.report import RunResult, paired_against, write_outputs


def test_all_six_pairs_better_gives_the_exact_signed_rank_p_and_an_interval_above_zero() -> None:
    baseline = [0.80, 0.70, 0.90, 0.60, 0.85, 0.75]
    better = [b + d for b, d in zip(baseline, [0.01, 0.02, 0.03, 0.04, 0.05, 0.06], strict=True)]
    result = paired_comparison(better, baseline)
    assert result.n == 6 and (result.wins, result.ties, result.losses) == (6, 0, 0)
    assert result.mean_difference == pytest.approx(0.035)
    # Exact two-sided signed-rank test, all ranks positive: 2 / 2**6.
    assert result.wilcoxon_p == pytest.approx(2 / 64)
    assert 0.01 <= result.ci_low < 0.035 < result.ci_high <= 0.06 and result.significant


def test_mixed_differences_are_not_significant_and_order_matters_only_in_sign() -> None:
    a = [0.9, 0.7, 0.8, 0.6, 0.75, 0.65, 0.85, 0.7]
    b = [0.8, 0.8, 0.7, 0.7, 0.70, 0.70, 0.80, 0.75]
    forward, backward = paired_comparison(a, b), paired_comparison(b, a)
    assert forward.ci_low < 0 < forward.ci_high and not forward.significant
    assert forward.mean_difference == pytest.approx(-backward.mean_difference)
    assert forward.wilcoxon_p == pytest.approx(backward.wilcoxon_p) and forward.wilcoxon_p > 0.5


def test_nan_pairs_are_dropped_ties_counted_and_small_n_noted() -> None:
    result = paired_comparison([0.5, math.nan, 0.6, 0.7], [0.5, 0.4, 0.5, 0.6])
    assert result.n == 3 and (result.wins, result.ties, result.losses) == (2, 1, 0)
    assert "cannot reach p < 0.05" in result.note
    assert signed_rank_p(np.zeros(4)) == 1.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="one baseline value per value"):
        paired_comparison([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="both values are finite"):
        paired_comparison([math.nan], [0.1])
    with pytest.raises(ValueError, match="confidence"):
        paired_comparison([0.1], [0.2], confidence=1.5)


def _run(column: str, category: str, seed: int, auroc: float) -> RunResult:
    return RunResult(column, category, seed, {"image_auroc": auroc}, {"benchmark": "synthetic", "image_size": 64})


def test_compare_outputs_pair_runs_by_category_and_seed(tmp_path: Path) -> None:
    results = [
        _run(column, category, seed, base + (0.05 if column == "New" else 0.0) + 0.01 * seed)
        for column in ("RD", "New")
        for category, base in (("a", 0.7), ("b", 0.8))
        for seed in (0, 1, 2)
    ]
    results.append(_run("New", "c", 0, 0.99))  # no RD run to pair with: left out
    comparisons = paired_against(results, ["image_auroc"], "RD")
    new = comparisons["image_auroc"]["New"]
    assert new.n == 6 and new.mean_difference == pytest.approx(0.05) and new.wins == 6
    write_outputs(results, tmp_path / "spec", ["image_auroc"], "title", baseline="RD")
    text = (tmp_path / "spec.md").read_text()
    assert "### Paired against RD" in text and "| New | +5.0 [+5.0, +5.0], p = 0.0312, 6/0/0 |" in text
    stored = json.loads((tmp_path / "spec.paired.json").read_text())
    assert stored["baseline"] == "RD" and stored["image_auroc"]["New"]["n"] == 6
    with pytest.raises(ValueError, match="baseline 'STFPM'"):
        paired_against(results, ["image_auroc"], "STFPM")
