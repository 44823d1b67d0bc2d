"""Category sweeps (kdad.runner.sweep): data.category=all, parallel launchers, resume, summary tables, W&B, DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from fixtures import write_mvtec
from helpers import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from omegaconf import read_write

from kdad.data.embedded import SYNTHETIC_CATEGORIES
from kdad.runner import gpus, sweep
from kdad.runner.gpus import GPU_PER_JOB_ENV
from kdad.runner.report import RunResult, find_runs, main, markdown, table_rows, write_tables
from kdad.runner.train import run

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=64",
    "trainer.max_epochs=1",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "trainer.enable_progress_bar=false",
    "review_cases=2",
]
# The embedded benchmark, generated small (64 px, few images) into the test's folder.
SYNTHETIC = [
    "data=synthetic",
    "data.generation_size=64",
    "data.n_train=8",
    "data.n_test_good=4",
    "data.n_test_per_defect=2",
]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def _kdad(args: list[str], tmp: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kdad.run", *args, f"paths.runs_dir={tmp}/runs", f"data.cache_dir={tmp}/cache"]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _table(markdown_text: str, heading: str) -> list[str]:
    """The first cells of the rows of the table under ``### heading``."""
    lines = markdown_text.split(f"### {heading}", 1)[1].strip().splitlines()
    rows = [line for line in lines[2:] if line.startswith("|")]
    return [row.split("|")[1].strip() for row in rows[: next((i for i, r in enumerate(rows) if "mean" in r), 0) + 1]]


class InterruptIn(Callback):
    """Ctrl-C at the first batch of ``epoch`` in runs of ``category`` only (a sweep killed mid-category)."""

    def __init__(self, run_dir: str, category: str, epoch: int = 1) -> None:
        self.active = f"/{category}/" in run_dir
        self.epoch = epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, idx: int) -> None:
        if self.active and trainer.current_epoch == self.epoch and idx == 0:
            raise KeyboardInterrupt


# ------------------------------------------------------------------------------------- category expansion
def test_all_expands_to_the_given_categories_and_leaves_the_rest() -> None:
    overrides = ["method=rd", "data=visa", "data.category=all", "seed=0,1"]
    expanded = sweep.expand_all_categories(overrides, lambda: ["candle", "pcb1", "odd name"])
    assert expanded == ["method=rd", "data=visa", "data.category=candle,pcb1,'odd name'", "seed=0,1"]
    listed = ["data.category=candle,pcb1"]
    assert sweep.expand_all_categories(listed, lambda: pytest.fail("not needed")) == listed
    with pytest.raises(sweep.SweepError, match="no categories"):
        sweep.expand_all_categories(["data.category=all"], list)


def test_all_uses_the_data_modules_categories(tmp_path: Path) -> None:
    cfg = compose_config(["data=synthetic"], tmp_path)
    assert sweep.benchmark_categories(cfg, []) == list(SYNTHETIC_CATEGORIES)
    write_mvtec(tmp_path / "mvtec", ("cable", "bottle"), n_train=1, n_test_good=1, n_per_defect=1)
    cfg = compose_config(["data=mvtec", f"data.root={tmp_path / 'mvtec'}"], tmp_path)
    assert sweep.benchmark_categories(cfg, []) == ["bottle", "cable"]
    empty = compose_config(["data=mvtec", f"data.root={tmp_path / 'nothing'}"], tmp_path)
    with pytest.raises(sweep.SweepError, match="no mvtec categories"):
        sweep.benchmark_categories(empty, [])
    with pytest.raises(sweep.SweepError, match="one sweep per benchmark"):
        sweep.benchmark_categories(cfg, ["data=mvtec,visa", "data.category=all"])


def test_all_without_multirun_says_how(tmp_path: Path) -> None:
    cfg = compose_config(["data.category=all", "logger=csv"], tmp_path)
    with pytest.raises(ValueError, match="add -m"):
        run(cfg)


# ------------------------------------------------------------------------------------- tables
def _result(column: str, category: str, seed: int, auroc: float, benchmark: str = "mvtec", size: int = 256):
    protocol = {
        "benchmark": benchmark,
        "image_size": size,
        "interpolation": "bilinear",
        "teacher": {"backbone": "wide_resnet50_2.tv_in1k", "weights": "hub"},
        "checkpoint_policy": "last",
        "aupro": "pixel_aupro = standard MVTec AU-PRO, FPR <= 0.3 over the whole test set",
    }
    metrics = {"image_auroc": auroc, "pixel_auroc": auroc / 2, "pixel_aupro": auroc / 4}
    return RunResult(column, category, seed, metrics, protocol)


