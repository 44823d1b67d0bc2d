"""One run: what ``python -m kdad.run method=rd data=mvtec data.root=/path data.category=bottle`` does.

Builds data, method, callbacks, logger and trainer from the Hydra config, trains, tests with the checkpoint
the policy names, and writes the run folder: resolved config, checkpoints/, metrics.json, scores.csv and
overlays/. Run folders are deterministic (tag/benchmark/category/method/seed), so re-running an interrupted
command resumes from its last checkpoint, and re-running a finished one prints its results (``overwrite=true``
trains again); either only when the folder's stored configuration matches the command's (``REUSE_IGNORED_KEYS``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from kdad.data.unified import build_datamodule, check_unified_categories
from kdad.errors import ConfigError
from kdad.methods.base import AnomalyModule
from kdad.metrics import DEFAULT_FPR
from kdad.runner.loggers import finish_wandb, offline_run_hint, quiet_lightning_tips
from kdad.runner.results import (
    CONFIG_NAME,
    LAST_CHECKPOINT,
    METRICS_NAME,
    OPTIMISTIC_THRESHOLD_POLICIES,
    TESTED_IN_MEMORY,
    format_category_table,
    format_table,
    per_defect_scores,
    read_config,
    read_metrics,
    resolved_config,
    write_config,
    write_hydra_record,
    write_metrics,
    write_overlays,
    write_scores,
)
from kdad.runner.review import save_review_cases
from kdad.runner.speed import apply_speed
from kdad.runner.sweep import ALL_CATEGORIES

log = logging.getLogger("kdad")

# Expected in kdad, not a problem: frozen teachers stay in eval mode while the student trains.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")

CHECKPOINT_NOTES = {
    "last": "weights after the final epoch (RD4AD protocol; no selection)",
    "val_loss": "lowest loss on a held-out normal-only validation split (STFPM protocol)",
    "best_on_test": "epoch with the best TEST metrics: paper replication only, optimistic (test-set selection)",
}
THRESHOLD_NOTES = {
    "normal_quantile": "score quantile at the target FPR on normal images never trained on (no defect image, no test "
    "label used)",
    "f1_val": "F1-optimal on the labelled validation folder threshold.val_dir",
    "f1_test": "F1-optimal on the TEST set: benchmark reporting only, optimistic (test-set selection)",
    "manual": "given by the user (threshold.image / threshold.pixel)",
}


def build_modules(cfg: DictConfig, verbose: bool = True) -> tuple[Any, AnomalyModule]:
    """Seeded data module and LightningModule of a run config, with the run's matmul precision and speed options."""
    L.seed_everything(cfg.seed, workers=True, verbose=verbose)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    datamodule = build_datamodule(cfg.data)  # data.unified=true: one module over the categories (kdad.data.unified)
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
    last = run_dir / LAST_CHECKPOINT
    return last if last.is_file() else None


