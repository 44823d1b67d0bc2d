"""Review material: the worst cases of a run with their anomaly maps, and loaders/plots for notebooks/review.ipynb.

At test time (``kdad.run``) the model re-renders the maps of the ``review_cases`` lowest-scored defect images
(missed defects) and highest-scored normal images (false alarms), once the scores of the whole test set are known,
and saves them compactly in ``<run>/review_cases.npz`` (128 px thumbnails, float16 maps, masks): a few hundred KB
per run, no checkpoint or teacher weights needed to look at them later. The overlays in ``overlays/`` are a spread
of the test set instead (evenly spaced test images), so they rarely show the failures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from kdad.methods.base import TestRecord, denormalise
from kdad.report import DEFAULT_METRICS, RunResult, find_runs, table_rows
from kdad.results import METRIC_LABELS

CASES_FILE = "review_cases.npz"
THUMBNAIL = 128
KINDS = {"missed_defect": "lowest-scored defect images", "false_alarm": "highest-scored normal images"}


@dataclass
class Case:
    kind: str  # "missed_defect" or "false_alarm"
    image: np.ndarray  # uint8 HxWx3
    anomaly_map: np.ndarray  # float32 HxW
    mask: np.ndarray | None  # bool HxW
    image_path: str
    defect_type: str
    label: int
    score: float
    vmin: float  # colour scale shared by the run's cases
    vmax: float


def select_cases(records: Sequence[TestRecord], count: int) -> list[tuple[int, str]]:
    """(index, kind) of the ``count`` lowest-scored anomalous and ``count`` highest-scored normal records."""
    defects = sorted((r.score, i) for i, r in enumerate(records) if r.label == 1)
    normals = sorted(((r.score, i) for i, r in enumerate(records) if r.label == 0), reverse=True)
    return [(i, "missed_defect") for _, i in defects[:count]] + [(i, "false_alarm") for _, i in normals[:count]]


def _thumbnail(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    if array.shape[0] == size and array.shape[1] == size:
        return array
    return cv2.resize(array, (size, size), interpolation=interpolation)


@torch.no_grad()
def save_review_cases(
    run_dir: Path,
    model: torch.nn.Module,
    dataset: Dataset,
    records: Sequence[TestRecord],
    count: int,
    device: torch.device | str = "cpu",
    forward_context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    batch_size: int = 8,
) -> Path | None:
    """Re-render and save the maps of the worst cases (see module doc). ``records[i]`` must describe
    ``dataset[i]`` (the unshuffled test loader order); ``forward_context`` is the trainer's precision context."""
    chosen = select_cases(records, count)
    if not chosen:
        return None
    was_training = model.training
    model.eval()
    images, maps, masks, has_masks = [], [], [], []
    for start in range(0, len(chosen), batch_size):
        batch = default_collate([dataset[i] for i, _ in chosen[start : start + batch_size]])
        with forward_context():
            output = model(batch["image"].to(device))
        for j in range(batch["image"].shape[0]):
            size = min(THUMBNAIL, batch["image"].shape[-1])
            images.append(_thumbnail(denormalise(batch["image"][j]), size, cv2.INTER_AREA))
            full_map = output.anomaly_map[j].float().cpu().numpy()
            maps.append(_thumbnail(full_map, size, cv2.INTER_AREA).astype(np.float16))
            mask = batch["mask"][j, 0].numpy().astype(np.uint8)
            masks.append(_thumbnail(mask, size, cv2.INTER_NEAREST).astype(bool))
            has_masks.append(bool(batch["has_mask"][j]))
    model.train(was_training)
    vmin = float(min(m.min() for m in maps))
    vmax = max(max(r.score for r in records), vmin + 1e-6)
    path = Path(run_dir) / CASES_FILE
    np.savez_compressed(
        path,
        kind=np.array([k for _, k in chosen]),
        image=np.stack(images),
        anomaly_map=np.stack(maps),
        mask=np.stack(masks),
        has_mask=np.array(has_masks),
        image_path=np.array([records[i].image_path for i, _ in chosen]),
        defect_type=np.array([records[i].defect_type for i, _ in chosen]),
        label=np.array([records[i].label for i, _ in chosen]),
        score=np.array([records[i].score for i, _ in chosen], dtype=np.float64),
        display_range=np.array([vmin, vmax]),
    )
    return path


def load_cases(run_dir: Path, kind: str | None = None) -> list[Case]:
    """The saved cases of a run (``kind``: only "missed_defect" or "false_alarm"); [] for runs without them."""
    path = Path(run_dir) / CASES_FILE
    if not path.is_file():
        return []
    with np.load(path) as data:
        vmin, vmax = (float(v) for v in data["display_range"])
        cases = [
            Case(
                kind=str(data["kind"][i]),
                image=data["image"][i],
                anomaly_map=data["anomaly_map"][i].astype(np.float32),
                mask=data["mask"][i] if bool(data["has_mask"][i]) else None,
                image_path=str(data["image_path"][i]),
                defect_type=str(data["defect_type"][i]),
                label=int(data["label"][i]),
                score=float(data["score"][i]),
                vmin=vmin,
                vmax=vmax,
            )
            for i in range(len(data["kind"]))
        ]
    return [c for c in cases if kind is None or c.kind == kind]


# ------------------------------------------------------------------------------------- notebook helpers
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

    from kdad.visualize import overlay_panel

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {tuple(KINDS)}, got '{kind}'")
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
