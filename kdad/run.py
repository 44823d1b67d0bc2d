"""Entry point: ``python -m kdad.run method=rd data=mvtec data.root=/path data.category=bottle``.

Builds data, method, callbacks, logger and trainer from the Hydra config, trains, tests with the checkpoint
the policy names, and writes the run folder: resolved config, checkpoints/, metrics.json, scores.csv and
overlays/. Run folders are deterministic (tag/benchmark/category/method/seed), so re-running an interrupted
command resumes from its last checkpoint, and re-running a finished one prints its results (``overwrite=true``
trains again).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from kdad.loggers import finish_wandb
from kdad.methods.base import AnomalyModule
from kdad.results import format_table, per_defect_scores, write_metrics, write_overlays, write_scores
from kdad.review import save_review_cases
from kdad.speed import apply_speed
from kdad.sweep import ALL_CATEGORIES, job_gpu

log = logging.getLogger("kdad")

# Expected in kdad, not a problem: frozen teachers stay in eval mode while the student trains.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

CHECKPOINT_NOTES = {
    "last": "weights after the final epoch (RD4AD protocol; no selection)",
    "val_loss": "lowest loss on a held-out normal-only validation split (STFPM protocol)",
    "best_on_test": "epoch with the best TEST metrics: paper replication only, optimistic (test-set selection)",
}


def build_modules(cfg: DictConfig, verbose: bool = True) -> tuple[Any, AnomalyModule]:
    """Seeded data module and LightningModule of a run config, with the run's matmul precision and speed options."""
    L.seed_everything(cfg.seed, workers=True, verbose=verbose)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    datamodule = hydra.utils.instantiate(cfg.data)
    module: AnomalyModule = hydra.utils.instantiate(cfg.method)
    apply_speed(module, **(cfg.get("speed") or {}))
    return datamodule, module


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]


def build_logger(cfg: DictConfig) -> Logger | bool:
    if cfg.get("logger") is None:
        return False
    return hydra.utils.instantiate(cfg.logger)


def _checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def resume_checkpoint(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def _protocol(cfg: DictConfig, datamodule: Any, module: AnomalyModule, test_ckpt: str) -> dict[str, Any]:
    teacher = cfg.get("teacher") or {}
    return {
        "method": module.name,
        "variant": cfg.get("variant") or module.name,
        "data": datamodule.describe(),
        "teacher": {"backbone": teacher.get("backbone"), "weights": teacher.get("weights")},
        "checkpoint_policy": cfg.checkpoint.policy,
        "checkpoint_note": CHECKPOINT_NOTES[cfg.checkpoint.policy],
        "checkpoint_used": test_ckpt,
        "aupro": f"pixel_aupro = standard MVTec AU-PRO, FPR <= {module.aupro_limit} over the whole test set, "
        "normalised by the limit; pixel_aupro_per_image = RD4AD-family per-image PRO (not comparable)",
        "scores": "raw anomaly scores, no sigmoid; image score = map reduction of the method",
        "seed": cfg.seed,
    }


def _finished_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run(cfg: DictConfig, quiet: bool = False) -> dict[str, Any]:
    """Train and/or test one configuration; returns the metrics.json content (``quiet``: print nothing)."""
    say = (lambda *_: None) if quiet else print
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite and cfg.train:
        for stale in ("metrics.json", "scores.csv", "checkpoints", "overlays"):
            target = run_dir / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if str(cfg.data.category) == ALL_CATEGORIES:
        raise ValueError("data.category=all runs one job per category: add -m (python -m kdad.run -m ...)")
    finished = _finished_summary(run_dir)
    if finished is not None and cfg.train:
        log.info("Run already finished: %s (overwrite=true trains again)", run_dir / "metrics.json")
        say(format_table(finished["metrics"], f"{finished['method']} (finished earlier, {run_dir})"))
        return finished
    if not cfg.train and not cfg.ckpt_path:
        raise ValueError("train=false evaluates a checkpoint: pass ckpt_path=/path/to/checkpoint.ckpt")
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule, module = build_modules(cfg)
    logger = build_logger(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=logger)
    _check_strategy(trainer)
    _check_distributed_validation(cfg, trainer)
    if isinstance(logger, WandbLogger):
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)

    started = time.perf_counter()
    try:
        if cfg.train:
            resume = resume_checkpoint(run_dir)
            if resume is not None:
                log.info("Resuming training from %s", resume)
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
        train_seconds = time.perf_counter() - started
        if trainer.global_rank != 0 or not cfg.test:
            return {}  # ranks > 0 of a script-launched DDP run: rank 0 tests and writes the run folder
        test_ckpt = _test_checkpoint(cfg, trainer)
        tester = _test_trainer(cfg, trainer, logger)
        tester.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
        summary = _protocol(cfg, datamodule, module, test_ckpt or "weights in memory after training")
        summary.update(
            metrics=module.test_metrics,
            per_defect=per_defect_scores(module.test_records),
            epochs_trained=_epochs_trained(trainer, run_dir),
            train_seconds=round(train_seconds, 1),
            total_seconds=round(time.perf_counter() - started, 1),
        )
        summary["test_images"] = _test_images_seen(module, datamodule)
        if tester is not trainer:
            summary["test_devices"] = "one device, full test set (after multi-process training)"
        write_scores(run_dir, module.test_records)
        overlays = write_overlays(run_dir, module.overlay_samples, module.test_records)
        _save_review_cases(cfg, run_dir, module, datamodule, tester)
        _log_results(logger, summary, overlays)
        write_metrics(run_dir, summary)
        say(format_table(module.test_metrics, f"{module.name} on {datamodule.name}/{cfg.data.category}"))
        say(f"checkpoint policy: {cfg.checkpoint.policy} ({CHECKPOINT_NOTES[cfg.checkpoint.policy]})")
        say(f"run folder: {run_dir}")
        return summary
    finally:
        finish_wandb()


