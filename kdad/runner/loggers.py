"""Experiment loggers: W&B offline unless the user has W&B set up, plus CSV and none; and the console noise of
the logging libraries that a kdad run does not print (W&B's banners offline, Lightning's product tips)."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from kdad.errors import check_choice

OFFLINE_MODES = {"offline", "disabled", "dryrun"}
# Lightning logs these advertisements (litlogger, litmodels) at INFO on every Trainer it builds.
LIGHTNING_TIP_PREFIX = "💡 Tip"
LIGHTNING_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


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
    """``mode``: 'auto' (online only if configured), 'online' or 'offline'. Offline runs sync with ``wandb sync``.

    Offline, W&B prints nothing (``settings.silent``): its banners and end-of-run summary would bury kdad's
    results table, and kdad prints the one useful line itself (where the offline run is, see
    ``offline_run_hint``). Online, W&B keeps its run links but drops the summary (``settings.quiet``).
    ``logger.settings`` entries override both.
    """
    check_choice(mode, ("auto", "online", "offline"), "logger.mode")
    offline = mode == "offline" or (mode == "auto" and not wandb_is_configured())
    save_dir = Path(kwargs.get("save_dir", "."))
    save_dir.mkdir(parents=True, exist_ok=True)
    settings = {"silent": True} if offline else {"quiet": True}
    settings.update(kwargs.pop("settings", None) or {})
    logger = WandbLogger(offline=offline, settings=settings, **kwargs)
    # Lightning always passes anonymous= to wandb.init, which W&B >= 0.19 answers with a deprecation warning.
    logger._wandb_init.pop("anonymous", None)
    return logger


def finish_wandb() -> Path | None:
    """End the W&B run of this job, so sweep jobs never merge into one run; returns the folder of an offline run
    (to tell the user where it is and how to upload it), None for an online run or none."""
    try:
        import wandb
    except ImportError:
        return None
    run = wandb.run
    if run is None:
        return None
    offline_dir = Path(run.settings.sync_dir) if run.offline else None
    wandb.finish()
    return offline_dir


def offline_run_hint(offline_dir: Path) -> str:
    """One line instead of W&B's offline banner and summary."""
    return f"W&B offline run saved: upload it with `wandb sync {offline_dir}`"


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP_PREFIX)


def quiet_lightning_tips() -> None:
    """Drop Lightning's product tips from the console; its other messages (devices used, why fit stopped) stay."""
    for name in LIGHTNING_RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningTips) for f in logger.filters):
            logger.addFilter(_DropLightningTips())
