"""Speed options timed against the same method's main row of the same bench run: each is flipped from its
default on a fresh model, which then trains one epoch and runs inference at batch 1 and at the batch size.

* ``channels_last``, ``compile``: ``speed.channels_last`` / ``speed.compile`` (kdad.runner.speed);
* ``workers``: the training loader's worker processes (``data.num_workers``: the default ``auto`` against 0, or
  1 where ``auto`` resolves to none).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bench.method import build, evaluating, inference_rates, run_overrides, test_batches, train_epochs
from kdad.runner.compare import compose_run_config

OPTIONS = ("channels_last", "compile", "workers")


def flipped(option: str, row: dict[str, Any]) -> tuple[bool, list[str]]:
    """(whether the option is on in the flipped measurement, the run overrides that flip it) for a main row."""
    if option == "workers":
        on = row["train_loader_workers"] == 0
        return on, [f"data.num_workers={1 if on else 0}"]
    on = not row["speed"][option]
    return on, [f"speed.{option}={str(on).lower()}"]


def default_run_images(method: str) -> int:
    """Training images one default run of ``method`` sees (``trainer.max_epochs`` x ``data.n_train``), against
    which a one-time cost such as compilation has to pay off."""
    cfg = compose_run_config([f"method={method}", "data=synthetic", "logger=none"])
    return int(cfg.trainer.max_epochs) * int(cfg.data.n_train)


def measure_option(
    settings: DictConfig, method: str, precision: str, option: str, row: dict[str, Any], workdir: Path | None = None
) -> dict[str, Any]:
    """Training and inference images/s of ``method`` with ``option`` flipped from ``row`` (its main measurement).

    A failure (e.g. ``torch.compile`` without a working C++ compiler) is reported, not raised: the option is then
    unavailable here and stays off.
    """
    device = torch.device(settings.device)
    value, overrides = flipped(option, row)
    out: dict[str, Any] = {"method": method, "precision": precision, "option": option, "value": value}
    started = time.perf_counter()
    try:
        out["default_run_images"] = default_run_images(method)
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            cfg = compose_run_config(run_overrides(settings, method, precision, Path(tmp), overrides))
            datamodule, module = build(cfg)
            trainer, _, training = train_epochs(cfg, module, datamodule, device, int(settings.warmup_batches))
            module.to(device)
            batches = test_batches(datamodule, device)
            with evaluating(module.model, trainer.precision_plugin.forward_context):
                rates = inference_rates(module.model, batches, settings, device)
    except Exception as exc:  # reported in the table and the JSON; the bench goes on with the other measurements
        out.update(available=False, error=f"{type(exc).__name__}: {exc}"[:500])
        return out
    keys = ("train_images_per_s", "train_data_fraction", "train_warmup_seconds", "train_loader_workers")
    out.update(available=True, **{k: training[k] for k in keys}, **rates, seconds=time.perf_counter() - started)
    return out
