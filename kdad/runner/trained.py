"""A finished (or interrupted) run folder as a ready model: its config, its weights and its decision thresholds.

``load_trained_run(run_dir)`` rebuilds the run's LightningModule from ``config_resolved.yaml`` exactly as
``python -m kdad.run train=false ckpt_path=...`` does (``hydra.utils.instantiate(cfg.method)``: the frozen teacher
comes from the weight source the config names, offline by default ``package:efficientnet_lite0``), then restores
the checkpoint the way Lightning restores it there: ``module.on_load_checkpoint`` (which puts the frozen teachers
left out of the file back from the module's own weights, and lets RD with Expert's module drop the prefixes of
networks an inference-only model does not build) and a strict ``load_state_dict``. The prediction and export
commands (``kdad.predict``, ``kdad.export``) start from here.

Which checkpoint: ``ckpt_path`` when given (its run folder is the checkpoint's ``../..``), else the checkpoint the
run was tested with (``metrics.json["checkpoint_used"]``), else ``checkpoints/last.ckpt``. A tested checkpoint that
has gone missing is an error rather than a silent fall-back to ``last.ckpt``, which may hold other weights.

Safety: every checkpoint is read with ``torch.load(..., weights_only=True)``. A checkpoint is a pickle, and a
pickle can name any Python callable to run while it loads; ``weights_only=True`` accepts only tensors, containers
and primitive values, and refuses anything else without running it, so pointing kdad at a file from elsewhere
cannot execute code. Lightning 2.6 passes ``weights_only=None`` to ``torch.load`` when it resumes or tests a
checkpoint (``kdad.run``'s resume, ``train=false ckpt_path=``), which torch >= 2.6 turns into ``True`` unless the
environment sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: the checkpoints kdad writes (weights, optimiser, loop and
callback states, the ``kdad`` block) are plain data and load that way as well (tests/test_export.py).
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from kdad.errors import ConfigError
from kdad.methods.base import AnomalyModule
from kdad.metrics.thresholds import Thresholds
from kdad.runner.cli import user_error_message
from kdad.runner.results import CONFIG_NAME, LAST_CHECKPOINT, METRICS_NAME, TESTED_IN_MEMORY, read_metrics

log = logging.getLogger("kdad")


class TrainedRunError(ConfigError):
    """A run folder or checkpoint kdad cannot load; the message names the file and what to do."""


@dataclass
class TrainedRun:
    """A run folder's model, ready for inference.

    Attributes:
        run_dir: the run folder (holds config_resolved.yaml).
        config: the run's resolved config (config_resolved.yaml).
        module: the LightningModule in eval mode on the requested device, checkpoint weights loaded.
        checkpoint: the checkpoint file the weights came from.
        thresholds: the run's decision thresholds, or None when the run has none (scores only) or has them per
            category.
        category_thresholds: a unified run's thresholds, ``{category: Thresholds}`` (each image is decided with its
            own category's), or None for a one-category run.
    """

    run_dir: Path
    config: DictConfig
    module: AnomalyModule
    checkpoint: Path
    thresholds: Thresholds | None
    category_thresholds: dict[str, Thresholds] | None = None

    @property
    def categories(self) -> list[str] | None:
        """A unified run's categories (those with thresholds), or None."""
        return None if self.category_thresholds is None else list(self.category_thresholds)


