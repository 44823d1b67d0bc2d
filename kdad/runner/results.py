"""Run outputs: the resolved config, metrics.json, the per-image score CSV, overlay PNGs and the printed table."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf

from kdad.deploy.postprocess import decide, normalize_scores
from kdad.errors import ConfigError
from kdad.records import OverlaySample, TestRecord
from kdad.runner.visualize import overlay_panel

CONFIG_NAME = "config_resolved.yaml"
#: written last and atomically: its presence marks a finished run
METRICS_NAME = "metrics.json"
#: saved at every epoch end and on Ctrl-C: what a re-run resumes from, and the weights of checkpoint=last
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
#: metrics.json's checkpoint_used when the weights in memory after training were tested (last.ckpt holds them)
TESTED_IN_MEMORY = "weights in memory after training"
#: Hydra's record of the command in the run folder (config.yaml, hydra.yaml, overrides.yaml), written by kdad.
HYDRA_SUBDIR = ".hydra"

METRIC_LABELS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1_max": "P-F1max",
    "pixel_aupro": "AUPRO@0.3 (standard)",
    "pixel_aupro_per_image": "PRO (RD per-image)",
}
#: Figures at the run's decision threshold (``threshold.policy``); the table names the policy after them.
THRESHOLDED_LABELS = {
    "image_precision": "I-Precision",
    "image_recall": "I-Recall",
    "image_fpr": "I-FPR",
    "image_f1": "I-F1",
    "pixel_precision": "P-Precision",
    "pixel_recall": "P-Recall",
    "pixel_f1": "P-F1",
    "pixel_iou": "P-IoU",
}
#: Threshold policies whose figures are optimistic (fitted on the test set they are reported on).
OPTIMISTIC_THRESHOLD_POLICIES = ("f1_test",)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's config with every value resolved, as plain data: exactly what config_resolved.yaml holds."""
    return yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))


def write_config(run_dir: Path, cfg: DictConfig) -> Path:
    """config_resolved.yaml, written before training (an interrupted run has it too) and atomically: the record of
    the configuration a run folder belongs to, which kdad.run compares before reusing the folder."""
    path = run_dir / CONFIG_NAME
    _atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
    return path


def write_hydra_record(run_dir: Path, cfg: DictConfig) -> Path | None:
    """``.hydra/``: the composed config (``config.yaml``, unresolved), Hydra's own config (``hydra.yaml``) and the
    command's overrides (``overrides.yaml``), the files Hydra writes with ``hydra.output_subdir=.hydra``.

    kdad writes them once a run starts, and Hydra does not (``conf/hydra/default.yaml``: ``output_subdir: null``):
    Hydra would write them before kdad's run-folder check, so a refused command would leave the folder's record
    describing the refused command instead of the run the folder holds. None outside a Hydra job or compose.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    folder = run_dir / HYDRA_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    _atomic_write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    _atomic_write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
    return folder


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The stored resolved config; None when the file is missing or is not a readable YAML mapping."""
    path = run_dir / CONFIG_NAME
    try:
        stored = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return stored if isinstance(stored, dict) else None


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json; None when the run has not finished (no file); ConfigError naming the file when it
    is not a readable JSON object."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(metrics, dict):
        raise ConfigError(f"{path} is not a JSON object: not a kdad metrics file")
    return metrics


