"""Results tables from finished run folders (each holding a metrics.json).

``python -m kdad.report runs/mytag`` finds every finished run below the given folders and prints, per benchmark,
one table per metric: categories as rows, methods (or variants) as columns, a mean row, and mean ± std over seeds
when a cell has several. Several folders put their methods side by side (``NAME=FOLDER`` names a folder's column);
``--layout combined`` prints one paper-style table whose cells hold every metric (``I-AUROC / P-AUROC / AUPRO``).
``--out PREFIX`` also writes ``PREFIX.md``, ``PREFIX.csv`` (the table: one row per benchmark × column × category,
plus a mean row, with the protocol in columns) and ``PREFIX.json`` (every run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdad.errors import check_choice
from kdad.metrics.paired import PairedComparison, format_comparison, paired_comparison
from kdad.runner.results import METRIC_LABELS

DEFAULT_METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
LAYOUTS = ("metric", "combined")
# Protocol fields stated with every table, in the order they are printed.
PROTOCOL_FIELDS = ("benchmark", "image_size", "interpolation", "teacher", "checkpoint_policy", "aupro")
PROTOCOL_CSV_COLUMNS = ("image_size", "interpolation", "teacher", "teacher_weights", "checkpoint_policy", "aupro")


def aupro_limit(description: str | None) -> str:
    """The FPR limit stated in a run's ``aupro`` protocol entry ("0.3" when it does not say)."""
    found = re.search(r"FPR <= ([0-9.]+)", description or "")
    return found.group(1) if found else "0.3"


@dataclass(frozen=True)
class RunResult:
    column: str  # method or variant name
    category: str
    seed: int
    metrics: dict[str, float]
    protocol: dict


def load_run(metrics_file: Path, column: str | None = None) -> RunResult:
    summary = json.loads(Path(metrics_file).read_text())
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


def load_runs(metrics_file: Path, column: str | None = None) -> list[RunResult]:
    """The table rows of one metrics.json: the run itself, or for a unified run (one model for several categories)
    one result per category with that category's metrics, so it lines up with one-model-per-category runs (the
    tables' mean row is then the mean over its categories)."""
    summary = json.loads(Path(metrics_file).read_text())
    per_category = summary.get("per_category")
    run = load_run(metrics_file, column)
    if not per_category:
        return [run]
    return [
        RunResult(
            column=run.column,
            category=str(category),
            seed=run.seed,
            metrics={k: float(v) for k, v in part["metrics"].items()},
            protocol=run.protocol,
        )
        for category, part in per_category.items()
    ]


def find_runs(folders: Iterable[Path], columns: Sequence[str | None] | None = None) -> list[RunResult]:
    """Every finished run (a metrics.json) below ``folders``, a unified run as one result per category
    (:func:`load_runs`); ``columns[i]`` names the runs of ``folders[i]``."""
    folders = list(folders)
    names = list(columns) if columns is not None else [None] * len(folders)
    return [
        result
        for folder, name in zip(folders, names, strict=True)
        for path in sorted(Path(folder).rglob("metrics.json"))
        for result in load_runs(path, column=name)
    ]


def benchmark_of(result: RunResult) -> str:
    return str(result.protocol.get("benchmark") or "?")