def load_trained_run(
    run_dir: Path | str | None = None, ckpt_path: Path | str | None = None, device: str | torch.device = "cpu"
) -> TrainedRun:
    """The run folder's module with its checkpoint loaded, in eval mode on ``device`` (see the module docstring).

    Give ``run_dir`` (a run folder: ``runs/<tag>/<benchmark>/<category>/<method>/seed<seed>``), ``ckpt_path`` (a
    checkpoint inside a run folder's ``checkpoints/``), or both (a checkpoint stored elsewhere, with the run folder
    holding its configuration). Raises :class:`TrainedRunError` naming the file for a missing folder, config or
    checkpoint, a file that is not a checkpoint (truncated, corrupt), a checkpoint of another method or teacher,
    and a pickle that would execute code.
    """
    if run_dir is None and ckpt_path is None:
        raise TrainedRunError("give the run folder (run_dir=runs/<tag>/.../seed<seed>) or a checkpoint (ckpt_path=)")
    checkpoint = None if ckpt_path is None else Path(str(ckpt_path)).expanduser()
    if run_dir is not None:
        folder = Path(str(run_dir)).expanduser()
    else:
        assert checkpoint is not None
        folder = checkpoint.parent.parent  # <run>/checkpoints/<name>.ckpt
    if not folder.is_dir():
        raise TrainedRunError(
            f"run folder {folder} does not exist: give the folder a training run wrote "
            "(runs/<tag>/<benchmark>/<category>/<method>/seed<seed>)"
        )
    config = read_run_config(folder)
    metrics = read_metrics(folder)
    if checkpoint is None:
        checkpoint = tested_checkpoint(folder, metrics)
    elif not checkpoint.is_file():
        raise TrainedRunError(f"checkpoint {checkpoint} does not exist")
    state = load_checkpoint_file(checkpoint)
    thresholds = _thresholds(state, metrics, checkpoint, folder)
    by_category = _category_thresholds(state, metrics, checkpoint, folder)
    module = build_module(config, folder)
    restore_module(module, state, checkpoint)
    module.to(device).eval()
    log.info("Loaded %s (%s) from %s", module.name, checkpoint.name, folder)
    return TrainedRun(
        run_dir=folder,
        config=config,
        module=module,
        checkpoint=checkpoint,
        thresholds=thresholds,
        category_thresholds=by_category,
    )