def _check_strategy(trainer: L.Trainer) -> None:
    """Refuse Lightning's script-relaunching DDP inside a Hydra multirun: every rank would re-run the whole sweep
    with the original command line (Lightning issue 11300). ``trainer=ddp`` spawns its workers instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if not isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) or not HydraConfig.initialized():
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ValueError(
            "trainer.strategy=ddp re-executes the command per process, which restarts the whole sweep under -m: "
            "use trainer=ddp (spawned workers) instead"
        )


def _check_distributed_validation(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Validation metrics would be computed per process on a shard of the test set: refuse best_on_test."""
    if trainer.world_size > 1 and cfg.checkpoint.validation == "metrics":
        raise ValueError(
            f"checkpoint={cfg.checkpoint.policy} selects epochs on test metrics, which multi-process training would "
            "compute per process on a shard: train it on one device, or use checkpoint=last / val_loss"
        )


def _test_trainer(cfg: DictConfig, trainer: L.Trainer, logger: Logger | bool) -> L.Trainer:
    """The fit trainer, or after multi-process training a single-device trainer with the same settings, so the
    metrics see every test image exactly once (a DistributedSampler pads the last batch with repeated images)."""
    if trainer.world_size == 1:
        return trainer
    from lightning.pytorch.accelerators import CPUAccelerator

    devices = 1 if isinstance(trainer.accelerator, CPUAccelerator) else trainer.device_ids[:1]
    return hydra.utils.instantiate(
        cfg.trainer,
        strategy="auto",
        devices=devices,
        num_nodes=1,
        sync_batchnorm=False,
        callbacks=[],
        logger=logger,
    )


def _test_images_seen(module: AnomalyModule, datamodule: Any) -> int:
    """The number of images the metrics saw, which must be the test set's size: no image twice, none left out."""
    seen, expected = int(module.test_images_seen), len(datamodule.test_dataset)
    if seen != expected:
        raise RuntimeError(f"the test metrics saw {seen} images but the test set has {expected}")
    return seen


def _save_review_cases(
    cfg: DictConfig, run_dir: Path, module: AnomalyModule, datamodule: Any, tester: L.Trainer
) -> None:
    """The worst cases with their maps for notebooks/review.ipynb (kdad.review). Optional material: a failure
    here must not cost a finished training, so it is reported and the run folder is completed."""
    try:
        save_review_cases(
            run_dir,
            module.model,
            datamodule.test_dataset,
            module.test_records,
            int(cfg.get("review_cases", 0)),
            device=tester.strategy.root_device,
            forward_context=tester.strategy.precision_plugin.forward_context,
        )
    except Exception as exc:
        log.warning("Review cases not saved (%s: %s); the run's results are unaffected", type(exc).__name__, exc)


def _epochs_trained(trainer: L.Trainer, run_dir: Path) -> int:
    """Epochs completed; spawned DDP workers do not send their loop state back, but their last.ckpt tells."""
    last = resume_checkpoint(run_dir)
    if trainer.world_size == 1 or last is None:
        return trainer.current_epoch
    state = torch.load(last, map_location="cpu", weights_only=False)
    # Epochs whose batches all ran: written at the end of an epoch, "epoch" still holds that epoch's index.
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", state["epoch"]))


def _test_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """Which weights to test: an explicit checkpoint, the policy's best, or the weights in memory (last)."""
    if not cfg.train:
        return str(cfg.ckpt_path)
    if cfg.checkpoint.policy == "last":
        return None
    callback = _checkpoint_callback(trainer)
    if callback is None or not callback.best_model_path:
        raise RuntimeError(
            f"checkpoint policy '{cfg.checkpoint.policy}' found no best checkpoint: did validation run? "
            "(check trainer.check_val_every_n_epoch and data.val_source)"
        )
    return callback.best_model_path


def _log_results(logger: Logger | bool, summary: dict[str, Any], overlays: list[Path]) -> None:
    if not isinstance(logger, WandbLogger):
        return
    run = logger.experiment
    for key, value in summary["metrics"].items():
        run.summary[f"test/{key}"] = value
    run.summary["checkpoint_policy"] = summary["checkpoint_policy"]
    metrics = summary["metrics"]
    logger.log_table(key="test/results", columns=list(metrics), data=[[metrics[k] for k in metrics]])
    if overlays:
        logger.log_image(key="test/overlays", images=[str(p) for p in overlays], caption=[p.stem for p in overlays])


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    with job_gpu(cfg):  # hydra/launcher=gpus: this job trains on a GPU of its own
        summary = run(cfg)
    metrics = summary.get("metrics", {})
    return metrics.get("image_auroc")


if __name__ == "__main__":
    main()
