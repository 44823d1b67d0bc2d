"""AAND's LightningModule: both stages in one resumable run (see :mod:`kdad.methods.aand.model`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import MultiStepLR

from kdad.errors import check_choice
from kdad.methods.aand.model import AMPLIFIER_PREFIX, STAGE_GROUPS
from kdad.methods.base import AnomalyModule, optimizer_groups

log = logging.getLogger(__name__)

# What the student does during stage I: "none" (the released code: it is trained in stage II only) or "rd"
# (kdad's default: RD's loss on the raw teacher features, see AANDModule).
STUDENT_WARMUPS = ("none", "rd")


def multistep_at_fractions(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    fractions: Sequence[float] = (0.8, 0.9),
    gamma: float = 0.2,
    round_milestones: bool = True,
) -> MultiStepLR:
    """MultiStepLR with milestones at ``fractions`` of a stage's ``epochs`` (AAND: 80 % and 90 %, gamma 0.2).

    ``round_milestones`` (kdad's default): milestones rounded down to whole epochs, so short schedules decay too.
    ``False`` is the released code: it passes ``0.8 * E`` and ``0.9 * E`` as floats, and a float milestone only
    fires when it is a whole number (as for its 100 and 120 epochs; for E = 15, 13.5 never fires, so the learning
    rate drops once instead of twice). Both agree whenever ``fraction * epochs`` is whole. A rounded milestone is
    never before epoch 1: at 0 it would decay the rate before the stage's first step (a one-epoch stage).
    """
    milestones = [max(1, int(f * epochs)) if round_milestones else f * epochs for f in fractions]
    return MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


def stage_lengths(
    max_epochs: int | None,
    stage1_epochs: int | None = None,
    stage2_epochs: int | None = None,
    stage1_fraction: float = 0.5,
    reuse_stage1: bool = False,
) -> tuple[int, int]:
    """Epochs of stage I and stage II in a run of ``max_epochs`` (the trainer's), see :class:`AANDModule`.

    With neither length set, stage I is ``stage1_fraction * max_epochs`` epochs rounded half up (at least one,
    leaving one for stage II) and stage II the rest; a set length is kept and the other stage gets the rest.
    Lengths that do not add up to ``max_epochs``, or leave a stage without an epoch, raise ``ValueError``. With
    ``reuse_stage1`` the run is stage II only.
    """
    if max_epochs is None or max_epochs < 1:
        raise ValueError(f"AAND's stages are counted in trainer.max_epochs, which must be >= 1, got {max_epochs}")
    if reuse_stage1:
        if stage2_epochs is not None and stage2_epochs != max_epochs:
            raise ValueError(
                f"stage I is reused (method.stage1_ckpt), so the run is stage II only, but method.stage2_epochs="
                f"{stage2_epochs} and trainer.max_epochs={max_epochs}: set trainer.max_epochs={stage2_epochs}, or "
                "method.stage2_epochs=null to train stage II for trainer.max_epochs"
            )
        return 0, max_epochs
    if stage1_epochs is None and stage2_epochs is None:
        if max_epochs < 2:
            raise ValueError(
                f"AAND trains two stages of at least one epoch each: trainer.max_epochs={max_epochs} is too short "
                "(or give method.stage1_ckpt=<a stage1.ckpt> to train stage II only)"
            )
        first = min(max(math.floor(stage1_fraction * max_epochs + 0.5), 1), max_epochs - 1)
        return first, max_epochs - first
    first = stage1_epochs if stage1_epochs is not None else max_epochs - stage2_epochs
    second = stage2_epochs if stage2_epochs is not None else max_epochs - first
    if first < 1 or second < 1 or first + second != max_epochs:
        fix = (
            f"trainer.max_epochs={stage1_epochs + stage2_epochs}"
            if stage1_epochs is not None and stage2_epochs is not None
            else "a longer trainer.max_epochs"
        )
        raise ValueError(
            f"AAND's stages do not fit trainer.max_epochs={max_epochs}: method.stage1_epochs={stage1_epochs} and "
            f"method.stage2_epochs={stage2_epochs} (null: the rest of the run) make {first} + {second} epochs, but "
            f"each stage needs at least one and together they are the run. Set {fix}, or method.stage1_epochs=null "
            "method.stage2_epochs=null to split trainer.max_epochs by method.stage1_fraction"
        )
    return first, second


class AANDModule(AnomalyModule):
    """``AnomalyModule`` for a model trained in two consecutive stages (AAND), with manual optimisation.

    The model provides ``stage_loss(stage, batch)``, has an ``amplifier`` submodule (what stage I trains) and names
    its parameter groups after the stages (``STAGE_GROUPS``: ``amplifier``, ``student``). Epochs
    ``[0, stage1_epochs)`` are stage I, the next ``stage2_epochs`` stage II; with ``stage1_ckpt`` stage I is loaded
    instead of trained and the run is stage II only. Each stage gets its own optimiser from ``optimizer`` (a partial
    called with ``params=`` that stage's named parameter group, see :func:`~kdad.methods.base.optimizer_groups`) and
    its own scheduler from ``scheduler`` (a partial called with ``optimizer=`` and ``epochs=`` the stage length,
    stepped once per epoch of that stage).

    Stage lengths. The paper and the released code train stage I for 100 epochs, then stage II for 120. kdad trains
    both in one Lightning run whose length is ``trainer.max_epochs``, like every other method, and derives the
    stages from it when training starts
    (:func:`stage_lengths`): by default stage I is ``stage1_fraction * max_epochs`` epochs (rounded) and stage II
    the rest (0.5: 10 + 10 over the default 20 epochs), so ``trainer.max_epochs=N`` alone sets the run, also in a sweep
    over methods. ``stage1_epochs`` / ``stage2_epochs`` fix a stage (the other one gets the rest); with both set
    (the paper presets: 100 + 120, ``trainer.max_epochs=220``) they must add up to ``trainer.max_epochs`` or fit
    stops with an error before any training. With ``stage1_ckpt`` all of ``trainer.max_epochs`` is stage II.

    Student warm-up (``student_warmup``). The released code trains the student in stage II only, from scratch.
    At the budgets people run on a CPU or in a sweep that leaves it far from converged: on real-texture crops at
    256 px, 5 + 5 epochs ended at I-AUROC 58.5 with a stage-I map of 99.8 and RD (10 epochs) at 88.2, and RD
    itself at 5 epochs reads 66.2 — stage II is RD with half the budget (measurements in the method README). With
    ``"rd"`` (kdad's default) every stage-I iteration also takes one step of the student with stage II's
    optimiser on RD's global cosine loss over the raw teacher features of the normal images (where the gate is
    closed the amplified features equal these), so stage II fine-tunes a student that has trained for the whole
    run; the same 5 + 5 epochs then read 96.3. ``"none"`` is the released behaviour (the paper presets set it).
    It costs one more teacher forward and one student step per stage-I iteration.

    Validation (checkpoint policies ``val_loss`` / ``best_on_test``) only counts stage II: stage-I epochs log NaN
    for the monitored value, which Lightning's ModelCheckpoint ranks last.

    (``kdad.methods.multi_optimizer.MultiOptimizerModule`` serves methods that step several optimisers within every
    iteration; here the stages follow each other by epoch, each with its own learning-rate schedule.)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        stage1_epochs: int | None = None,
        stage2_epochs: int | None = None,
        stage1_fraction: float = 0.5,
        stage1_ckpt: str | None = None,
        stage1_output: str | None = None,
        student_warmup: str = "rd",
        name: str = "aand",
        validation: str = "none",
        aupro_limit: float = 0.3,
        overlay_count: int = 12,
    ) -> None:
        super().__init__(model, optimizer, scheduler, name, validation, aupro_limit, overlay_count)
        self.automatic_optimization = False
        if not 0.0 < stage1_fraction < 1.0:
            raise ValueError(f"stage1_fraction must be between 0 and 1 (exclusive), got {stage1_fraction}")
        if (stage1_epochs is not None and stage1_epochs < 0) or (stage2_epochs is not None and stage2_epochs < 1):
            raise ValueError(f"need stage1_epochs >= 0 and stage2_epochs >= 1, got {stage1_epochs}, {stage2_epochs}")
        self.stage1_ckpt = str(stage1_ckpt) if stage1_ckpt else None
        if self.stage1_ckpt is None and stage1_epochs == 0:
            raise ValueError("stage1_epochs=0 trains no stage I: give method.stage1_ckpt=<a stage1.ckpt> to reuse one")
        self.stage1_fraction = float(stage1_fraction)
        self.student_warmup = check_choice(student_warmup, STUDENT_WARMUPS, "method.student_warmup")
        # What the config asked for; the lengths in use are resolved against trainer.max_epochs at fit start.
        # A reused stage I is not trained again: the run is stage II only.
        self.requested_epochs = (None if self.stage1_ckpt else stage1_epochs, stage2_epochs)
        self.stage1_epochs: int | None = 0 if self.stage1_ckpt else stage1_epochs
        self.stage2_epochs: int | None = stage2_epochs
        self.stage1_output = Path(stage1_output) if stage1_output else None
        if self.stage1_ckpt:
            load_stage1(self, self.stage1_ckpt)

    # ---------------------------------------------------------------- schedule
    @property
    def total_epochs(self) -> int | None:
        """The run's length, where the config fixes both stages (else known once fit has started)."""
        if self.stage1_epochs is None or self.stage2_epochs is None:
            return None
        return self.stage1_epochs + self.stage2_epochs

    @property
    def shortest_run(self) -> int:
        """The fewest epochs that train every stage this module trains: a stage length fixed in the config as set,
        one epoch for each stage left to follow ``trainer.max_epochs``, no stage I with ``stage1_ckpt`` (the bench
        trains this many; :func:`stage_lengths` gives back those lengths for ``max_epochs=shortest_run``)."""
        first, second = self.requested_epochs
        return (0 if self.stage1_ckpt else first or 1) + (second or 1)

    def stage_at(self, epoch: int) -> int:
        return 1 if self.stage1_epochs and epoch < self.stage1_epochs else 2

    @property
    def stage(self) -> int:
        return self.stage_at(self.current_epoch)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        self.stage1_epochs, self.stage2_epochs = stage_lengths(
            self.trainer.max_epochs, *self.requested_epochs, self.stage1_fraction, reuse_stage1=bool(self.stage1_ckpt)
        )

    def configure_optimizers(self) -> Any:
        # One optimiser per stage over that stage's named parameter group (its options applied).
        optimizers = [self.optimizer_factory(params=optimizer_groups(self.model, [STAGE_GROUPS[s]])) for s in (1, 2)]
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
        if stage == 1 and self.student_warmup == "rd":
            logged["train/stage1/student_warmup"] = self._warmup_step(batch)
        self.log_dict(logged, prog_bar=True, batch_size=batch["image"].shape[0])
        if batch_idx + 1 == self.trainer.num_training_batches:
            self._end_of_epoch(stage)
        return parts["loss"].detach()

    def _warmup_step(self, batch: dict) -> Tensor:
        """One step of the student (stage II's optimiser, at its initial learning rate) on RD's loss over the raw
        teacher features of the normal images; stage II's schedule only counts stage-II epochs."""
        parts = self.model.student_warmup_loss(batch)
        self._check_finite(parts)
        optimizer = self.optimizers()[1]
        optimizer.zero_grad()
        self.manual_backward(parts["loss"])
        optimizer.step()
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
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
