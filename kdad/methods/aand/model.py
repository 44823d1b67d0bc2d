"""AAND: anomaly amplification and normality distillation (Tang et al., arXiv 2405.02068; code ``Hui-design/AAND``).

Two stages in one run:

* **Stage I** ("advanced teacher"): Residual Anomaly Amplification modules (``kdad.blocks.amplification``), one
  per tapped level of the frozen teacher, are trained on DRAEM-style synthetic anomalies (batch keys
  ``image_aug``, ``mask_aug`` and, with per-category foreground settings, ``foreground``) with the focal loss on
  the gate plus 0.1 x the amplification loss (margin 0.3). Teacher forcing: the residual uses the synthetic
  mask, not the predicted gate.
* **Stage II** ("stubborn student"): RD's OCBE + mirrored decoder (``kdad.blocks.fusion``, ``kdad.blocks.decoder``)
  learn, on normal images only, to reproduce the amplified teacher features (soft predicted gate, RAA frozen)
  with the hard knowledge distillation loss: per level, the mean of the top-k (10) per-pixel cosine distances of
  each image plus RD's global cosine term.

Inference: map = sum over levels of 1 - cos(amplified teacher, student), sigma 4, max (RD's head); the stage-I
map ``sum_k 1 - cos(f_k, f'_k)`` is returned as the auxiliary ``stage1`` map, so every test reports
``stage1/<metric>`` next to the main metrics.

Training loop (kdad's design): :class:`TwoStageModule` subclasses ``AnomalyModule`` with manual optimisation; the
epoch decides the stage (stage I for the first ``stage1_epochs`` epochs, then stage II), each stage with its own
Adam and step schedule over its own epochs, so Lightning's ``last.ckpt`` resumes a run interrupted in either
stage. At the end of stage I the RAA weights are written to ``stage1.ckpt``; ``stage1_ckpt=...`` starts a run
from such a file (or any AAND checkpoint) and trains stage II only. ``trainer.max_epochs`` must equal the sum of
the stage lengths (checked at fit start), so the schedules cannot silently disagree.

Not reproduced (documented in docs/aand.md): test-set model selection in both stages (gate precision for stage I,
I-AUROC for stage II; ``checkpoint=best_on_test`` gives the latter's analogue) and the early stop at test
I-AUROC > 0.999.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import MultiStepLR

from kdad.blocks.aand_losses import amplification_loss, binary_focal_loss, hard_knowledge_distillation_loss
from kdad.blocks.amplification import ResidualAnomalyAmplifier, level_mask
from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.decoder import MirroredDecoder
from kdad.blocks.fusion import OneClassBottleneck
from kdad.blocks.losses import DISTANCES, distillation_loss
from kdad.blocks.teacher import Teacher
from kdad.methods.base import AnomalyModule, AnomalyOutput

log = logging.getLogger(__name__)

AMPLIFIER_PREFIX = "model.amplifier."


def multistep_at_fractions(
    optimizer: torch.optim.Optimizer, epochs: int, fractions: Sequence[float] = (0.8, 0.9), gamma: float = 0.2
) -> MultiStepLR:
    """MultiStepLR with milestones at ``fractions`` of a stage's ``epochs`` (AAND: 80 % and 90 %, gamma 0.2).

    Milestones are rounded down to whole epochs. (The released code passes ``0.8 * E`` and ``0.9 * E`` as floats,
    which only ever fire when they are whole numbers, as for its 100 and 120 epochs; rounding keeps short
    schedules decaying too.)
    """
    return MultiStepLR(optimizer, milestones=[int(f * epochs) for f in fractions], gamma=gamma)


class AnomalyAmplificationDistillation(nn.Module):
    """AAND's networks and losses: frozen teacher + RAA (stage I), OCBE + mirrored decoder (stage II).

    Args:
        teacher: frozen feature extractor (three taps).
        normal_prototypes, abnormal_prototypes, temperature, mask_threshold: RAA settings (AAND: 50, 50, 0.2, 0.3).
        focal_alpha, focal_gamma: focal loss on the gate (AAND: 0.8, 2).
        amplification_weight, margin, max_normal, max_anomalous: amplification loss (AAND: 0.1, 0.3, 5000, 1000).
        student_loss: "hkd" (AAND) or any ``kdad.blocks.losses`` distance, e.g. "global_cosine" (plain RD loss).
        hkd_topk: hard positions per image and level in HKD (AAND: 10).
        bottleneck_blocks, decoder_blocks, block: RD's student layout.
        anomaly_map: map head for both the main and the stage-I map (RD's: sum, sigma 4, max).
        stage1_map: also return the stage-I map as the auxiliary output ``stage1``.
    """

    def __init__(
        self,
        teacher: Teacher,
        normal_prototypes: int = 50,
        abnormal_prototypes: int = 50,
        temperature: float = 0.2,
        mask_threshold: float = 0.3,
        focal_alpha: float = 0.8,
        focal_gamma: float = 2.0,
        amplification_weight: float = 0.1,
        margin: float = 0.3,
        max_normal: int = 5000,
        max_anomalous: int = 1000,
        student_loss: str = "hkd",
        hkd_topk: int = 10,
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        anomaly_map: AnomalyMapHead | None = None,
        stage1_map: bool = True,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.amplifier = ResidualAnomalyAmplifier(
            teacher.channels, normal_prototypes, abnormal_prototypes, temperature, mask_threshold
        )
        self.bottleneck = OneClassBottleneck(teacher.channels, num_blocks=bottleneck_blocks, block=block)
        self.decoder = MirroredDecoder(
            teacher.channels, self.bottleneck.out_channels, blocks=decoder_blocks, block=block
        )
        self.anomaly_map = anomaly_map or AnomalyMapHead()
        self.mask_threshold = float(mask_threshold)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.amplification_weight = float(amplification_weight)
        self.margin = float(margin)
        self.max_normal, self.max_anomalous = int(max_normal), int(max_anomalous)
        if student_loss != "hkd" and student_loss not in DISTANCES:
            raise ValueError(f"unknown student loss '{student_loss}'; choose 'hkd' or one of {sorted(DISTANCES)}")
        self.student_loss = student_loss
        self.hkd_topk = int(hkd_topk)
        self.stage1_map = bool(stage1_map)
        self.stage = 1  # set by TwoStageModule each epoch; picks the loss of ``loss(batch)``

    # ---------------------------------------------------------------- parameters per stage
    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """Stage I trains the RAA modules only; stage II the OCBE and the decoder only."""
        if stage == 1:
            return list(self.amplifier.parameters())
        return [*self.bottleneck.parameters(), *self.decoder.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.stage_parameters(1), *self.stage_parameters(2)]

    # ---------------------------------------------------------------- losses
    def loss(self, batch: dict) -> dict[str, Tensor]:
        return self.stage_loss(self.stage, batch)

    def stage_loss(self, stage: int, batch: dict) -> dict[str, Tensor]:
        return self.stage1_loss(batch) if stage == 1 else self.stage2_loss(batch)

    def stage1_loss(self, batch: dict) -> dict[str, Tensor]:
        """Focal loss on the gates + weight x amplification loss, on synthetic anomalies with teacher forcing."""
        if "image_aug" not in batch or "mask_aug" not in batch:
            raise ValueError(
                "AAND stage I trains on synthetic anomalies, but the batch has no 'image_aug'/'mask_aug': "
                "select a synthesis config (method=aand does: synthesis=draem_aand_<data>)."
            )
        raw = self.teacher(batch["image_aug"])
        levels = self.amplifier(raw, mask=batch["mask_aug"])
        foreground = batch.get("foreground")
        focal = raw[0].new_zeros(())
        amplification = raw[0].new_zeros(())
        hits = predicted = actual = 0.0
        for f, out in zip(raw, levels, strict=True):
            target = out.applied_gate  # the binarised level mask (teacher forcing)
            focal = focal + binary_focal_loss(out.gate, target, self.focal_alpha, self.focal_gamma)
            fg = None if foreground is None else level_mask(foreground, f.shape[-2:], self.mask_threshold)
            amplification = amplification + amplification_loss(
                f, out.features, target, fg, self.margin, self.max_normal, self.max_anomalous
            )
            with torch.no_grad():
                positive = out.gate > 0.5
                hits += float((positive & (target > 0.5)).sum())
                predicted += float(positive.sum())
                actual += float((target > 0.5).sum())
        loss = focal + self.amplification_weight * amplification
        # Gate precision / recall at 0.5 over all levels: the released code's stage-I diagnostic.
        precision = torch.tensor(hits / predicted if predicted else float("nan"))
        recall = torch.tensor(hits / actual if actual else float("nan"))
        return {
            "loss": loss,
            "focal": focal.detach(),
            "amplification": amplification.detach(),
            "gate_precision": precision,
            "gate_recall": recall,
        }

    def amplified(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Raw and amplified (soft predicted gate) teacher features of ``images``."""
        raw = self.teacher(images)
        return raw, [out.features for out in self.amplifier(raw)]

    def stage2_loss(self, batch: dict) -> dict[str, Tensor]:
        """Distil the frozen amplified teacher into OCBE + decoder, on the normal training images."""
        with torch.no_grad():
            _, target = self.amplified(batch["image"])
        student = self.decoder(self.bottleneck(target))
        if self.student_loss == "hkd":
            return {"loss": hard_knowledge_distillation_loss(target, student, self.hkd_topk)}
        return {"loss": distillation_loss(self.student_loss, target, student)}

    # ---------------------------------------------------------------- inference
    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Inference networks without the map heads: raw teacher, amplified teacher and student pyramids."""
        raw, target = self.amplified(images)
        return raw, target, self.decoder(self.bottleneck(target))

    def forward(self, images: Tensor) -> AnomalyOutput:
        raw, target, student = self.features(images)
        size = tuple(images.shape[-2:])
        score, anomaly_map = self.anomaly_map(target, student, size)
        auxiliary = {"stage1": self.anomaly_map(raw, target, size)} if self.stage1_map else {}
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, auxiliary=auxiliary)


class TwoStageModule(AnomalyModule):
    """``AnomalyModule`` for a model trained in two consecutive stages (AAND), with manual optimisation.

    The model provides ``stage_parameters(stage)`` and ``stage_loss(stage, batch)`` and has an ``amplifier``
    submodule (what stage I trains). Epochs ``[0, stage1_epochs)`` are stage I, the next ``stage2_epochs`` stage II;
    with ``stage1_ckpt`` stage I is loaded instead of trained and the run is stage II only. Each stage gets its
    own optimiser from ``optimizer`` (a partial) and its own scheduler from ``scheduler`` (a partial called with
    ``optimizer=`` and ``epochs=`` the stage length, stepped once per epoch of that stage).

    Validation (checkpoint policies ``val_loss`` / ``best_on_test``) only counts stage II: stage-I epochs log NaN
    for the monitored value, which Lightning's ModelCheckpoint ranks last.

    (``kdad.methods.staged.StagedModule`` serves methods that step several optimisers within every iteration; here
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