def by_benchmark(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """Results grouped by benchmark (categories of different benchmarks never share a table)."""
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[benchmark_of(r)].append(r)
    return dict(sorted(groups.items()))


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


def _describe(field: str, value: Any) -> str:
    if field == "teacher":
        teacher = value or {}
        return f"teacher {teacher.get('backbone')} ({teacher.get('weights')})"
    if field == "image_size":
        return f"{value} px"
    if field == "interpolation":
        return f"{value} resize"
    if field == "checkpoint_policy":
        return f"checkpoint policy {value}"
    if field == "aupro":
        return f"AUPRO = standard MVTec AU-PRO (FPR ≤ {aupro_limit(value)} over the whole test set, normalised)"
    return str(value)


def protocol_line(results: Sequence[RunResult]) -> str:
    """The protocol of ``results`` in one sentence: shared settings once, per-column ones named by column."""
    if not results:
        return "Protocol: no runs."
    shared, differing = [], []
    for field in PROTOCOL_FIELDS:
        values = {json.dumps(r.protocol.get(field), sort_keys=True) for r in results}
        if len(values) == 1:
            shared.append(_describe(field, results[0].protocol.get(field)))
            continue
        per_column = []
        for column in dict.fromkeys(r.column for r in results):
            mine = {json.dumps(r.protocol.get(field), sort_keys=True) for r in results if r.column == column}
            text = _describe(field, json.loads(mine.pop())) if len(mine) == 1 else f"MIXED {field}"
            per_column.append(f"{column}: {text}")
        differing.append("; ".join(per_column))
    line = "Protocol: " + ", ".join(shared) + "."
    if differing:
        line += " Per column: " + " | ".join(differing) + "."
    if any("MIXED" in d for d in differing):
        line += " Runs of one column differ in protocol: check each metrics.json before comparing."
    return line


def combined_table(results: Sequence[RunResult], metrics: Sequence[str], columns: Sequence[str]) -> list[list[str]]:
    """Paper layout: one row per category (+ mean), one cell per column holding every metric ("a / b / c")."""
    tables = [metric_table(results, metric, columns) for metric in metrics]
    rows = []
    for row_index, first in enumerate(tables[0]):
        cells = [" / ".join(table[row_index][1 + c] for table in tables) for c in range(len(columns))]
        rows.append([first[0], *cells])
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _benchmark_section(results: Sequence[RunResult], metrics: Sequence[str], layout: str, heading: str) -> list[str]:
    columns = list(dict.fromkeys(r.column for r in results))
    seeds = sorted({r.seed for r in results})
    parts = [heading] if heading else []
    parts += [protocol_line(results), f"Seeds: {seeds}; cells are mean ± std over seeds, ×100.", ""]
    if layout == "combined":
        labels = " / ".join(METRIC_LABELS.get(m, m) for m in metrics)
        parts += [f"Cells: {labels}", ""]
        parts += markdown_table(["category", *columns], combined_table(results, metrics, columns))
        return [*parts, ""]
    for metric in metrics:
        parts += [f"### {METRIC_LABELS.get(metric, metric)}", ""]
        parts += markdown_table(["category", *columns], metric_table(results, metric, columns))
        parts.append("")
    return parts


def markdown(
    results: Sequence[RunResult],
    metrics: Sequence[str] = DEFAULT_METRICS,
    title: str = "",
    layout: str = "metric",
    missing: Sequence[str] = (),
) -> str:
    """The results as markdown: one section per benchmark (each with its protocol), tables per ``layout``;
    ``missing`` lists runs that should be there but did not finish."""
    check_choice(layout, LAYOUTS, "layout")
    groups = by_benchmark(results)
    parts = [f"## {title}" if title else ""]
    for benchmark, group in groups.items():
        heading = f"## {benchmark}" if len(groups) > 1 else ""
        parts += _benchmark_section(group, metrics, layout, heading)
    if missing:
        parts += [f"Not finished ({len(missing)}): " + ", ".join(missing), ""]
    return "\n".join(parts).strip() + "\n"


def paired_against(
    results: Sequence[RunResult], metrics: Sequence[str], baseline: str
) -> dict[str, dict[str, PairedComparison]]:
    """``{metric: {column: A − baseline}}`` over the (benchmark, category, seed) runs both columns finished
    (:func:`kdad.metrics.paired.paired_comparison`: paired bootstrap interval, Wilcoxon signed-rank p-value)."""
    runs = {(r.column, benchmark_of(r), r.category, r.seed): r for r in results}
    columns = [c for c in dict.fromkeys(r.column for r in results) if c != baseline]
    if baseline not in {r.column for r in results}:
        raise ValueError(f"baseline {baseline!r} is not among the compared columns {columns}")
    out: dict[str, dict[str, PairedComparison]] = {}
    for metric in metrics:
        out[metric] = {}
        for column in columns:
            keys = sorted(k[1:] for k in runs if k[0] == column and (baseline, *k[1:]) in runs)
            if not keys:
                continue
            values = [runs[(column, *k)].metrics.get(metric, math.nan) for k in keys]
            reference = [runs[(baseline, *k)].metrics.get(metric, math.nan) for k in keys]
            if all(math.isnan(v) for v in values) or all(math.isnan(v) for v in reference):
                continue
            out[metric][column] = paired_comparison(values, reference)
    return out


def paired_markdown(comparisons: Mapping[str, Mapping[str, PairedComparison]], baseline: str) -> str:
    """One table: a row per column, a cell per metric with the mean difference to ``baseline`` (points), its 95 %
    paired bootstrap interval, the signed-rank p-value and wins/ties/losses."""
    metrics = [m for m, row in comparisons.items() if row]
    if not metrics:
        return ""
    columns = list(dict.fromkeys(c for m in metrics for c in comparisons[m]))
    header = ["vs " + baseline, *(METRIC_LABELS.get(m, m) for m in metrics)]
    rows = [
        [column, *(format_comparison(comparisons[m][column]) if column in comparisons[m] else "n/a" for m in metrics)]
        for column in columns
    ]
    notes = sorted({c.note for row in comparisons.values() for c in row.values() if c.note})
    n = sorted({c.n for row in comparisons.values() for c in row.values()})
    lines = [
        f"### Paired against {baseline}",
        "",
        f"Mean difference in points over the (category, seed) pairs both ran (n = {', '.join(map(str, n))}), "
        "[95 % paired bootstrap interval], two-sided Wilcoxon signed-rank p-value, wins/ties/losses. An interval "
        "that excludes 0 is a measured difference; one that contains 0 is not.",
        "",
        *markdown_table(header, rows),
        "",
        *(f"Note: {note}." for note in notes),
    ]
    return "\n".join(lines).strip() + "\n"


def write_outputs(
    results: Sequence[RunResult], out: Path, metrics: Sequence[str], title: str, baseline: str | None = None
) -> None:
    """Markdown tables (and, with ``baseline``, the paired comparison against it), one CSV row per run and the
    runs as JSON (``kdad.runner.compare``'s outputs; the paired comparison also as ``<out>.paired.json``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(results, metrics, title)
    if baseline is not None:
        comparisons = paired_against(results, metrics, baseline)
        text += "\n" + paired_markdown(comparisons, baseline)
        record = {m: {c: v.as_dict() for c, v in row.items()} for m, row in comparisons.items()}
        out.with_suffix(".paired.json").write_text(json.dumps({"baseline": baseline, **record}, indent=1))
    out.with_suffix(".md").write_text(text)
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["column", "category", "seed", *metrics])
        for r in results:
            writer.writerow([r.column, r.category, r.seed, *(r.metrics.get(m, math.nan) for m in metrics)])
    out.with_suffix(".json").write_text(json.dumps([r.__dict__ for r in results], indent=1, default=str))


def _protocol_columns(results: Sequence[RunResult]) -> dict[str, Any]:
    """The protocol of a table row as CSV columns ("MIXED" where the runs of the row disagree)."""
    out: dict[str, Any] = {}
    for field in ("image_size", "interpolation", "checkpoint_policy"):
        values = {r.protocol.get(field) for r in results}
        out[field] = values.pop() if len(values) == 1 else "MIXED"
    teachers = {json.dumps(r.protocol.get("teacher"), sort_keys=True) for r in results}
    teacher = json.loads(teachers.pop()) if len(teachers) == 1 else {"backbone": "MIXED", "weights": "MIXED"}
    out["teacher"] = (teacher or {}).get("backbone")
    out["teacher_weights"] = (teacher or {}).get("weights")
    limits = {aupro_limit(r.protocol.get("aupro")) for r in results}
    out["aupro"] = f"standard, FPR<={limits.pop()}" if len(limits) == 1 else "MIXED"
    return out


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def table_rows(results: Sequence[RunResult], metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict[str, Any]]:
    """The results table as rows (fractions, mean over seeds): one per benchmark × column × category, then a
    ``mean`` row per benchmark × column, empty where the column lacks categories of its benchmark."""
    rows: list[dict[str, Any]] = []
    for benchmark, group in by_benchmark(results).items():
        categories = sorted({r.category for r in group})
        for column in dict.fromkeys(r.column for r in group):
            mine = [r for r in group if r.column == column]
            category_means: dict[str, dict[str, float]] = {}
            for category in categories:
                runs = [r for r in mine if r.category == category]
                if not runs:
                    continue
                means = {m: _mean([r.metrics.get(m, math.nan) for r in runs]) for m in metrics}
                category_means[category] = means
                rows.append(
                    {"benchmark": benchmark, "method": column, "category": category, "seeds": len(runs), **means}
                    | _protocol_columns(runs)
                )
            complete = len(category_means) == len(categories)
            mean_row = {m: _mean([c[m] for c in category_means.values()]) if complete else math.nan for m in metrics}
            seeds = len({r.seed for r in mine})
            rows.append(
                {"benchmark": benchmark, "method": column, "category": "mean", "seeds": seeds, **mean_row}
                | _protocol_columns(mine)
            )
    return rows


def write_tables(
    results: Sequence[RunResult],
    out: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    title: str = "",
    layout: str = "metric",
    missing: Sequence[str] = (),
) -> str:
    """Write ``out``.md (tables + protocol), ``out``.csv (``table_rows``) and ``out``.json (every run); returns
    the markdown."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(results, metrics, title, layout, missing)
    out.with_suffix(".md").write_text(text)
    rows = table_rows(results, metrics)
    header = ["benchmark", "method", "category", "seeds", *metrics, *PROTOCOL_CSV_COLUMNS]
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(_csv_row(row) for row in rows)
    runs = [r.__dict__ for r in results]
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "missing": list(missing)}, indent=1, default=str))
    return text


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def _split_named(argument: str) -> tuple[str | None, Path]:
    """``NAME=FOLDER`` -> (NAME, FOLDER); a plain folder (even one whose name holds '=') -> (None, folder)."""
    if "=" in argument and not Path(argument).exists():
        name, folder = argument.split("=", 1)
        return name, Path(folder)
    return None, Path(argument)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="run or sweep folders to collect; NAME=FOLDER names the column")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--title", default="")
    parser.add_argument("--layout", choices=LAYOUTS, default="metric", help="one table per metric, or one table")
    parser.add_argument("--out", type=Path, help="write <out>.md, <out>.csv and <out>.json")
    args = parser.parse_args(argv)
    named = [_split_named(a) for a in args.folders]
    results = find_runs([folder for _, folder in named], [name for name, _ in named])
    if not results:
        raise SystemExit(f"no finished runs (metrics.json) under {', '.join(args.folders)}")
    metrics = args.metrics.split(",")
    if args.out:
        print(write_tables(results, args.out, metrics, args.title, args.layout))
    else:
        print(markdown(results, metrics, args.title, args.layout))


if __name__ == "__main__":
    main()