def test_tables_put_methods_side_by_side_per_benchmark(tmp_path: Path) -> None:
    results = [
        _result("RD", "bottle", 0, 0.9),
        _result("RD", "bottle", 1, 0.8),
        _result("RD", "cable", 0, 0.6),
        _result("RD", "cable", 1, 0.7),
        _result("DSKD", "bottle", 0, 1.0, size=128),
        _result("DSKD", "cable", 0, 0.5, size=128),
        _result("RD", "candle", 0, 0.4, benchmark="visa"),
    ]
    text = markdown(results, title="t")
    assert text.count("| category | RD | DSKD |") == 3  # mvtec: one table per metric, methods as columns
    assert "## mvtec" in text and "## visa" in text and "| candle | 40.0 |" in text
    assert "| bottle | 85.0 ± 7.1 | 100.0 |" in text and "| mean | 75.0 ± 0.0 | 75.0 |" in text
    assert "Per column: RD: 256 px; DSKD: 128 px." in text and "checkpoint policy last" in text
    combined = markdown(results, layout="combined")
    assert "| bottle | 85.0 ± 7.1 / 42.5 ± 3.5 / 21.3 ± 1.8 | 100.0 / 50.0 / 25.0 |" in combined

    rows = table_rows(results)
    means = {(r["benchmark"], r["method"]): r for r in rows if r["category"] == "mean"}
    assert means[("mvtec", "RD")]["image_auroc"] == pytest.approx(0.75)
    assert means[("mvtec", "DSKD")]["image_size"] == 128 and means[("visa", "RD")]["seeds"] == 1

    # A method lacking a category gets no mean (it would not be comparable).
    partial = table_rows([*results, _result("STFPM", "bottle", 0, 0.9)])
    assert math.isnan(next(r["image_auroc"] for r in partial if r["method"] == "STFPM" and r["category"] == "mean"))
    write_tables(results, tmp_path / "out" / "results", missing=["mvtec/screw/rd/seed0"])
    with (tmp_path / "out" / "results.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["benchmark"], r["method"], r["category"]) for r in written][-3:] == [
        ("mvtec", "DSKD", "mean"),
        ("visa", "RD", "candle"),
        ("visa", "RD", "mean"),
    ]
    assert written[0]["teacher_weights"] == "hub" and written[0]["aupro"] == "standard, FPR<=0.3"
    assert "Not finished (1): mvtec/screw/rd/seed0" in (tmp_path / "out" / "results.md").read_text()


def test_report_names_folders_as_columns(tmp_path: Path, capsys) -> None:
    for name, auroc in (("a", 0.9), ("b", 0.7)):
        run_dir = tmp_path / name / "mvtec" / "bottle" / "rd" / "seed0"
        run_dir.mkdir(parents=True)
        summary = {"method": "rd", "seed": 0, "data": {"benchmark": "mvtec", "category": "bottle"}}
        summary["metrics"] = {"image_auroc": auroc, "pixel_auroc": auroc, "pixel_aupro": auroc}
        (run_dir / "metrics.json").write_text(json.dumps(summary))
    main([f"RD 256={tmp_path / 'a'}", f"RD 128={tmp_path / 'b'}", "--out", str(tmp_path / "both")])
    out = capsys.readouterr().out
    assert "| category | RD 256 | RD 128 |" in out and "| bottle | 90.0 | 70.0 |" in out
    assert (tmp_path / "both.csv").is_file() and len(find_runs([tmp_path])) == 2


# ------------------------------------------------------------------------------------- launchers, GPUs
def _hydra_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_launcher_configs_compose() -> None:
    slurm = _hydra_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.gpus_per_node, slurm.tasks_per_node, slurm.partition) == (1, 1, "gpu")
    assert slurm.timeout_min > 0 and slurm.submitit_folder.endswith("/.submitit/%j")
    assert _hydra_config(["hydra/launcher=slurm"]).hydra.launcher.partition is None  # the user's to set
    gpus = _hydra_config(["hydra/launcher=gpus"]).hydra
    assert gpus.launcher._target_.endswith("JoblibLauncher") and gpus.launcher.n_jobs >= 1
    assert gpus.job.env_set[GPU_PER_JOB_ENV] == "1"
    ddp = _hydra_config(["trainer=ddp"]).trainer
    assert ddp.strategy.start_method in ("spawn", "fork")


