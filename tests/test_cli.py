"""What a user sees: one-message errors with exit status 2 (kdad.runner.cli), and run folders reused only by the
configuration they hold (kdad.runner.train.check_run_folder). No training here: run folders are written by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_config
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf.errors import ConfigKeyError

from kdad.data.errors import DatasetError
from kdad.errors import ConfigError
from kdad.runner.cli import user_error_message
from kdad.runner.results import CONFIG_NAME, resolved_config, write_config
from kdad.runner.train import RunFolderError, config_differences, run

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.image_size=64", "logger=csv"]
ONE_EPOCH = [*SMALL, "trainer.max_epochs=1"]
METRICS = {"image_auroc": 0.75, "pixel_auroc": 0.5}


def _finished(cfg, with_config: bool = True) -> Path:
    """A run folder as a finished run of ``cfg`` leaves it (config and metrics.json; nothing was trained)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    if with_config:
        write_config(run_dir, cfg)
    summary = {"method": "rd", "data": {"benchmark": "synthetic"}, "checkpoint_policy": "last", "metrics": METRICS}
    (run_dir / "metrics.json").write_text(json.dumps(summary))
    return run_dir


def _cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    base = [
        f"paths.runs_dir={tmp_path}/runs",
        f"data.cache_dir={tmp_path}/resized",
        "trainer.enable_progress_bar=false",
    ]
    return subprocess.run(
        [sys.executable, "-m", "kdad.run", *args, *base],  # args first: they may start with -m
        cwd=REPO,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------------- errors
def test_user_errors_are_found_inside_hydra_wrappers() -> None:
    missing = DatasetError("mvtec dataset root /nowhere does not exist")
    wrapped = InstantiationException("Error in call to target 'kdad.data.MVTecDataModule'")
    wrapped.__cause__ = missing
    assert user_error_message(wrapped) == str(missing)
    assert user_error_message(ConfigError("logger.mode must be auto")) == "logger.mode must be auto"
    composition = ConfigCompositionException("Could not override 'data.nokey'.")
    composition.__cause__ = ConfigKeyError("Key 'nokey' is not in struct")
    assert user_error_message(composition) == "Could not override 'data.nokey'.\nKey 'nokey' is not in struct"
    # Anything else is a bug: it keeps its traceback, also behind Hydra's wrapper.
    assert user_error_message(ValueError("shapes differ")) is None
    bug = InstantiationException("Error in call to target 'kdad.methods.rd.ReverseDistillation'")
    bug.__cause__ = RuntimeError("size mismatch")
    assert user_error_message(bug) is None


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_root", "kdad: error: mvtec dataset root"),
        ("unknown_option", "kdad: error: In 'config': Could not find 'method/nope'"),
        ("other_configuration", "kdad: error: run folder"),
    ],
)
def test_cli_reports_user_errors_in_one_message_with_status_2(case: str, expected: str, tmp_path: Path) -> None:
    args = {
        "missing_root": ["data=mvtec", f"data.root={tmp_path}/nowhere", "logger=none"],
        "unknown_option": ["method=nope"],
        "other_configuration": [*SMALL, "trainer.max_epochs=2"],
    }[case]
    if case == "other_configuration":
        _finished(compose_config(ONE_EPOCH, tmp_path))
    result = _cli(args, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr and "Traceback" not in result.stdout + result.stderr
    if case == "other_configuration":
        assert "trainer.max_epochs: 1 -> 2" in result.stderr


def test_hydra_full_error_shows_the_traceback(tmp_path: Path) -> None:
    result = _cli(["data=mvtec", f"data.root={tmp_path}/nowhere", "logger=none"], tmp_path, HYDRA_FULL_ERROR="1")
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "DatasetError: mvtec dataset root" in result.stderr


def test_failing_multirun_job_lets_the_others_run_then_reports(tmp_path: Path) -> None:
    result = _cli(["-m", "data.category=nope1,nope2", "logger=none"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "kdad: error: unknown synthetic category 'nope1'" in output  # logged by the job, the sweep goes on
    assert "kdad: error: unknown synthetic category 'nope2'" in output
    assert result.stderr.strip().splitlines()[-1].startswith("kdad: error: unknown synthetic category 'nope1'")


# ------------------------------------------------------------------------------------- run folders
def test_finished_run_of_another_configuration_is_refused(tmp_path: Path) -> None:
    run_dir = _finished(compose_config(ONE_EPOCH, tmp_path))
    stored = (run_dir / CONFIG_NAME).read_text()
    with pytest.raises(RunFolderError) as refused:
        run(compose_config([*SMALL, "trainer.max_epochs=2", "data.batch_size=8"], tmp_path))
    message = str(refused.value)
    assert "holds a finished run of another configuration" in message
    assert "  trainer.max_epochs: 1 -> 2\n" in message and "  data.batch_size: 16 -> 8\n" in message
    assert "overwrite=true" in message and "tag=<name>" in message
    assert (run_dir / CONFIG_NAME).read_text() == stored  # the folder still describes the run it holds


def test_refused_command_leaves_the_folders_hydra_record_alone(tmp_path: Path) -> None:
    """Hydra's .hydra/ files are written by kdad once a run starts, not by Hydra before the run-folder check."""
    run_dir = _finished(compose_config(ONE_EPOCH, tmp_path))
    record = run_dir / ".hydra"
    record.mkdir()
    (record / "overrides.yaml").write_text("- trainer.max_epochs=1\n")
    result = _cli([*SMALL, "trainer.max_epochs=2"], tmp_path)
    assert result.returncode == 2 and "holds a finished run of another configuration" in result.stderr
    assert [p.name for p in record.iterdir()] == ["overrides.yaml"]
    assert (record / "overrides.yaml").read_text() == "- trainer.max_epochs=1\n"


def test_finished_run_is_shown_whatever_the_logger(tmp_path: Path, capsys) -> None:
    _finished(compose_config(ONE_EPOCH, tmp_path))
    shown = run(compose_config([*ONE_EPOCH, "logger=none", "review_cases=0", "speed.channels_last=false"], tmp_path))
    assert shown["metrics"] == METRICS
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "### rd on synthetic/weave (finished earlier)"
    assert lines[-2].startswith("checkpoint policy: last (") and lines[-1].startswith("run folder: ")


def test_resume_of_another_configuration_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(ONE_EPOCH, tmp_path)
    run_dir = Path(cfg.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    write_config(run_dir, cfg)
    (run_dir / "checkpoints/last.ckpt").write_bytes(b"weights of an interrupted run")
    with pytest.raises(RunFolderError, match=r"unfinished run \(checkpoints/last.ckpt\)[^\n]*\n  method\.optimizer"):
        run(compose_config([*ONE_EPOCH, "method.optimizer.lr=0.5"], tmp_path))
    assert (run_dir / "checkpoints/last.ckpt").read_bytes() == b"weights of an interrupted run"


def test_run_folder_without_stored_config_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(ONE_EPOCH, tmp_path)
    _finished(cfg, with_config=False)
    with pytest.raises(RunFolderError, match=f"no readable {CONFIG_NAME}"):
        run(cfg)


def test_config_comparison_ignores_locations_devices_and_reporting(tmp_path: Path) -> None:
    stored = resolved_config(compose_config(ONE_EPOCH, tmp_path))
    elsewhere = [*ONE_EPOCH, "paths.cache_dir=/elsewhere/cache", "trainer.devices=[3]", "logger=none"]
    moved = compose_config([*elsewhere, "trainer.log_every_n_steps=1", "speed.compile=true"], tmp_path / "other")
    assert config_differences(stored, resolved_config(moved)) == {}
    workers = compose_config([*ONE_EPOCH, "data.num_workers=2"], tmp_path)
    assert config_differences(stored, resolved_config(workers)) == {"data.num_workers": ("auto", 2)}
