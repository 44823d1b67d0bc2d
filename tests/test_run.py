"""End to end through `kdad.run` with the real configs: composition, run folders, eval, resume, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from fixtures import write_folder, write_mvtec3d, write_visa_raw
from helpers import compose_config
from lightning.pytorch.callbacks import Callback

from kdad.data.errors import DatasetError
from kdad.methods.base import AnomalyModule, NonFiniteLossError
from kdad.runner.train import RunFolderError, run

METHODS = ["rd", "stfpm"]
DATA = ["synthetic", "mvtec", "visa", "mvtec3d", "folder"]
SMALL = [
    "data.image_size=64",
    "trainer.max_epochs=1",
    "logger=csv",
    "data.batch_size=4",
    "data.eval_batch_size=8",
]
REPO = Path(__file__).resolve().parents[1]


def _mvtec(root: Path) -> list[str]:
    return ["data=mvtec", f"data.root={root}", "data.category=bottle"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data", DATA)
def test_every_method_and_data_combination_composes(method: str, data: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", f"data={data}"], tmp_path)
    assert cfg.method.name == method
    assert cfg.run_dir.endswith(f"{data}/{cfg.data.category}/{method}/seed0")
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.name == data


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("policy", ["last", "val_loss", "best_on_test"])
def test_methods_instantiate_under_every_checkpoint_policy(method: str, policy: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", f"checkpoint={policy}"], tmp_path)
    module = hydra.utils.instantiate(cfg.method)
    assert isinstance(module, AnomalyModule)
    assert module.validation == {"last": "none", "val_loss": "loss", "best_on_test": "metrics"}[policy]
    module.model.eval()
    with torch.no_grad():
        out = module.model(torch.randn(2, 3, 64, 64))
    assert out.score.shape == (2,) and out.anomaly_map.shape == (2, 64, 64)
    assert out.score.dtype == torch.float32


def test_rd_run_writes_complete_run_folder(mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config([*_mvtec(mvtec_root), *SMALL], tmp_path)
    summary = run(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir == tmp_path / "runs/default/mvtec/bottle/rd/seed0"
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["metrics"] == summary["metrics"]
    for key in (
        "image_auroc",
        "pixel_auroc",
        "pixel_aupro",
        "pixel_aupro_per_image",
        "image_f1_max",
        "pixel_ap",
    ):
        assert 0.0 <= saved["metrics"][key] <= 1.0
    assert saved["checkpoint_policy"] == "last" and saved["data"]["image_size"] == 64
    assert saved["teacher"]["weights"] == "package:efficientnet_lite0"
    rows = (run_dir / "scores.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 + 2 * 3  # header + test/good + two defect types
    assert len(list((run_dir / "overlays").glob("*.png"))) == 9
    assert (run_dir / "checkpoints/last.ckpt").is_file()
    assert "method" in (run_dir / "config_resolved.yaml").read_text()
    # Hydra's record of the command, written by kdad once the run starts (conf/hydra/default.yaml: output_subdir).
    assert f"data.root={mvtec_root}" in (run_dir / ".hydra/overrides.yaml").read_text()
    assert "run_dir: ${paths.runs_dir}" in (run_dir / ".hydra/config.yaml").read_text()
    assert (run_dir / ".hydra/hydra.yaml").is_file()
    # The frozen teacher is rebuilt from its weight source, not stored.
    state = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert not any(k.startswith("model.teacher.") for k in state["state_dict"])
    assert state["kdad"]["frozen"]["model.teacher."]["weights"] == "package:efficientnet_lite0"

    # Evaluating the checkpoint alone reproduces the metrics.
    eval_cfg = compose_config(
        [
            *_mvtec(mvtec_root),
            *SMALL,
            "train=false",
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            "tag=eval",
        ],
        tmp_path,
    )
    evaluated = run(eval_cfg)
    for key, value in summary["metrics"].items():
        assert evaluated["metrics"][key] == pytest.approx(value, abs=1e-5)

    # A finished run is not retrained: its results are printed again.
    again = run(cfg)
    assert again["metrics"] == saved["metrics"]


def test_stfpm_val_loss_policy_tests_best_checkpoint(mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        [*_mvtec(mvtec_root), *SMALL, "method=stfpm", "checkpoint=val_loss", "trainer.max_epochs=2"], tmp_path
    )
    summary = run(cfg)
    assert summary["checkpoint_policy"] == "val_loss"
    assert "best-epoch" in summary["checkpoint_used"]
    assert summary["data"]["val_source"] == "train_split"
    assert sum(summary["data"]["counts"]["validation"].values()) > 0


def test_best_on_test_policy_is_labelled(mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config([*_mvtec(mvtec_root), *SMALL, "checkpoint=best_on_test", "trainer.max_epochs=2"], tmp_path)
    summary = run(cfg)
    assert summary["checkpoint_policy"] == "best_on_test"
    assert "optimistic" in summary["checkpoint_note"]


class _StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def test_rerun_of_unfinished_run_resumes_from_last_checkpoint(
    mvtec_root: Path, tmp_path: Path, caplog, capsys, monkeypatch
) -> None:
    import kdad.runner.train as run_module

    cfg = compose_config([*_mvtec(mvtec_root), *SMALL, "trainer.max_epochs=2"], tmp_path)
    build = run_module.build_callbacks
    with monkeypatch.context() as stopped:  # a job that stopped after epoch 0 (not a config change)
        stopped.setattr(run_module, "build_callbacks", lambda c: [*build(c), _StopAfterFirstEpoch()])
        run(cfg)
    run_dir = Path(cfg.run_dir)
    (run_dir / "metrics.json").unlink()  # as if the job died before testing
    # Resuming is for the configuration the run was started with only.
    with pytest.raises(RunFolderError, match=r"unfinished run .*\n  trainer.max_epochs: 2 -> 3\n"):
        run(compose_config([*_mvtec(mvtec_root), *SMALL, "trainer.max_epochs=3"], tmp_path))
    # The results come after the logger's shutdown output: a run ends with table, checkpoint policy, run folder.
    offline = tmp_path / "wandb/offline-run-1"
    monkeypatch.setattr(run_module, "finish_wandb", lambda: print("LOGGER SHUTDOWN") or offline)
    capsys.readouterr()
    with caplog.at_level("INFO", logger="kdad"):
        summary = run(cfg)
    assert any("Resuming training from" in r.message for r in caplog.records)
    assert summary["epochs_trained"] == 2
    out = capsys.readouterr().out
    assert out.index("LOGGER SHUTDOWN") < out.index(f"`wandb sync {offline}`") < out.index("### rd on mvtec/bottle")
    lines = out.strip().splitlines()  # table, checkpoint policy, threshold policy and thresholds, run folder
    assert any(line.startswith("checkpoint policy: last (") for line in lines) and lines[-1] == f"run folder: {run_dir}"


def test_interrupted_training_resumes(mvtec_root: Path, tmp_path: Path) -> None:
    """Ctrl-C in epoch 1 leaves last.ckpt and no metrics.json; the same command then finishes the run."""
    args = [
        sys.executable,
        "-m",
        "kdad.run",
        *_mvtec(mvtec_root),
        *SMALL,
        "trainer.max_epochs=2",
        f"paths.runs_dir={tmp_path}/runs",
        f"data.cache_dir={tmp_path}/resized",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}
    interrupted = subprocess.run(
        [*args, "+callbacks.interrupt_at._target_=helpers.InterruptAt", "+callbacks.interrupt_at.epoch=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    run_dir = tmp_path / "runs/default/mvtec/bottle/rd/seed0"
    assert interrupted.returncode != 0
    assert (run_dir / "checkpoints/last.ckpt").is_file() and not (run_dir / "metrics.json").exists()
    state = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1
    resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming training from" in resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_trained"] == 2


def test_wandb_offline_run_holds_summary_and_media(mvtec_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # kdad.runner.loggers silences W&B offline itself
    cfg = compose_config([*_mvtec(mvtec_root), *[s for s in SMALL if s != "logger=csv"], "logger=wandb"], tmp_path)
    run(cfg)
    offline = list((Path(cfg.run_dir) / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    printed = capsys.readouterr()
    assert f"W&B offline run saved: upload it with `wandb sync {offline[0]}`" in printed.out
    assert "wandb:" not in printed.out + printed.err  # no banners, no end-of-run summary
    assert printed.out.strip().splitlines()[-1] == f"run folder: {cfg.run_dir}"
    # Offline runs keep their summary in the run's transaction log until `wandb sync`.
    log = next(offline[0].glob("*.wandb")).read_bytes()
    assert b"test/image_auroc" in log and b"checkpoint_policy" in log
    media = offline[0] / "files" / "media"
    assert len(list((media / "images").rglob("*.png"))) == 9
    table = json.loads(next((media / "table").rglob("*.table.json")).read_text())
    assert "image_auroc" in table["columns"] and len(table["data"]) == 1
    import wandb

    assert wandb.run is None  # finished, so the next job of a sweep starts its own run


def test_non_finite_loss_stops_with_clear_error(mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config([*_mvtec(mvtec_root), *SMALL, "method.optimizer.lr=1e30", "trainer.max_epochs=3"], tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* No optimiser step was taken"):
        run(cfg)
    assert not (Path(cfg.run_dir) / "metrics.json").exists()


def test_bad_data_root_fails_before_training(tmp_path: Path) -> None:
    cfg = compose_config(["data=mvtec", f"data.root={tmp_path}/nowhere", *SMALL], tmp_path)
    with pytest.raises(DatasetError, match="nowhere"):
        run(cfg)
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def test_eval_only_requires_checkpoint(tmp_path: Path) -> None:
    cfg = compose_config(["train=false", *SMALL], tmp_path)
    with pytest.raises(ValueError, match="ckpt_path"):
        run(cfg)


@pytest.mark.parametrize("data", ["visa", "mvtec3d", "folder", "folder_no_masks"])
def test_other_benchmarks_run_end_to_end(data: str, tmp_path: Path) -> None:
    root = tmp_path / "data"
    if data == "visa":
        write_visa_raw(root)
        overrides = ["data=visa", f"data.root={root}", "data.category=candle"]
    elif data == "mvtec3d":
        write_mvtec3d(root)
        overrides = ["data=mvtec3d", f"data.root={root}", "data.category=bagel"]
    else:
        masks = data == "folder"
        write_folder(root, with_masks=masks, n_test_normal=2)
        overrides = ["data=folder", f"data.root={root}", "data.test_normal_dir=good_test"]
        overrides += ["data.mask_dir=mask"] if masks else []
    summary = run(compose_config([*overrides, *SMALL], tmp_path))
    has_pixels = data != "folder_no_masks"
    assert ("pixel_auroc" in summary["metrics"]) == has_pixels
    assert 0.0 <= summary["metrics"]["image_auroc"] <= 1.0


def test_auxiliary_maps_are_evaluated_alongside_the_main_map(tmp_path: Path) -> None:
    from kdad.methods.base import AnomalyOutput

    class WithAuxiliary(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> AnomalyOutput:
            maps = images.mean(1)
            return AnomalyOutput(maps.amax((1, 2)), maps, auxiliary={"inverted": (-maps.amax((1, 2)), -maps)})

    module = AnomalyModule(WithAuxiliary(), optimizer=torch.optim.Adam)
    batch = {
        "image": torch.randn(4, 3, 8, 8),
        "label": torch.tensor([0, 0, 1, 1]),
        "mask": torch.zeros(4, 1, 8, 8),
        "has_mask": torch.ones(4, dtype=torch.bool),
    }
    batch["mask"][2:, :, 2:4, 2:4] = 1
    batch["image"][2:, :, 2:4, 2:4] += 5
    module._evaluate_batch(batch, keep_samples=False)
    metrics = module._compute_all()
    assert metrics["image_auroc"] == 1.0 and metrics["inverted/image_auroc"] == 0.0
    assert "inverted/pixel_aupro" in metrics


class _LastCheckpointProbe(Callback):
    """Records, at the start of each epoch, the epoch stored in last.ckpt (None when there is no file yet)."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        state = torch.load(self.path, map_location="cpu", weights_only=False) if self.path.is_file() else None
        self.seen.append(None if state is None else state["epoch"])


@pytest.mark.parametrize("method", ["rd", "rdpp"])  # automatic and manual (several optimisers) optimisation
def test_last_checkpoint_is_written_after_every_epoch(method: str, mvtec_root: Path, tmp_path: Path, monkeypatch):
    """A run killed outright (no Ctrl-C handler runs) must still find the previous epoch's last.ckpt."""
    import kdad.runner.train as run_module

    cfg = compose_config([*_mvtec(mvtec_root), *SMALL, f"method={method}", "trainer.max_epochs=3"], tmp_path)
    probe = _LastCheckpointProbe(Path(cfg.run_dir) / "checkpoints/last.ckpt")
    build = run_module.build_callbacks
    monkeypatch.setattr(run_module, "build_callbacks", lambda c: [*build(c), probe])
    run(cfg)
    assert probe.seen == [None, 0, 1]  # written at the end of epochs 0 and 1, before epochs 1 and 2 start
    assert not list((Path(cfg.run_dir) / "checkpoints").glob("*.partial"))