def test_gpu_leases_are_exclusive(tmp_path: Path) -> None:
    with gpus.gpu_lease(tmp_path, count=2, first=1) as first, gpus.gpu_lease(tmp_path, count=2, first=1) as second:
        assert (first, second) == (1, 0)
        with pytest.raises(TimeoutError), gpus.gpu_lease(tmp_path, count=2, poll_seconds=0.01, timeout=0.05):
            pass
    with gpus.gpu_lease(tmp_path, count=2, first=1) as again:
        assert again == 1  # released


def test_each_parallel_job_gets_its_own_gpu(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gpus, "visible_gpus", lambda: 2)
    cfg = compose_config([], tmp_path)
    with gpus.job_gpu(cfg):
        assert (cfg.trainer.devices, cfg.trainer.accelerator) == (1, "auto")  # not under hydra/launcher=gpus
    monkeypatch.setenv(GPU_PER_JOB_ENV, "1")
    first, second = compose_config([], tmp_path), compose_config([], tmp_path)
    with gpus.job_gpu(first), gpus.job_gpu(second):
        assert (first.trainer.devices, second.trainer.devices) == ([0], [1])
        assert first.trainer.accelerator == "gpu"
    two = compose_config(["trainer.devices=2"], tmp_path)
    with pytest.raises(sweep.SweepError, match="one GPU"), gpus.job_gpu(two):
        pass


