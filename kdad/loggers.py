"""Experiment loggers: W&B offline unless the user has W&B set up, plus CSV and none."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

OFFLINE_MODES = {"offline", "disabled", "dryrun"}


def wandb_is_configured() -> bool:
    """True when W&B could log online: WANDB_MODE=online, an API key in the environment, or a netrc login."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in OFFLINE_MODES:
        return False
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(str(Path.home() / ".netrc")).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def make_wandb_logger(mode: str = "auto", **kwargs: Any) -> Logger:
    """``mode``: 'auto' (online only if configured), 'online' or 'offline'. Offline runs sync with ``wandb sync``."""
    if mode not in {"auto", "online", "offline"}:
        raise ValueError(f"logger mode must be auto, online or offline, got '{mode}'")
    offline = mode == "offline" or (mode == "auto" and not wandb_is_configured())
    save_dir = Path(kwargs.get("save_dir", "."))
    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=offline, **kwargs)


def finish_wandb() -> None:
    """End the W&B run of this job, so sweep jobs never merge into one run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
