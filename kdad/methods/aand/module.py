"""AAND's LightningModule: both stages in one resumable run (see :mod:`kdad.methods.aand.model`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import MultiStepLR

from kdad.methods.aand.model import AMPLIFIER_PREFIX
from kdad.methods.base import AnomalyModule

log = logging.getLogger(__name__)


def multistep_at_fractions(
    optimizer: torch.optim.Optimizer, epochs: int, fractions: Sequence[float] = (0.8, 0.9), gamma: float = 0.2
) -> MultiStepLR:
    """MultiStepLR with milestones at ``fractions`` of a stage's ``epochs`` (AAND: 80 % and 90 %, gamma 0.2).

    Milestones are rounded down to whole epochs. (The released code passes ``0.8 * E`` and ``0.9 * E`` as floats,
    which only ever fire when they are whole numbers, as for its 100 and 120 epochs; rounding keeps short
    schedules decaying too.)
    """
    return MultiStepLR(optimizer, milestones=[int(f * epochs) for f in fractions], gamma=gamma)


class AANDModule(AnomalyModule):
    """``AnomalyModule`` for a model trained in two consecutive stages (AAND), with manual optimisation.

    The model provides ``stage_parameters(stage)`` and ``stage_loss(stage, batch)`` and has an ``amplifier``
    submodule (what stage I trains). Epochs ``[0, stage1_epochs)`` are stage I, the next ``stage2_epochs`` stage II;
    with ``stage1_ckpt`` stage I is loaded instead of trained and the run is stage II only. Each stage gets its
    own optimiser from ``optimizer`` (a partial) and its own scheduler from ``scheduler`` (a partial called with
    ``optimizer=`` and ``epochs=`` the stage length, stepped once per epoch of that stage).

    Validation (checkpoint policies ``val_loss`` / ``best_on_test``) only counts stage II: stage-I epochs log NaN
    for the monitored value, which Lightning's ModelCheckpoint ranks last.

    (``kdad.methods.multi_optimizer.MultiOptimizerModule`` serves methods that step several optimisers within every
    iteration; here
    the stages follow each other by epoch, each with its own learning-rate schedule.)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        stage1_epochs: int = 10,
        stage2_epochs: int = 10,
        stage1_ckpt: str | None = None,
        stage1_output: str | None = None,
        name: str = "aand",
        validation: str = "none",
        aupro_limit: float = 0.3,
        overlay_count: int = 12,
    ) -> None:
        super().__init__(model, optimizer, scheduler, name, validation, aupro_limit, overlay_count)
        self.automatic_optimization = False
        if stage1_epochs < 0 or stage2_epochs < 1:
            raise ValueError(f"need stage1_epochs >= 0 and stage2_epochs >= 1, got {stage1_epochs}, {stage2_epochs}")
        self.stage1_ckpt = str(stage1_ckpt) if stage1_ckpt else None
        if self.stage1_ckpt is None and stage1_epochs == 0:
            raise ValueError("stage1_epochs=0 trains no stage I: give method.stage1_ckpt=<a stage1.ckpt> to reuse one")
        # A reused stage I is not trained again: the run is stage II only.
        self.stage1_epochs = 0 if self.stage1_ckpt else int(stage1_epochs)
        self.stage2_epochs = int(stage2_epochs)
        self.stage1_output = Path(stage1_output) if stage1_output else None
        if self.stage1_ckpt:
            load_stage1(self, self.stage1_ckpt)

    # ---------------------------------------------------------------- schedule
    @property
    def total_epochs(self) -> int:
        return self.stage1_epochs + self.stage2_epochs

    def stage_at(self, epoch: int) -> int:
        return 1 if epoch < self.stage1_epochs else 2

    @property
    def stage(self) -> int:
        return self.stage_at(self.current_epoch)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.trainer.max_epochs != self.total_epochs:
            reused = f" (stage I reused from {self.stage1_ckpt})" if self.stage1_ckpt else ""
            raise ValueError(
                f"{self.name} trains stage I for {self.stage1_epochs} epochs{reused} and stage II for "
                f"{self.stage2_epochs} (method.stage1_epochs, method.stage2_epochs), i.e. {self.total_epochs} "
                f"epochs, but trainer.max_epochs={self.trainer.max_epochs}. Set trainer.max_epochs={self.total_epochs} "
                "or change the stage lengths."
            )

    def configure_optimizers(self) -> Any:
        optimizers = [self.optimizer_factory(params=self.model.stage_parameters(s)) for s in (1, 2)]
        if self.scheduler_factory is None:
            return optimizers
        epochs = (max(1, self.stage1_epochs), self.stage2_epochs)
        schedulers = [self.scheduler_factory(optimizer=o, epochs=e) for o, e in zip(optimizers, epochs, strict=True)]
        return optimizers, schedulers

    # ---------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        self.model.stage = self.stage
        if self.current_epoch in (0, self.stage1_epochs):
            epochs = self.stage1_epochs if self.stage == 1 else self.stage2_epochs
            rank_zero_info(f"{self.name}: stage {self.stage} ({epochs} epochs) starts at epoch {self.current_epoch}")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        stage = self.stage
        parts = self.model.stage_loss(stage, batch)
        self._check_finite(parts)
        optimizer = self.optimizers()[stage - 1]
        optimizer.zero_grad()
        self.manual_backward(parts["loss"])
        optimizer.step()
        logged = {f"train/stage{stage}/{k}": v.detach() for k, v in parts.items() if torch.isfinite(v).all()}
        self.log_dict(logged, prog_bar=True, batch_size=batch["image"].shape[0])
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._end_of_epoch(stage)
        return parts["loss"].detach()

    def _end_of_epoch(self, stage: int) -> None:
        """After the epoch's last optimiser step, before validation and any checkpoint of this epoch is written."""
        if self.scheduler_factory is not None:
            self.lr_schedulers()[stage - 1].step()
        if stage == 1 and self.current_epoch == self.stage1_epochs - 1 and self.stage1_output is not None:
            save_stage1(self, self.stage1_output)
            rank_zero_info(f"{self.name}: stage I finished, RAA weights saved to {self.stage1_output}")

    # ---------------------------------------------------------------- validation (stage II only)
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.stage == 2:
            super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if self.stage == 2:
            super().on_validation_epoch_end()
            return
        monitored = {"loss": "val/loss", "metrics": "val/selection_score"}.get(self.validation)
        if monitored is not None:
            self.log(monitored, float("nan"))
        self._reset_eval_state()


