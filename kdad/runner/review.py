"""Review material: the worst cases of a run with their anomaly maps, and loaders/plots for notebooks/review.ipynb.

At test time (``kdad.run``) the model re-renders the maps of the ``review_cases`` lowest-scored defect images
(missed defects) and highest-scored normal images (false alarms), once the scores of the whole test set are known,
and saves them compactly in ``<run>/review_cases.npz`` (128 px thumbnails, float16 maps, masks): a few hundred KB
per run, no checkpoint or teacher weights needed to look at them later. The overlays in ``overlays/`` are a spread
of the test set instead (evenly spaced test images), so they rarely show the failures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from kdad.methods.base import denormalise
from kdad.records import TestRecord

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
