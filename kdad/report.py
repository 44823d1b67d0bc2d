"""Results tables from finished run folders (each holding a metrics.json).

``python -m kdad.report runs/mytag`` finds every finished run below the given folders and prints one table per
metric: categories as rows, methods (or variants) as columns, a mean row, and mean ± std over seeds when a
cell has several. ``--out`` also writes markdown, CSV and JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kdad.results import METRIC_LABELS

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")


@dataclass(frozen=True)
class RunResult:
    column: str  # method or variant name
    category: str
    seed: int
    metrics: dict[str, float]
    protocol: dict


def load_run(metrics_file: Path, column: str | None = None) -> RunResult:
    summary = json.loads(metrics_file.read_text())
    data = summary.get("data", {})
    return RunResult(
        column=column or summary.get("variant") or summary["method"],
        category=str(data.get("category", "?")),
        seed=int(summary.get("seed", 0)),
        metrics={k: float(v) for k, v in summary["metrics"].items()},
        protocol={
            "benchmark": data.get("benchmark"),
            "image_size": data.get("image_size"),
            "interpolation": data.get("interpolation"),
            "teacher": summary.get("teacher"),
            "checkpoint_policy": summary.get("checkpoint_policy"),
            "aupro": summary.get("aupro"),
        },
    )


def find_runs(folders: Iterable[Path]) -> list[RunResult]:
    """Every finished run (a metrics.json) below ``folders``."""
    return [load_run(path) for folder in folders for path in sorted(Path(folder).rglob("metrics.json"))]


def _cell(values: Sequence[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    mean = 100 * statistics.fmean(finite)
    if len(finite) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * statistics.stdev(finite):.1f}"


def metric_table(results: Sequence[RunResult], metric: str, columns: Sequence[str] | None = None) -> list[list[str]]:
    """Rows of [category, cell per column], then a mean row (mean over categories of the per-seed means...
    computed per seed first, so its ± is the spread of the category-mean across seeds)."""
    columns = list(columns or dict.fromkeys(r.column for r in results))
    categories = sorted({r.category for r in results})
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_seed: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in results:
        value = r.metrics.get(metric, math.nan)
        values[(r.category, r.column)].append(value)
        by_seed[(r.column, r.seed)].append(value)
    rows = [[category, *(_cell(values[(category, c)]) for c in columns)] for category in categories]
    mean_row = ["mean"]
    for column in columns:
        seed_means = [
            statistics.fmean(v) for (col, _), v in by_seed.items() if col == column and len(v) == len(categories)
        ]
        mean_row.append(_cell(seed_means))
    return [*rows, mean_row]


def protocol_line(results: Sequence[RunResult]) -> str:
    protocols = {json.dumps(r.protocol, sort_keys=True) for r in results}
    if len(protocols) != 1:
        return "Protocol: MIXED across runs (check each metrics.json before comparing)."
    p = json.loads(protocols.pop())
    teacher = p.get("teacher") or {}
    return (
        f"Protocol: {p.get('benchmark')} at {p.get('image_size')} px ({p.get('interpolation')}), teacher "
        f"{teacher.get('backbone')} ({teacher.get('weights')}), checkpoint policy {p.get('checkpoint_policy')}, "
        "AUPRO = standard MVTec AU-PRO (FPR ≤ 0.3, whole test set)."
    )


def markdown(results: Sequence[RunResult], metrics: Sequence[str] = DEFAULT_METRICS, title: str = "") -> str:
    columns = list(dict.fromkeys(r.column for r in results))
    seeds = sorted({r.seed for r in results})
    parts = [
        f"## {title}" if title else "",
        protocol_line(results),
        f"Seeds: {seeds}; cells are mean ± std over seeds, ×100.",
        "",
    ]
    for metric in metrics:
        table = metric_table(results, metric, columns)
        parts += [
            f"### {METRIC_LABELS.get(metric, metric)}",
            "",
            "| category | " + " | ".join(columns) + " |",
        ]
        parts.append("|---" * (len(columns) + 1) + "|")
        parts += ["| " + " | ".join(row) + " |" for row in table]
        parts.append("")
    return "\n".join(p for p in parts if p is not None).strip() + "\n"


def write_outputs(results: Sequence[RunResult], out: Path, metrics: Sequence[str], title: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(results, metrics, title))
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["column", "category", "seed", *metrics])
        for r in results:
            writer.writerow([r.column, r.category, r.seed, *(r.metrics.get(m, math.nan) for m in metrics)])
    out.with_suffix(".json").write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders to collect")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, help="write <out>.md, <out>.csv and <out>.json")
    args = parser.parse_args(argv)
    results = find_runs(args.folders)
    if not results:
        raise SystemExit(f"no finished runs (metrics.json) under {', '.join(map(str, args.folders))}")
    metrics = args.metrics.split(",")
    print(markdown(results, metrics, args.title))
    if args.out:
        write_outputs(results, args.out, metrics, args.title)


if __name__ == "__main__":
    main()