def save_stage1(module: AnomalyModule, path: Path) -> None:
    """Write the RAA weights (keys as in the module's state dict) and the teacher they were trained on."""
    teacher = module.model.teacher
    state = {f"{AMPLIFIER_PREFIX}{k}": v.detach().cpu() for k, v in module.model.amplifier.state_dict().items()}
    payload = {
        "state_dict": state,
        "kdad": {
            "method": module.name,
            "stage": 1,
            "epochs": module.current_epoch + 1,
            "teacher": {"backbone": teacher.backbone_name, "weights": teacher.weights},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_stage1(module: AnomalyModule, path: str | Path) -> None:
    """Load RAA weights from a ``stage1.ckpt`` or from any checkpoint of the same method (e.g. a ``last.ckpt``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"method.stage1_ckpt={str(path)!r}: no such file (a stage1.ckpt of an earlier run)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = {
        k[len(AMPLIFIER_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(AMPLIFIER_PREFIX)
    }
    if not state:
        raise ValueError(f"{path} holds no RAA weights (no '{AMPLIFIER_PREFIX}*' keys): not an AAND checkpoint")
    info = checkpoint.get("kdad", {})
    expected = (info.get("teacher") or {}).get("backbone") or next(
        (spec["backbone"] for spec in info.get("frozen", {}).values()), None
    )
    teacher = module.model.teacher
    if expected is not None and expected != teacher.backbone_name:
        raise ValueError(f"{path} was trained on teacher '{expected}', the config builds '{teacher.backbone_name}'")
    module.model.amplifier.load_state_dict(state)
    log.info("%s: stage I (RAA) weights loaded from %s", module.name, path)
