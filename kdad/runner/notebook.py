"""Loaders and plots for notebooks/review.ipynb: results of sweeps (run folders or W&B), bars, worst-case galleries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdad.errors import check_choice
from kdad.runner.report import DEFAULT_METRICS, RunResult, find_runs, table_rows
from kdad.runner.results import METRIC_LABELS
from kdad.runner.review import KINDS, Case, load_cases


def _named(source: str) -> tuple[str | None, Path]:
    if "=" in source and not Path(source).exists():
        name, folder = source.split("=", 1)
        return name, Path(folder)
    return None, Path(source)


def resolve_sources(sources: Sequence[str], base: Path) -> list[str]:
    """``sources`` (FOLDER or NAME=FOLDER) with relative folders made absolute against ``base``."""
    resolved = []
    for source in sources:
        name, folder = _named(source)
        folder = folder if folder.is_absolute() else (Path(base) / folder).resolve()
        resolved.append(f"{name}={folder}" if name else str(folder))
    return resolved


def load_results(sources: Sequence[str]) -> list[RunResult]:
    """Finished runs below sweep/run folders (``NAME=FOLDER`` names that folder's method column)."""
    named = [_named(s) for s in sources]
    return find_runs([folder for _, folder in named], [name for name, _ in named])


def run_dirs(sources: Sequence[str]) -> list[Path]:
    """The finished run folders below ``sources``."""
    return [p.parent for _, folder in map(_named, sources) for p in sorted(folder.rglob("metrics.json"))]


def load_wandb_results(project: str, group: str | None = None, api: Any = None) -> list[RunResult]:
    """Finished kdad runs of a W&B project (``entity/project``), optionally one sweep's group, read from their
    summaries (``test/<metric>``) and configs; sweep ``summary`` runs are skipped. Needs W&B online."""
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else {}
    results = []
    for run in api.runs(project, filters=filters):
        summary = dict(run.summary)
        metrics = {k[len("test/") :]: float(v) for k, v in summary.items() if k.startswith("test/") and _number(v)}
        if not metrics or run.config.get("data") is None:
            continue
        config = run.config
        data, teacher = config["data"], config.get("teacher") or {}
        results.append(
            RunResult(
                column=config.get("variant") or config["method"]["name"],
                category=str(data["category"]),
                seed=int(config.get("seed", 0)),
                metrics=metrics,
                protocol={
                    "benchmark": _benchmark_name(data),
                    "image_size": data.get("image_size"),
                    "interpolation": data.get("interpolation"),
                    "teacher": {"backbone": teacher.get("backbone"), "weights": teacher.get("weights")},
                    "checkpoint_policy": (config.get("checkpoint") or {}).get("policy"),
                    "aupro": f"pixel_aupro = standard MVTec AU-PRO, FPR <= {config['method'].get('aupro_limit', 0.3)}",
                },
            )
        )
    return results


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _benchmark_name(data: dict) -> str:
    """A data module's benchmark name from its logged config (``_target_`` such as kdad.data.VisADataModule)."""
    from kdad.data import DATA_MODULES

    target = str(data.get("_target_", ""))
    for name, cls in DATA_MODULES.items():
        if target.endswith(cls.__name__):
            return name
    return target.rsplit(".", 1)[-1]


def results_frame(results: Sequence[RunResult], metrics: Sequence[str] = DEFAULT_METRICS) -> Any:
    """The results table as a pandas DataFrame (×100), indexed by benchmark, category; one column per
    method × metric."""
    import pandas as pd

    rows = pd.DataFrame(table_rows(results, metrics))
    frame = rows.pivot_table(index=["benchmark", "category"], columns="method", values=list(metrics), sort=False)
    frame = frame * 100
    frame.columns = [f"{method} {METRIC_LABELS.get(metric, metric)}" for metric, method in frame.columns]
    return frame.round(1)


def plot_category_bars(results: Sequence[RunResult], metric: str = "image_auroc", benchmark: str | None = None) -> Any:
    """Grouped bar chart: categories on the x axis, one bar per method (mean over seeds), mean last."""
    import matplotlib.pyplot as plt

    rows = [r for r in table_rows(results, [metric]) if benchmark is None or r["benchmark"] == benchmark]
    categories = list(dict.fromkeys(r["category"] for r in rows if r["category"] != "mean")) + ["mean"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    value = {(r["category"], r["method"]): r[metric] for r in rows}
    width = 0.8 / max(1, len(methods))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.8 * len(categories) * max(1, len(methods)) ** 0.5), 3.5))
    for k, method in enumerate(methods):
        heights = [100 * value.get((c, method), math.nan) for c in categories]
        positions = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(categories))]
        axis.bar(positions, [0 if math.isnan(h) else h for h in heights], width, label=method)
    finite = [100 * v for v in value.values() if not math.isnan(v)]
    axis.set_ylim(max(0.0, min(finite, default=0.0) - 5), 100.5)
    axis.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    axis.set_ylabel(METRIC_LABELS.get(metric, metric) + " (%)")
    axis.set_title(f"{METRIC_LABELS.get(metric, metric)} per category" + (f" ({benchmark})" if benchmark else ""))
    axis.legend(fontsize="small", ncols=min(4, len(methods)))
    figure.tight_layout()
    return figure


def gallery(folders: Sequence[Path], kind: str = "missed_defect", limit: int = 8) -> Any:
    """The ``limit`` worst cases of ``kind`` over the runs in ``folders`` (lowest-scored defects or
    highest-scored normals, ranked within each run by score), each as image | map | map with the GT outline."""
    import matplotlib.pyplot as plt

    from kdad.runner.visualize import overlay_panel

    check_choice(kind, tuple(KINDS), "kind")
    picked = []
    for folder in folders:
        label = "/".join(Path(folder).parts[-4:])
        picked += [(label, case) for case in load_cases(folder, kind)]
    # Scores of different runs are on different scales: take each run's cases in turn, worst first.
    by_run: dict[str, list[Case]] = {}
    for label, case in picked:
        by_run.setdefault(label, []).append(case)
    rounds = max(map(len, by_run.values()), default=0)
    ordered = [(label, cases[i]) for i in range(rounds) for label, cases in by_run.items() if i < len(cases)]
    shown = ordered[:limit]
    figure, axes = plt.subplots(len(shown) or 1, 1, figsize=(9, 3.2 * max(1, len(shown))), squeeze=False)
    for axis, (label, case) in zip(axes[:, 0], shown, strict=False):
        caption = f"{case.defect_type}/{Path(case.image_path).stem} score={case.score:.4f}"
        panel = overlay_panel(case.image, case.anomaly_map, case.mask, case.vmin, case.vmax, caption)
        axis.imshow(panel)
        axis.set_title(label, fontsize="small")
        axis.axis("off")
    if not shown:
        axes[0, 0].text(0.5, 0.5, f"no saved {KINDS[kind]} (review_cases.npz)", ha="center")
        axes[0, 0].axis("off")
    figure.suptitle(KINDS[kind])
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / figure.get_figheight()))  # room for the title
    return figure