def write_metrics(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    """metrics.json is written last and atomically: its presence marks a finished run."""
    path = run_dir / METRICS_NAME
    _atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_scores(
    run_dir: Path, records: Sequence[TestRecord], image_threshold: Mapping[str, Any] | None = None
) -> Path:
    """scores.csv: one row per test image with its raw score and, given the run's image threshold record
    (``Thresholds.image.to_dict()``), the display score ``normalized_score`` (threshold -> 0.5, anomalib's
    min-max scheme, :func:`kdad.deploy.postprocess.normalize_scores`) and the ``decision`` OK/NOK (NOK iff
    score > threshold); both columns are empty without a threshold.

    A unified run (records carrying their category) gets a ``category`` column first, and ``image_threshold`` is
    ``{category: record}``: each image is decided with its own category's threshold."""
    path = run_dir / "scores.csv"
    unified = any(r.category is not None for r in records)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["image_path", "defect_type", "label", "score", "normalized_score", "decision"]
        writer.writerow(["category", *header] if unified else header)
        for r in records:
            extra = ["", ""]
            record = image_threshold
            if unified and image_threshold is not None:
                record = image_threshold.get(str(r.category))
            if record is not None:
                extra = [f"{normalize_scores(r.score, record):.6g}", decide(r.score, record["value"])]
            row = [r.image_path, r.defect_type, r.label, f"{r.score:.6g}", *extra]
            writer.writerow([r.category, *row] if unified else row)
    return path


def display_range(samples: Sequence[OverlaySample], records: Sequence[TestRecord]) -> tuple[float, float]:
    """One colour scale for all overlays: from the smallest map value shown to the largest image score."""
    low = min(float(s.anomaly_map.min()) for s in samples)
    high = max(r.score for r in records) if records else max(float(s.anomaly_map.max()) for s in samples)
    return low, max(high, low + 1e-6)


def write_overlays(run_dir: Path, samples: Sequence[OverlaySample], records: Sequence[TestRecord]) -> list[Path]:
    if not samples:
        return []
    folder = run_dir / "overlays"
    folder.mkdir(parents=True, exist_ok=True)
    vmin, vmax = display_range(samples, records)
    paths = []
    for index, sample in enumerate(samples):
        r = sample.record
        stem = Path(r.image_path).stem
        where = r.defect_type if r.category is None else f"{r.category}_{r.defect_type}"
        caption = f"{where.replace('_', '/', 1) if r.category else where}/{stem}  label={r.label}  score={r.score:.4f}"
        panel = overlay_panel(sample.image, sample.anomaly_map, sample.mask, vmin, vmax, caption)
        path = folder / f"{index:02d}_{where}_{stem}.png"
        cv2.imwrite(str(path), panel[..., ::-1])
        paths.append(path)
    return paths


def format_table(metrics: Mapping[str, float], title: str, threshold_policy: str | None = None) -> str:
    """A small two-column markdown table of the reported metrics; figures at the decision threshold are
    labelled with ``threshold_policy`` (and as optimistic for ``f1_test``)."""
    rows = [f"| {metric_label(k, threshold_policy)} | {_fmt(v)} |" for k, v in metrics.items()]
    return "\n".join([f"### {title}", "", "| metric | value |", "|---|---|", *rows])


def format_category_table(
    per_category: Mapping[str, Mapping[str, Any]],
    mean: Mapping[str, float],
    title: str,
    threshold_policy: str | None = None,
) -> str:
    """A unified run's table: a row per category and the mean over categories, a column per main-map metric
    (auxiliary maps, defect groups and units stay in metrics.json as ``<category>/<name>/<metric>``)."""
    keys = [k for k in mean if "/" not in k]
    header = "| category | " + " | ".join(metric_label(k, threshold_policy) for k in keys) + " |"
    rows = [
        f"| {category} | " + " | ".join(_fmt(part["metrics"].get(k, math.nan)) for k in keys) + " |"
        for category, part in per_category.items()
    ]
    rows.append("| **mean** | " + " | ".join(_fmt(mean[k]) for k in keys) + " |")
    return "\n".join([f"### {title}", "", header, "|---" * (len(keys) + 1) + "|", *rows])


def metric_label(key: str, threshold_policy: str | None = None) -> str:
    """Table label of a metrics.json key, e.g. ``I-F1 @ normal_quantile`` for a thresholded figure."""
    name = key.split("/")[-1]
    if name in THRESHOLDED_LABELS:
        prefix = key[: -len(name)]
        policy = threshold_policy or "threshold"
        suffix = ", optimistic" if policy in OPTIMISTIC_THRESHOLD_POLICIES else ""
        return f"{prefix}{THRESHOLDED_LABELS[name]} @ {policy}{suffix}"
    return METRIC_LABELS.get(key, key)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def per_defect_scores(records: Sequence[TestRecord]) -> dict[str, dict[str, float]]:
    """Mean and max image score per defect type: a quick look at which defects the method misses."""
    out: dict[str, dict[str, float]] = {}
    for defect in sorted({r.defect_type for r in records}):
        scores = np.array([r.score for r in records if r.defect_type == defect])
        out[defect] = {
            "count": int(scores.size),
            "mean_score": float(scores.mean()),
            "max_score": float(scores.max()),
        }
    return out