# ------------------------------------------------------------------------------------- sweeps end to end
def test_joblib_sweep_writes_results_table_and_wandb_summary(tmp_path: Path) -> None:
    """Two categories of the embedded benchmark, two parallel jobs, W&B offline."""
    categories = ["weave", "hexnut"]
    result = _kdad(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *SYNTHETIC,
            f"data.root={tmp_path}/synthetic",
            f"data.category={','.join(categories)}",
            *TINY,
            "logger=wandb",
            "tag=grp7",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sweep_dir = tmp_path / "runs" / "grp7"
    text = (sweep_dir / "results.md").read_text()
    for heading in ("I-AUROC", "P-AUROC", "AUPRO@0.3 (standard)"):
        assert _table(text, heading) == ["hexnut", "weave", "mean"]
    assert "synthetic, 64 px, bilinear resize, teacher tf_efficientnet_lite0" in text
    with (sweep_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["category"] for r in rows] == ["hexnut", "weave", "mean"]
    mean = sum(float(r["image_auroc"]) for r in rows[:2]) / 2
    assert float(rows[2]["image_auroc"]) == pytest.approx(mean)
    # Jobs used the usual run folders, not multirun/<num>.
    for category in categories:
        run_dir = sweep_dir / "synthetic" / category / "rd" / "seed0"
        assert (run_dir / "metrics.json").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
        assert (run_dir / "review_cases.npz").is_file()
        offline = list((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 1  # one W&B run per category, finished before the next job
        # Name and group are length-prefixed strings in the run record (paths hold them after a "/").
        name = f"synthetic/{category}/rd/seed0".encode()
        log = next(offline[0].glob("*.wandb")).read_bytes()
        assert bytes([len(name)]) + name in log and b"\x04grp7" in log
    assert not (sweep_dir / "multirun").exists()
    # The sweep-level summary run: the table (2 categories + mean) and overlays as media.
    (summary,) = (sweep_dir / "wandb").glob("offline-run-*")
    media = summary / "files" / "media"
    table = json.loads(next((media / "table").rglob("*.table.json")).read_text())
    assert [row[table["columns"].index("category")] for row in table["data"]] == ["hexnut", "weave", "mean"]
    assert len(list((media / "images").rglob("*.png"))) == 2 * 2
    assert b"sweep-summary" in next(summary.glob("*.wandb")).read_bytes()


def test_interrupted_sweep_resumes_only_the_unfinished_category(tmp_path: Path) -> None:
    root = tmp_path / "mvtec"
    write_mvtec(root, ("bottle", "cable"), n_train=4, n_test_good=2, n_per_defect=1)
    args = [
        "-m",
        "data=mvtec",
        f"data.root={root}",
        "data.category=all",
        *TINY,
        "trainer.max_epochs=2",
        "logger=csv",
        "tag=resume",
    ]
    kill = ["+callbacks.kill._target_=test_sweeps.InterruptIn", "+callbacks.kill.run_dir=${run_dir}"]
    killed = _kdad([*args, *kill, "+callbacks.kill.category=cable"], tmp_path)
    assert killed.returncode != 0
    bottle, cable = (tmp_path / "runs/resume/mvtec" / c / "rd/seed0" for c in ("bottle", "cable"))
    assert (bottle / "metrics.json").is_file() and not (cable / "metrics.json").exists()
    assert (cable / "checkpoints/last.ckpt").is_file()
    finished_at = (bottle / "metrics.json").stat().st_mtime_ns

    resumed = _kdad(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    output = resumed.stdout + resumed.stderr
    assert output.count("Resuming training from") == 1 and "Run already finished" in output
    assert (bottle / "metrics.json").stat().st_mtime_ns == finished_at
    assert json.loads((cable / "metrics.json").read_text())["epochs_trained"] == 2
    assert _table((tmp_path / "runs/resume/results.md").read_text(), "I-AUROC") == ["bottle", "cable", "mean"]


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path: Path) -> None:
    result = _kdad(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=20",
            *SYNTHETIC,
            f"data.root={tmp_path}/synthetic",
            "data.category=weave,hexnut",
            *TINY,
            "logger=csv",
            "tag=submitit",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sweep_dir = tmp_path / "runs" / "submitit"
    assert _table((sweep_dir / "results.md").read_text(), "I-AUROC") == ["hexnut", "weave", "mean"]
    assert len(list((sweep_dir / ".submitit").rglob("*_result.pkl"))) == 2
    assert (sweep_dir / "synthetic/weave/rd/seed0/metrics.json").is_file()


# ------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_on_two_processes_matches_one_process(tmp_path: Path) -> None:
    """trainer=ddp (spawned workers, gloo on CPU): 2 processes x 4 images against 1 process x 8 images, one step
    per epoch, so both see the same 8 images per step. Tolerance: BatchNorm statistics are per process (4 images
    vs 8: SyncBatchNorm needs CUDA), the only difference in the computation; measured here |Δ| ≈ 0.01 pixel
    AUROC, ≈ 0.06 image AUROC and AUPRO on this 12-image test set, where one image pair moves AUROC by 1/32."""
    root = tmp_path / "mvtec"
    write_mvtec(root, ("bottle",), n_train=8, n_test_good=4, n_per_defect=4)
    # threshold=f1_test: no calibration hold-out, so both runs train on all 8 images (the premise above)
    base = ["data=mvtec", f"data.root={root}", "data.category=bottle", *TINY, "logger=csv", "review_cases=0"]
    base.append("threshold=f1_test")
    single = run(compose_config([*base, "data.batch_size=8", "tag=single"], tmp_path), quiet=True)
    ddp_overrides = [*base, "data.batch_size=4", "tag=ddp", "trainer=ddp", "trainer.accelerator=cpu"]
    ddp_cfg = compose_config([*ddp_overrides, "trainer.devices=2"], tmp_path)
    ddp = run(ddp_cfg, quiet=True)
    for metric, tolerance in (("pixel_auroc", 0.03), ("image_auroc", 0.1), ("pixel_aupro", 0.1)):
        assert ddp["metrics"][metric] == pytest.approx(single["metrics"][metric], abs=tolerance), metric
    test_size = ddp["data"]["counts"]["test"]["total"]
    assert ddp["test_images"] == test_size == 4 + 2 * 4  # no padding, no duplicates
    run_dir = Path(ddp_cfg.run_dir)
    assert len((run_dir / "scores.csv").read_text().strip().splitlines()) == 1 + test_size
    assert ddp["epochs_trained"] == 1 and "one device" in ddp["test_devices"]
    state = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 1  # 2 processes x 4 images: the 8 training images in one step
    # The main process tested the weights the workers trained (those in last.ckpt).
    evaluated = run(
        compose_config([*base, "tag=eval", "train=false", f"ckpt_path={run_dir}/checkpoints/last.ckpt"], tmp_path),
        quiet=True,
    )
    for metric, value in ddp["metrics"].items():
        assert evaluated["metrics"][metric] == pytest.approx(value, abs=1e-5), metric


def test_ddp_refuses_test_metric_selection_and_script_relaunch(tmp_path: Path) -> None:
    cpu2 = ["trainer.accelerator=cpu", "trainer.devices=2", *TINY, "logger=csv"]
    with pytest.raises(ValueError, match="per process on a shard"):
        run(compose_config(["trainer=ddp", "checkpoint=best_on_test", *cpu2], tmp_path))
    # Lightning's script-relaunching DDP inside a multirun would start the sweep again in every process.
    relaunching = compose_config(["+trainer.strategy=ddp", *cpu2], tmp_path)
    hydra_node = HydraConfig.instance().cfg.hydra
    with read_write(hydra_node):
        hydra_node.mode = RunMode.MULTIRUN
    with pytest.raises(ValueError, match="restarts the whole sweep"):
        run(relaunching)
