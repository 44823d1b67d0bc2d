"""AAND: anomaly amplification and normality distillation (Tang et al., arXiv 2405.02068; code ``Hui-design/AAND``).

Two stages in one run:

* **Stage I** ("advanced teacher"): Residual Anomaly Amplification modules (``kdad.methods.aand.amplification``), one
  per tapped level of the frozen teacher, are trained on DRAEM-style synthetic anomalies (batch keys
  ``image_aug``, ``mask_aug`` and, with per-category foreground settings, ``foreground``) with the focal loss on
  the gate plus 0.1 x the amplification loss (margin 0.3). Teacher forcing: the residual uses the synthetic
  mask, not the predicted gate.
* **Stage II** ("stubborn student"): RD's OCBE + mirrored decoder (``kdad.blocks.bottleneck``, ``kdad.blocks.decoder``)
  learn, on normal images only, to reproduce the amplified teacher features (soft predicted gate, RAA frozen)
  with the hard knowledge distillation loss: per level, the mean of the top-k (10) per-pixel cosine distances of
  each image plus RD's global cosine term.

Inference: map = sum over levels of 1 - cos(amplified teacher, student), sigma 4, max (RD's head); the stage-I
map ``sum_k 1 - cos(f_k, f'_k)`` is returned as the auxiliary ``stage1`` map, so every test reports
``stage1/<metric>`` next to the main metrics.

Training loop (kdad's design): :class:`AANDModule` subclasses ``AnomalyModule`` with manual optimisation; the
epoch decides the stage (stage I for the first ``stage1_epochs`` epochs, then stage II), each stage with its own
Adam and step schedule over its own epochs, so Lightning's ``last.ckpt`` resumes a run interrupted in either
stage. At the end of stage I the RAA weights are written to ``stage1.ckpt``; ``stage1_ckpt=...`` starts a run
from such a file (or any AAND checkpoint) and trains stage II only. The stage lengths follow ``trainer.max_epochs``
(:func:`~kdad.methods.aand.module.stage_lengths`, resolved at fit start): stage I is ``stage1_fraction`` of the run
(0.5 by default), stage II the rest; a stage length set in the config fixes that stage, and two set lengths must add
up to ``trainer.max_epochs`` (the paper presets: 100 + 120 = 220), else the run stops before its first step.

Not reproduced (documented in ``kdad/methods/aand/README.md``): test-set model selection in both stages (gate
precision for stage I, I-AUROC + P-AUROC for stage II; ``checkpoint=best_on_test`` gives the latter's analogue) and
the early stop at test I-AUROC > 0.999.

Parity: ``tests/test_parity_aand.py`` holds one iteration of each stage (forward, per-level losses, gradients,
Adam update, BatchNorm statistics) and both evaluations' maps and scores to the released code (``Hui-design/AAND``
@ 376c4e4) on seeded WRN50 weights; the released value of every switch (``raa_init='kaiming'``, the default;
``upsample_init='torch_default'``, ``focal_eps=None``, the scheduler's ``round_milestones=False``) is what that test
runs (README, "Parity with the released code").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.bottleneck import OneClassBottleneck
from kdad.blocks.decoder import MirroredDecoder
from kdad.blocks.losses import DISTANCES, distillation_loss
from kdad.blocks.teacher import Teacher
from kdad.errors import ConfigError, check_choice
from kdad.methods.aand.amplification import Amplified, ResidualAnomalyAmplifier, level_mask
from kdad.methods.aand.losses import amplification_loss, binary_focal_loss, hard_knowledge_distillation_loss
from kdad.methods.base import AnomalyModel, AnomalyOutput

log = logging.getLogger(__name__)

AMPLIFIER_PREFIX = "model.amplifier."
# The parameter group each stage trains (one optimiser per stage, see AANDModule).
STAGE_GROUPS = {1: "amplifier", 2: "student"}


@dataclass
class StageOneTerms:
    """Stage I of one batch: raw teacher features, each level's RAA output (teacher-forced), the per-level focal and
    amplification losses, and the released code's gate precision / recall (means over the levels)."""

    raw: list[Tensor]
    levels: list[Amplified]
    focal: list[Tensor]
    amplification: list[Tensor]
    precision: Tensor
    recall: Tensor