def _protocol(cfg: DictConfig, datamodule: Any, module: AnomalyModule, test_ckpt: str) -> dict[str, Any]:
    teacher = cfg.get("teacher") or {}
    unified = bool(cfg.data.get("unified", False))
    return {
        "method": module.name,
        # a unified run's column in results tables stays apart from the same method's per-category runs
        "variant": cfg.get("variant") or (f"{module.name} unified" if unified else module.name),
        "unified": unified,
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


# Keys of the resolved config that do not change a run's results: a run folder is reused (its finished run shown,
# its unfinished run resumed) whatever their values; every other key must match the folder's config_resolved.yaml.
# fnmatch patterns over dotted keys, each covering the keys below it. data.num_workers is compared: the workers
# draw the pseudo-anomalies, so their number changes the training images (README, "Performance").
REUSE_IGNORED_KEYS: tuple[str, ...] = (
    # what this command does, not what the run computes
    "train",
    "test",
    "overwrite",
    "ckpt_path",
    # where things live on this machine (other values under run_dir or paths.* are compared relative to them)
    "run_dir",
    "paths",
    "data.cache_dir",
    "*.weights_cache_dir",
    "trainer.default_root_dir",
    # what is logged and kept besides the metrics
    "logger",
    "review_cases",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    # kdad's callbacks write checkpoints and catch Ctrl-C (which checkpoint is tested is checkpoint.*, compared);
    # one added on the command line counts as a tool of this invocation (an interruption, a monitor)
    "callbacks",
    # how images are held and networks execute, never what they compute
    "data.preload",
    "data.pin_memory",
    "speed",
    "hydra",
    # the per-benchmark foreground tables: the one a run uses is compared where it is used (data.foreground,
    # synthesis.foreground)
    "foreground",
)
REUSE_WAYS_OUT = (
    "Train this configuration there with overwrite=true (replaces the run it holds), or in a folder of its own "
    "with tag=<name>."
)
_ABSENT = object()


class RunFolderError(ConfigError):
    """The run folder holds a run of another (or an unknown) configuration: reusing it would mix two runs."""


def check_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a run folder whose finished or resumable run was made with another configuration.

    Otherwise a command shows or resumes whatever run its folder holds: ``trainer.max_epochs=1`` once, then the
    default command prints that 1-epoch run's metrics as the default run's. The comparison is with the folder's
    config_resolved.yaml, before this command rewrites it. A folder holding a run without a readable stored
    config (deleted by hand) is refused as well: its configuration is unknown. Evaluating into the folder
    (train=false) follows the same rule, as it would replace the results the folder holds.
    """
    held = _held_run(run_dir)
    if held is None:
        return
    stored = read_config(run_dir)
    if stored is None:
        raise RunFolderError(
            f"run folder {run_dir} holds {held} but no readable {CONFIG_NAME}, so whether it was made with this "
            f"configuration is unknown. {REUSE_WAYS_OUT}"
        )
    differences = config_differences(stored, resolved_config(cfg))
    if differences:
        header = f"run folder {run_dir} holds {held} of another configuration ({CONFIG_NAME} -> this command):"
        lines = [f"  {key}: {_show(old)} -> {_show(new)}" for key, (old, new) in differences.items()]
        raise RunFolderError("\n".join([header, *lines, REUSE_WAYS_OUT]))


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored value, current value)}`` for the dotted keys that differ, leaving out REUSE_IGNORED_KEYS.

    Paths are compared relative to each config's run_dir and paths.* (a moved cache or runs folder holds the same
    run) and device lists by their length (a sweep job may be given another GPU of the machine).
    """
    old, new = _comparable(stored), _comparable(current)
    keys = sorted(k for k in old.keys() | new.keys() if not _reuse_ignores(k))
    pairs = {k: (old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys}
    return {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}


def _held_run(run_dir: Path) -> str | None:
    if (run_dir / METRICS_NAME).is_file():
        return "a finished run"
    if resume_checkpoint(run_dir) is not None:
        return "an unfinished run (checkpoints/last.ckpt)"
    return None


def _reuse_ignores(key: str) -> bool:
    return any(fnmatchcase(key, p) or fnmatchcase(key, f"{p}.*") for p in REUSE_IGNORED_KEYS)


def _flatten(node: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    named = {"run_dir": config.get("run_dir"), **{f"paths.{k}": v for k, v in (config.get("paths") or {}).items()}}
    places = [(str(v).rstrip("/"), f"${{{k}}}") for k, v in named.items() if isinstance(v, str) and v.strip("/")]
    places.sort(key=lambda place: len(place[0]), reverse=True)  # the run folder before the runs folder holding it
    return {key: _comparable_value(key, value, places) for key, value in _flatten(config)}


def _comparable_value(key: str, value: Any, places: list[tuple[str, str]]) -> Any:
    if key == "trainer.devices" and isinstance(value, list):
        return len(value)
    if isinstance(value, str):
        for path, reference in places:
            if value == path or value.startswith(f"{path}/"):
                return reference + value[len(path) :]
    return value


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, default=str)


def _check_options(cfg: DictConfig) -> None:
    # several categories need data.unified=true, and data.unified=true several categories (kdad.data.unified)
    check_unified_categories(cfg.data.category, bool(cfg.data.get("unified", False)))
    if str(cfg.data.category) == ALL_CATEGORIES and not cfg.data.get("unified", False):
        raise ConfigError(
            "data.category=all runs one job per category: add -m (python -m kdad.run -m ...), or train one model "
            "on all of them with data.unified=true"
        )
    if not cfg.train and not cfg.ckpt_path:
        raise ConfigError("train=false evaluates a checkpoint: pass ckpt_path=/path/to/checkpoint.ckpt")


def _remove_outputs(run_dir: Path) -> None:
    for stale in (METRICS_NAME, "scores.csv", "checkpoints", "overlays"):
        target = run_dir / stale
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def results_report(summary: Mapping[str, Any], title: str, run_dir: Path) -> str:
    """The lines a run ends with: the metrics table, the checkpoint and threshold policies and the run folder."""
    policy = summary["checkpoint_policy"]
    note = summary.get("checkpoint_note") or CHECKPOINT_NOTES.get(policy, "")
    threshold_policy = summary.get("threshold_policy")
    if summary.get("per_category"):
        table = format_category_table(summary["per_category"], summary["metrics"], title, threshold_policy)
    else:
        table = format_table(summary["metrics"], title, threshold_policy)
    lines = [table, f"checkpoint policy: {policy} ({note})"]
    lines += threshold_lines(summary)
    return "\n".join([*lines, f"run folder: {run_dir}"])


def threshold_lines(summary: Mapping[str, Any]) -> list[str]:
    """The threshold policy, the thresholds, and the estimate's caveat when it has one (few calibration images)."""
    policy = summary.get("threshold_policy")
    thresholds = summary.get("thresholds")
    if policy and summary.get("per_category") and not thresholds:
        note = summary.get("threshold_note") or THRESHOLD_NOTES.get(policy, "")
        lines = [f"threshold policy: {policy} ({note}), per category (NOK iff score > its category's threshold):"]
        for category, part in summary["per_category"].items():
            values = [
                f"{level} {record['value']:.6g}" for level, record in (part.get("thresholds") or {}).items() if record
            ]
            count = (part.get("thresholds") or {}).get("image", {}).get("n")
            calibrated = f" ({count} normal images)" if policy == "normal_quantile" and count else ""
            lines.append(f"  {category}: {', '.join(values)}{calibrated}")
        return lines
    if not policy or not thresholds:
        return []
    note = summary.get("threshold_note") or THRESHOLD_NOTES.get(policy, "")
    values = [f"{level} {record['value']:.6g}" for level, record in thresholds.items() if record]
    lines = [f"threshold policy: {policy} ({note}): {', '.join(values)} (NOK iff score > threshold)"]
    image = thresholds["image"]
    if policy == "normal_quantile":
        lines.append(
            f"  calibrated on {image['n']} normal images ({summary.get('threshold_calibration', {}).get('source')}); "
            f"FPR there {image['achieved_fpr']:.3g}, true FPR <= {image['fpr_upper_95']:.3g} (95 % bound)"
        )
        if image.get("note"):
            lines.append(f"  note: {image['note']}")
    return lines


def _title(summary: Mapping[str, Any], cfg: DictConfig) -> str:
    data = summary.get("data") or {}
    if data.get("unified"):
        return (
            f"{summary['method']} unified on {data.get('benchmark', '')} ({len(data.get('categories', []))} categories)"
        )
    return f"{summary['method']} on {data.get('benchmark', '')}/{cfg.data.category}"


def run(cfg: DictConfig, quiet: bool = False) -> dict[str, Any]:
    """Train and/or test one configuration; returns the metrics.json content (``quiet``: print nothing).

    The results are printed after the logger has shut down (W&B prints when it finishes), so that a run ends
    with the table, the checkpoint policy and the run folder rather than with the logger's summary.
    """
    say = (lambda *_: None) if quiet else print
    quiet_lightning_tips()
    _check_options(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.overwrite:
        check_run_folder(cfg, run_dir)
    elif cfg.train:
        _remove_outputs(run_dir)
    finished = read_metrics(run_dir)
    if finished is not None and cfg.train:
        log.info("Run already finished: %s (overwrite=true trains again)", run_dir / METRICS_NAME)
        say(results_report(finished, f"{_title(finished, cfg)} (finished earlier)", run_dir))
        return finished
    write_config(run_dir, cfg)
    write_hydra_record(run_dir, cfg)  # after the check: a refused command leaves the folder's record alone
    try:
        summary = _train_and_test(cfg, run_dir)
    finally:
        offline_run = finish_wandb()
    if summary:
        if offline_run is not None:
            say(offline_run_hint(offline_run))
        say(results_report(summary, _title(summary, cfg), run_dir))
    return summary


def _train_and_test(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Build, train (resuming last.ckpt), test and write the run folder; {} where this process does not test."""
    datamodule, module = build_modules(cfg)
    _configure_thresholds(cfg, module)
    logger = build_logger(cfg)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=logger)
    _check_strategy(trainer)
    _check_distributed_validation(cfg, trainer)
    if isinstance(logger, WandbLogger):
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
    started = time.perf_counter()
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
    summary = _protocol(cfg, datamodule, module, test_ckpt or TESTED_IN_MEMORY)
    summary.update(
        metrics=module.test_metrics,
        per_defect=per_defect_scores(module.test_records)
        if not module.unified
        else {
            c: per_defect_scores([r for r in module.test_records if r.category == c]) for c in module.category_metrics
        },
        epochs_trained=_epochs_trained(trainer, run_dir),
        train_seconds=round(train_seconds, 1),
        total_seconds=round(time.perf_counter() - started, 1),
    )
    summary["test_images"] = _test_images_seen(module, datamodule)
    if tester is not trainer:
        summary["test_devices"] = "one device, full test set (after multi-process training)"
    summary.update(_threshold_summary(module, datamodule))
    if module.unified:
        summary["per_category"] = _category_summary(module)
    _store_thresholds(run_dir, test_ckpt, module)
    write_scores(run_dir, module.test_records, _image_threshold_records(module))
    overlays = write_overlays(run_dir, module.overlay_samples, module.test_records)
    _save_review_cases(cfg, run_dir, module, datamodule, tester)
    _log_results(logger, summary, overlays)
    write_metrics(run_dir, summary)
    return summary


def _configure_thresholds(cfg: DictConfig, module: AnomalyModule) -> None:
    """``threshold.*`` of the run config onto the module (runs composed without the group compute none)."""
    threshold = cfg.get("threshold")
    if not threshold:
        return
    fpr = threshold.get("fpr")
    module.configure_thresholds(
        threshold.policy,
        fpr=DEFAULT_FPR if fpr is None else fpr,
        image=threshold.get("image"),
        pixel=threshold.get("pixel"),
    )


def _image_threshold_records(module: AnomalyModule) -> Any:
    """scores.csv's image thresholds: the run's record, ``{category: record}`` for a unified run, or None."""
    if module.category_thresholds:
        return {c: t.image.to_dict() for c, t in module.category_thresholds.items()}
    return module.thresholds.image.to_dict() if module.thresholds else None


def _category_summary(module: AnomalyModule) -> dict[str, Any]:
    """metrics.json's ``per_category`` of a unified run: each category's metrics (unprefixed), test images and, with
    thresholds, its thresholds and the figures at them."""
    out: dict[str, Any] = {}
    for category, metrics in module.category_metrics.items():
        part: dict[str, Any] = {
            "metrics": metrics,
            "test_images": sum(1 for r in module.test_records if r.category == category),
        }
        thresholds = module.category_thresholds.get(category)
        if thresholds is not None:
            part["thresholds"] = thresholds.to_dict()
            part["thresholded"] = module.category_thresholded.get(category, {})
        out[category] = part
    return out


def _threshold_summary(module: AnomalyModule, datamodule: Any) -> dict[str, Any]:
    """The metrics.json entries of the decision thresholds: policy, records, figures and calibration data (a unified
    run's thresholds are per category, in ``per_category``)."""
    if module.category_thresholds:
        policy = module.threshold_policy
        out = {
            "threshold_policy": policy,
            "threshold_note": THRESHOLD_NOTES[policy],
            "threshold_optimistic": policy in OPTIMISTIC_THRESHOLD_POLICIES,
            "thresholds_per_category": True,
        }
        if policy in ("normal_quantile", "f1_val"):
            out["threshold_calibration"] = {
                "source": getattr(datamodule, "calibration_source", None),
                "images": {c: t.image.n_images for c, t in module.category_thresholds.items()},
            }
        return out
    if module.thresholds is None:
        return {}
    policy = module.threshold_policy
    out: dict[str, Any] = {
        "threshold_policy": policy,
        "threshold_note": THRESHOLD_NOTES[policy],
        "threshold_optimistic": policy in OPTIMISTIC_THRESHOLD_POLICIES,
        "thresholds": module.thresholds.to_dict(),
        "thresholded": module.thresholded_metrics,
    }
    if policy in ("normal_quantile", "f1_val"):
        out["threshold_calibration"] = {
            "source": getattr(datamodule, "calibration_source", None),
            "images": module.thresholds.image.n_images,
        }
    return out


def _store_thresholds(run_dir: Path, test_ckpt: str | None, module: AnomalyModule) -> Path | None:
    """Add the thresholds to the tested checkpoint of this run (the policy's best, or last.ckpt when the weights in
    memory after training were tested), in place and atomically; a checkpoint outside the run folder (train=false
    with another run's ckpt_path) is left as it is. The file is updated rather than re-saved by the trainer, so
    its training state (resuming) stays exactly what training wrote."""
    if module.thresholds is None and not module.category_thresholds:
        return None
    path = Path(test_ckpt) if test_ckpt else resume_checkpoint(run_dir)
    if path is None or not path.is_file() or run_dir.resolve() not in path.resolve().parents:
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    info = state.setdefault("kdad", {})
    if module.category_thresholds:  # a unified run: one set per category, chosen by each image's category
        info.pop("thresholds", None)
        info.update(
            threshold_policy=module.threshold_policy,
            category_thresholds={c: t.to_dict() for c, t in module.category_thresholds.items()},
        )
    else:
        info.update(threshold_policy=module.threshold_policy, thresholds=module.thresholds.to_dict())
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _check_strategy(trainer: L.Trainer) -> None:
    """Refuse Lightning's script-relaunching DDP inside a Hydra multirun: every rank would re-run the whole sweep
    with the original command line (Lightning issue 11300). ``trainer=ddp`` spawns its workers instead."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    if not isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher) or not HydraConfig.initialized():
        return
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            "trainer.strategy=ddp re-executes the command per process, which restarts the whole sweep under -m: "
            "use trainer=ddp (spawned workers) instead"
        )


def _check_distributed_validation(cfg: DictConfig, trainer: L.Trainer) -> None:
    """Validation metrics would be computed per process on a shard of the test set: refuse best_on_test."""
    if trainer.world_size > 1 and cfg.checkpoint.validation == "metrics":
        raise ConfigError(
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
    """The worst cases with their maps for notebooks/review.ipynb (kdad.runner.review). Optional material: a failure
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
    state = torch.load(last, map_location="cpu", weights_only=True)
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
    per_category = summary.get("per_category")
    if per_category:  # a unified run: a row per category and the mean (summary keys test/<category>/<metric>)
        columns = [k for k in metrics if "/" not in k]
        rows = [[c, *(part["metrics"].get(k) for k in columns)] for c, part in per_category.items()]
        rows.append(["mean", *(metrics[k] for k in columns)])
        logger.log_table(key="test/results", columns=["category", *columns], data=rows)
    else:
        logger.log_table(key="test/results", columns=list(metrics), data=[[metrics[k] for k in metrics]])
    if overlays:
        logger.log_image(key="test/overlays", images=[str(p) for p in overlays], caption=[p.stem for p in overlays])
