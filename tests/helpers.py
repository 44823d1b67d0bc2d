"""Compose kdad's real Hydra configs in tests, the way `python -m kdad.run` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(overrides: Sequence[str], tmp_path: Path) -> DictConfig:
    """Compose ``conf/config.yaml`` with test-friendly paths; sets the HydraConfig like a real run."""
    GlobalHydra.instance().clear()
    base = [
        f"paths.runs_dir={tmp_path}/runs",
        f"data.cache_dir={tmp_path}/resized",
        "trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[*base, *overrides])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        # Hydra removes its own node from the job config at run time; mirror that.
        del cfg["hydra"]
    return cfg


class InterruptAt(Callback):
    """Simulates Ctrl-C during a given epoch (used to test resuming)."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, idx: int) -> None:
        if trainer.current_epoch == self.epoch and idx == self.batch:
            raise KeyboardInterrupt
