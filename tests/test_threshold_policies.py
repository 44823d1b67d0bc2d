"""Decision thresholds stored with a run (threshold.policy): metrics.json, the checkpoint, scores.csv, the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import pytest
import torch
from fixtures import write_mvtec
from helpers import compose_config

from kdad.metrics import Thresholds, thresholded_image_metrics
from kdad.runner.results import format_table
from kdad.runner.train import results_report, run

SMALL = [
    "data.image_size=64",
    "trainer.max_epochs=1",
    "logger=none",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "review_cases=0",
    "method.overlay_count=0",
]


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    write_mvtec(root, ("bottle",), n_train=10, n_test_good=3, n_per_defect=3)
    return root


def _run(root: Path, tmp_path: Path, *overrides: str) -> tuple[dict, Path]:
    cfg = compose_config(["data=mvtec", f"data.root={root}", "data.category=bottle", *SMALL, *overrides], tmp_path)
    return run(cfg, quiet=True), Path(cfg.run_dir)


def _scores(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "scores.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_default_normal_quantile_is_stored_with_the_run(mvtec_root: Path, tmp_path: Path) -> None:
    summary, run_dir = _run(mvtec_root, tmp_path)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["threshold_policy"] == "normal_quantile" and not saved["threshold_optimistic"]
    thresholds = Thresholds.from_dict(saved["thresholds"])
    assert thresholds.image.policy == "normal_quantile" and thresholds.image.target_fpr == 0.01
    assert thresholds.pixel is not None and thresholds.pixel.level == "pixel"
    assert thresholds.image.fpr_upper_95 is not None and thresholds.image.note  # 1 image: the caveat is recorded
    assert saved["threshold_calibration"]["images"] == thresholds.image.n == 1  # 0.1 of 10 training images

    # The checkpoint that was tested (last.ckpt: the weights in memory) carries the same thresholds.
    state = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert state["kdad"]["thresholds"] == saved["thresholds"]
    assert state["kdad"]["threshold_policy"] == "normal_quantile"

    # Thresholded figures agree with scores.csv and the stored threshold; decisions and normalised scores too.
    rows = _scores(run_dir)
    scores = [float(r["score"]) for r in rows]
    labels = [int(r["label"]) for r in rows]
    value = thresholds.image.value
    expected = thresholded_image_metrics(scores, labels, value)
    for key in ("precision", "recall", "fpr", "f1"):
        assert saved["metrics"][f"image_{key}"] == pytest.approx(expected[key], abs=1e-6)
    assert saved["thresholded"]["image_tp"] == expected["tp"]
    assert [r["decision"] for r in rows] == ["NOK" if s > value else "OK" for s in scores]
    assert all((float(r["normalized_score"]) > 0.5) == (r["decision"] == "NOK") for r in rows)
    # Threshold-free metrics keep their keys; the thresholded rows are labelled with the policy.
    assert {"image_auroc", "pixel_aupro", "pixel_f1", "pixel_iou"} <= set(saved["metrics"])
    report = results_report(summary, "rd", run_dir)
    assert "I-F1 @ normal_quantile" in report and "threshold policy: normal_quantile" in report


def test_calibration_images_are_not_trained_on(mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(["data=mvtec", f"data.root={mvtec_root}", "data.category=bottle", *SMALL], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    train = {str(s.image_path) for s in datamodule.train_dataset.samples}
    held = {str(s.image_path) for s in datamodule.calibration_dataset.samples}
    assert len(train) == 9 and len(held) == 1 and not train & held
    # threshold=f1_test calibrates on nothing: the whole training folder is trained on.
    cfg = compose_config(
        ["data=mvtec", f"data.root={mvtec_root}", "data.category=bottle", *SMALL, "threshold=f1_test"], tmp_path
    )
    whole = hydra.utils.instantiate(cfg.data)
    assert len(whole.train_dataset.samples) == 10 and whole.calibration_dataset is None


def test_f1_test_is_labelled_optimistic(mvtec_root: Path, tmp_path: Path) -> None:
    summary, run_dir = _run(mvtec_root, tmp_path, "threshold=f1_test")
    assert summary["threshold_policy"] == "f1_test" and summary["threshold_optimistic"]
    assert "optimistic" in summary["thresholds"]["image"]["note"]
    assert summary["metrics"]["image_f1"] == pytest.approx(summary["metrics"]["image_f1_max"], abs=1e-9)
    assert "I-F1 @ f1_test, optimistic" in format_table(summary["metrics"], "t", summary["threshold_policy"])
    assert "optimistic" in results_report(summary, "rd", run_dir)


def test_manual_uses_the_given_values(mvtec_root: Path, tmp_path: Path) -> None:
    summary, run_dir = _run(mvtec_root, tmp_path, "threshold=manual", "threshold.image=0.25", "threshold.pixel=0.5")
    assert summary["thresholds"]["image"]["value"] == 0.25 and summary["thresholds"]["pixel"]["value"] == 0.5
    assert summary["thresholded"]["image_threshold"] == 0.25 and summary["thresholded"]["pixel_threshold"] == 0.5
    rows = _scores(run_dir)
    assert [r["decision"] for r in rows] == ["NOK" if float(r["score"]) > 0.25 else "OK" for r in rows]


def test_f1_val_fits_on_the_labelled_folder(mvtec_root: Path, tmp_path: Path) -> None:
    folder = mvtec_root / "bottle"
    summary, _ = _run(
        mvtec_root,
        tmp_path,
        "threshold=f1_val",
        f"threshold.val_dir={folder / 'test'}",
        f"threshold.mask_dir={folder / 'ground_truth'}",
    )
    assert summary["threshold_policy"] == "f1_val" and not summary["threshold_optimistic"]
    image = summary["thresholds"]["image"]
    assert image["policy"] == "f1_val" and image["n"] == 3 + 2 * 3
    assert summary["thresholds"]["pixel"]["policy"] == "f1_val"
    assert summary["threshold_calibration"]["images"] == 9


def test_val_loss_hold_out_is_reused_for_calibration(mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        ["data=mvtec", f"data.root={mvtec_root}", "data.category=bottle", *SMALL, "checkpoint=val_loss"], tmp_path
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.calibration_dataset.samples == datamodule.val_dataset.samples
    assert len(datamodule.train_dataset.samples) == 8  # only val_split (0.2) is held out, nothing more
    assert "validation" in datamodule.describe()["calibration_source"]
