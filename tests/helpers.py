"""Shared test helpers: compose kdad's real Hydra configs the way `python -m kdad.run` does, run the command on a
config that must be refused, and check a data module's samples and masks against a fixture's manifest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

import kdad.data  # noqa: F401  (registers the config's resolvers, kdad.category_dir in run_dir, as kdad.run does)

if TYPE_CHECKING:
    from fixtures import Manifest

    from kdad.data import AnomalyDataModule, Sample

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


def assert_command_refuses(cfg: DictConfig, capsys: pytest.CaptureFixture, fragments: Sequence[str]) -> None:
    """Through the command's entry point (kdad.run.main, with the composed ``cfg``): exit status 2 with one
    ``kdad: error:`` line holding every fragment, no traceback, and nothing trained (no checkpoints folder)."""
    from kdad.run import main

    with pytest.raises(SystemExit) as stopped:
        main(cfg)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("kdad: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not (Path(cfg.run_dir) / "checkpoints").exists()


def check_against_manifest(samples: Sequence[Sample], manifest: Manifest) -> None:
    """Each sample's label, defect type and mask file are what the fixture that wrote it says."""
    for sample in samples:
        expected = manifest[sample.image_path]
        assert (sample.label, sample.defect_type) == (expected.label, expected.defect_type), sample.image_path
        assert (sample.mask_path.name if sample.mask_path else None) == expected.mask_name, sample.image_path


def check_mask_pixels(module: AnomalyDataModule, manifest: Manifest) -> None:
    """Each loaded test mask covers its own image's box (a mask paired with another image would cover that one's);
    the fixtures' images are 64 x 48."""
    dataset = module.test_dataset
    scale_x, scale_y = module.image_size / 64, module.image_size / 48
    for index, sample in enumerate(dataset.samples):
        expected = manifest[sample.image_path]
        mask = dataset.load_mask(index)
        if expected.box is None:
            assert mask.sum() == 0
            continue
        ys, xs = np.nonzero(mask)
        left, top, right, bottom = expected.box
        assert left * scale_x - 1 <= xs.min() and xs.max() <= right * scale_x + 1, sample.image_path
        assert top * scale_y - 1 <= ys.min() and ys.max() <= bottom * scale_y + 1, sample.image_path