class AnomalyAmplificationDistillation(AnomalyModel):
    """AAND's networks and losses: frozen teacher + RAA (stage I), OCBE + mirrored decoder (stage II).

    Args:
        teacher: frozen feature extractor (three taps).
        normal_prototypes, abnormal_prototypes, temperature, mask_threshold: RAA settings (AAND: 50, 50, 0.2, 0.3).
        raa_init: initialisation of the RAA MLP convs: 'kaiming' (released: He-normal fan_out, the ResNet
            constructor's loop reaches the RAA modules) or 'pytorch' (PyTorch's default conv init).
        focal_alpha, focal_gamma: focal loss on the gate (AAND: 0.8, 2).
        focal_eps: clamp of the gate in the focal loss to [eps, 1 - eps] (kdad: 1e-6; released: none, ``None``/0;
            a no-op at tau 0.2 with 50 + 50 prototypes, see ``binary_focal_loss``).
        amplification_weight, margin, max_normal, max_anomalous: amplification loss (AAND: 0.1, 0.3, 5000, 1000).
        student_loss: "hkd" (AAND) or any ``kdad.blocks.losses`` distance, e.g. "global_cosine" (plain RD loss).
        hkd_topk: hard positions per image and level in HKD (AAND: 10).
        bottleneck_blocks, decoder_blocks, block: RD's student layout.
        upsample_init: the decoder's transposed convs: 'kaiming' (kdad's RD-family default, as ``method=rd``) or
            'torch_default' (the released ``de_wide_resnet50_2``: its init loop only reaches ``nn.Conv2d``, so they
            keep PyTorch's default, 0.4-0.6x kdad's std); see ``kdad.blocks.residual.kaiming_init``.
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
        raa_init: str = "kaiming",
        focal_alpha: float = 0.8,
        focal_gamma: float = 2.0,
        focal_eps: float | None = 1e-6,
        amplification_weight: float = 0.1,
        margin: float = 0.3,
        max_normal: int = 5000,
        max_anomalous: int = 1000,
        student_loss: str = "hkd",
        hkd_topk: int = 10,
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        upsample_init: str = "kaiming",
        anomaly_map: AnomalyMapHead | None = None,
        stage1_map: bool = True,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.amplifier = ResidualAnomalyAmplifier(
            teacher.channels, normal_prototypes, abnormal_prototypes, temperature, mask_threshold, init=raa_init
        )
        self.bottleneck = OneClassBottleneck(teacher.channels, num_blocks=bottleneck_blocks, block=block)
        self.decoder = MirroredDecoder(
            teacher.channels,
            self.bottleneck.out_channels,
            blocks=decoder_blocks,
            block=block,
            upsample_init=upsample_init,
        )
        self.anomaly_map = anomaly_map or AnomalyMapHead()
        self.mask_threshold = float(mask_threshold)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.focal_eps = float(focal_eps) if focal_eps else None
        self.amplification_weight = float(amplification_weight)
        self.margin = float(margin)
        self.max_normal, self.max_anomalous = int(max_normal), int(max_anomalous)
        self.student_loss = check_choice(student_loss, ("hkd", *sorted(DISTANCES)), "student loss")
        self.hkd_topk = int(hkd_topk)
        self.stage1_map = bool(stage1_map)
        self.stage = 1  # set by AANDModule each epoch; picks the loss of ``loss(batch)``

    # ---------------------------------------------------------------- parameters per stage
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``amplifier`` (RAA modules, stage I) and ``student`` (OCBE + decoder, stage II); the teacher is frozen."""
        return {
            STAGE_GROUPS[1]: list(self.amplifier.parameters()),
            STAGE_GROUPS[2]: [*self.bottleneck.parameters(), *self.decoder.parameters()],
        }

    def stage_parameters(self, stage: int) -> list[nn.Parameter]:
        """What ``stage`` trains: its parameter group (stage I the RAA modules only, stage II OCBE + decoder only)."""
        return self.parameter_groups()[STAGE_GROUPS[stage]]

    # ---------------------------------------------------------------- losses
    def loss(self, batch: dict) -> dict[str, Tensor]:
        return self.stage_loss(self.stage, batch)

    def stage_loss(self, stage: int, batch: dict) -> dict[str, Tensor]:
        return self.stage1_loss(batch) if stage == 1 else self.stage2_loss(batch)

    def stage1_terms(self, batch: dict) -> StageOneTerms:
        """Stage I's forward pass and its per-level loss terms, on synthetic anomalies with teacher forcing."""
        if "image_aug" not in batch or "mask_aug" not in batch:
            raise ConfigError(
                "AAND stage I trains on synthetic anomalies, but the batch has no 'image_aug'/'mask_aug': select a "
                "synthesis recipe (method=aand selects synthesis=draem_aand, with the foreground masks of table aand "
                "in conf/foreground/<data>.yaml), not synthesis=none."
            )
        raw = self.teacher(batch["image_aug"])
        levels = self.amplifier(raw, mask=batch["mask_aug"])
        foreground = batch.get("foreground")
        focal, amplification = [], []
        precision = recall = 0.0
        for f, out in zip(raw, levels, strict=True):
            target = out.applied_gate  # the binarised level mask (teacher forcing)
            focal.append(binary_focal_loss(out.gate, target, self.focal_alpha, self.focal_gamma, self.focal_eps))
            fg = None if foreground is None else level_mask(foreground, f.shape[-2:], self.mask_threshold)
            amplification.append(
                amplification_loss(f, out.features, target, fg, self.margin, self.max_normal, self.max_anomalous)
            )
            with torch.no_grad():
                # The released diagnostic (get_focal_loss): per level, precision and recall of gate > 0.5 against
                # the level mask, each count + 1e-5 in the denominator (0, not NaN, when nothing is predicted).
                positive, actual = out.gate > 0.5, target > 0.5
                hits = (positive & actual).sum()
                precision = precision + hits / (positive.sum() + 1e-5)
                recall = recall + hits / (actual.sum() + 1e-5)
        # Averaged over the levels, as the released code logs them (and selects its stage-I checkpoint by).
        return StageOneTerms(
            raw,
            levels,
            focal,
            amplification,
            torch.as_tensor(precision / len(levels)).float(),
            torch.as_tensor(recall / len(levels)).float(),
        )

    def stage1_loss(self, batch: dict) -> dict[str, Tensor]:
        """Focal loss on the gates + weight x amplification loss, each summed over the levels."""
        return self.stage1_objective(self.stage1_terms(batch))

    def stage1_objective(self, terms: StageOneTerms) -> dict[str, Tensor]:
        """Stage I's loss (``loss``) and logged parts from the terms of :meth:`stage1_terms`."""
        focal, amplification = sum(terms.focal), sum(terms.amplification)
        return {
            "loss": focal + self.amplification_weight * amplification,
            "focal": focal.detach(),
            "amplification": amplification.detach(),
            "gate_precision": terms.precision,
            "gate_recall": terms.recall,
        }

    def amplified(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Raw and amplified (soft predicted gate) teacher features of ``images``."""
        raw = self.teacher(images)
        return raw, [out.features for out in self.amplifier(raw)]

    def stage2_features(self, batch: dict) -> tuple[list[Tensor], list[Tensor]]:
        """Stage II's targets (amplified teacher features of the normal images, soft gate, no gradient) and the
        student's reconstruction of them from the OCBE embedding of those same amplified features."""
        with torch.no_grad():
            _, target = self.amplified(batch["image"])
        return target, self.decoder(self.bottleneck(target))

    def student_objective(self, target: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
        """The stage-II loss of the student's pyramid against the targets (HKD or a plain distance)."""
        if self.student_loss == "hkd":
            return hard_knowledge_distillation_loss(target, student, self.hkd_topk)
        return distillation_loss(self.student_loss, target, student)

    def stage2_loss(self, batch: dict) -> dict[str, Tensor]:
        """Distil the frozen amplified teacher into OCBE + decoder, on the normal training images."""
        return {"loss": self.student_objective(*self.stage2_features(batch))}

    def student_warmup_loss(self, batch: dict) -> dict[str, Tensor]:
        """RD's loss for the student on the *raw* teacher features of the normal images: kdad's warm-up, run
        during stage I (``AANDModule(student_warmup="rd")``), so that stage II fine-tunes the student instead of
        starting it from scratch. Where the gate is closed the amplified features equal these raw ones."""
        raw = self.teacher(batch["image"])
        return {"loss": distillation_loss("global_cosine", raw, self.decoder(self.bottleneck(raw)))}

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