def read_run_config(run_dir: Path) -> DictConfig:
    """The run's config_resolved.yaml as a DictConfig; TrainedRunError naming the file when absent or unreadable."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise TrainedRunError(
            f"{path} not found: {run_dir} is not a kdad run folder (training writes {CONFIG_NAME} before it starts)"
        )
    try:
        config = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TrainedRunError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, DictConfig) or "method" not in config:
        raise TrainedRunError(f"{path} is not a run configuration (no 'method' section)")
    return config


def tested_checkpoint(run_dir: Path, metrics: dict[str, Any] | None) -> Path:
    """The checkpoint a run was tested with (``metrics.json["checkpoint_used"]``), else ``checkpoints/last.ckpt``.

    A run folder moved elsewhere keeps its checkpoints: a stored path that no longer exists is looked up by name in
    the folder's ``checkpoints/``. A tested checkpoint found nowhere is an error, not a fall-back to last.ckpt.
    """
    used = (metrics or {}).get("checkpoint_used")
    last = run_dir / LAST_CHECKPOINT
    if isinstance(used, str) and used != TESTED_IN_MEMORY:
        stored = Path(used).expanduser()
        for candidate in (stored, run_dir / stored, run_dir / "checkpoints" / stored.name):
            if candidate.is_file():
                return candidate
        raise TrainedRunError(
            f"{run_dir / METRICS_NAME} says the run was tested with {used}, which does not exist (nor as "
            f"{run_dir / 'checkpoints' / stored.name}): pass the checkpoint to use with ckpt_path="
        )
    if not last.is_file():
        raise TrainedRunError(
            f"{last} not found: the run folder {run_dir} holds no checkpoint (did training start?); pass one with "
            "ckpt_path="
        )
    return last


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """A checkpoint's content, read with ``weights_only=True`` (no code runs); TrainedRunError naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if refused is not None:
            raise TrainedRunError(
                f"refused to load {path}: it contains Python objects that would execute code ({refused}); kdad "
                "loads checkpoints with weights_only=True. Use checkpoints written by kdad's training."
            ) from exc
        raise TrainedRunError(
            f"cannot load {path}: not a checkpoint, or a truncated or corrupt one (torch's weights_only=True "
            f"loader stopped at: {_unpickler_detail(exc)})"
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        # torch raises RuntimeError for a truncated zip archive, EOFError for an empty file, KeyError or
        # UnicodeDecodeError for bytes that are no pickle at all
        raise TrainedRunError(
            f"cannot load {path}: not a checkpoint, or a truncated or corrupt one ({type(exc).__name__}: "
            f"{_first_line(exc)})"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise TrainedRunError(f"{path} is not a Lightning checkpoint of a kdad run (no 'state_dict' in it)")
    return state


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "no details")


def _refused_global(exc: BaseException) -> str | None:
    """The callable or class torch's weights-only unpickler refused (``GLOBAL posix.system``), if it names one."""
    found = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
    return None if found is None else f"GLOBAL {found.group(1)}"


def _unpickler_detail(exc: BaseException) -> str:
    """torch's reason after "WeightsUnpickler error:" (e.g. "Unsupported operand 110"), without its advice."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if not line.startswith(("Check the documentation", "Weights only"))), "")
    return detail or "no details"


def build_module(config: DictConfig, run_dir: Path) -> AnomalyModule:
    """The run's LightningModule, built from its stored config as ``kdad.run`` builds it (teacher weights included)."""
    try:
        module = hydra.utils.instantiate(config.method)
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise
        raise TrainedRunError(f"cannot build the model of {run_dir / CONFIG_NAME}: {message}") from exc
    if not isinstance(module, AnomalyModule):
        raise TrainedRunError(f"{run_dir / CONFIG_NAME}: method builds a {type(module).__name__}, not a kdad method")
    return module


def restore_module(module: AnomalyModule, checkpoint: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's weights into ``module`` as Lightning does: ``on_load_checkpoint`` then a strict load."""
    try:
        module.on_load_checkpoint(checkpoint)
    except ValueError as exc:  # another method, another teacher backbone
        raise TrainedRunError(f"{path} does not fit this run's configuration: {exc}") from exc
    except (AttributeError, KeyError, TypeError) as exc:  # a "kdad" block naming modules this model lacks
        raise TrainedRunError(f"{path} is not a checkpoint of this run's model ({type(exc).__name__}: {exc})") from exc
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        raise TrainedRunError(
            f"{path} does not fit the model of this run's configuration ({module.name}): {_key_problems(exc)}"
        ) from exc


def _key_problems(exc: BaseException, limit: int = 400) -> str:
    """load_state_dict's missing / unexpected keys and shape mismatches, on one line and shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines[1:] or lines)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _thresholds(
    checkpoint: dict[str, Any], metrics: dict[str, Any] | None, path: Path, run_dir: Path
) -> Thresholds | None:
    """Thresholds stored in the checkpoint, else metrics.json's when that file was tested with this checkpoint."""
    info = checkpoint.get("kdad")
    stored = info.get("thresholds") if isinstance(info, dict) else None
    source = path
    if stored is None and metrics is not None and metrics.get("thresholds") is not None:
        if _same_file(_tested_checkpoint_or_none(run_dir, metrics), path):
            stored, source = metrics["thresholds"], run_dir / METRICS_NAME
        else:
            log.warning(
                "%s holds thresholds of %s, not of %s: loading without thresholds (scores only)",
                run_dir / METRICS_NAME,
                metrics.get("checkpoint_used"),
                path,
            )
    if stored is None:
        return None
    try:
        return Thresholds.from_dict(stored)
    except ValueError as exc:
        raise TrainedRunError(f"{source}: the stored thresholds are invalid: {exc}") from exc


def _category_thresholds(
    checkpoint: dict[str, Any], metrics: dict[str, Any] | None, path: Path, run_dir: Path
) -> dict[str, Thresholds] | None:
    """A unified run's per-category thresholds: the checkpoint's, else metrics.json's ``per_category`` when that file
    was tested with this checkpoint; None for a one-category run."""
    info = checkpoint.get("kdad")
    stored = info.get("category_thresholds") if isinstance(info, dict) else None
    source = path
    per_category = (metrics or {}).get("per_category") or {}
    has_records = any("thresholds" in part for part in per_category.values())
    if stored is None and has_records and _same_file(_tested_checkpoint_or_none(run_dir, metrics), path):
        stored = {c: part["thresholds"] for c, part in per_category.items() if "thresholds" in part}
        source = run_dir / METRICS_NAME
    if not stored:
        return None
    try:
        return {str(c): Thresholds.from_dict(t) for c, t in stored.items()}
    except ValueError as exc:
        raise TrainedRunError(f"{source}: the stored per-category thresholds are invalid: {exc}") from exc


def _tested_checkpoint_or_none(run_dir: Path, metrics: dict[str, Any] | None) -> Path | None:
    try:
        return tested_checkpoint(run_dir, metrics)
    except TrainedRunError:
        return None


def _same_file(a: Path | None, b: Path) -> bool:
    return a is not None and a.resolve() == b.resolve()
