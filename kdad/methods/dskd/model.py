"""DSKD: dual-student knowledge distillation (Yao & Gao, arXiv 2402.00448), kdad's documented interpretation.

No official code is public and only the abstract and third-party summaries are known, so this module
implements the specification in ``kdad/methods/dskd/README.md`` (the project's decision), not a reproduction.

From the paper (abstract): one frozen pretrained teacher; two students "of the same scale with inverted
structures"; pyramid matching on multi-scale intermediate features; a deep-feature (DF) embedding module through
which the two students interact; pixel-wise maps from teacher-student discrepancies fused across scales; an
image score from the map.

kdad's reading, composed from the shared blocks:

* ``Se``: the teacher's architecture with random weights, fed the image (STFPM's student,
  ``kdad.blocks.teacher.encoder_student``); its three taps are matched to the teacher's (forward pyramid).
* ``DF``: RD's one-class bottleneck (``kdad.blocks.bottleneck.OneClassBottleneck``) applied to Se's three taps:
  strided convs to the deepest scale, concatenation, residual units with one more downsampling.
* ``Sd``: the mirrored decoder (``kdad.blocks.decoder.MirroredDecoder``) from the DF code back to the three
  scales, matched to the teacher's (reverse pyramid, as RD). With basic blocks (2, 2, 2) it is ResNet18's
  layers 1-3 inverted, i.e. "the same scale, inverted structure".
* Joint training: L = w_se * sum_k d(T_k, Se_k) + w_sd * sum_k d(T_k, Sd_k). Sd's loss reaches Se through DF
  (the "interaction"); ``df_gradient=False`` detaches Se's features before DF (ablation).
* Map: per student and level the per-pixel 1 - cos, upsampled and fused over levels (``anomaly_map.fusion``:
  sum or product), optionally divided by the student's normal level (``map_norm``), fused over students
  (``student_fusion``: mean or product), Gaussian blur, max. Each student's own map is reported as an auxiliary
  output (``se/<metric>``, ``sd/<metric>``) from the same trained model.
* ``students='se'`` is STFPM trained with DSKD's optimiser and map head; ``students='sd'`` trains Se, DF and Sd
  with Sd's loss only (Se becomes a learned encoder feeding the bottleneck: RD with an image-fed, trainable
  front end).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.bottleneck import OneClassBottleneck
from kdad.blocks.decoder import MirroredDecoder
from kdad.blocks.losses import BATCH_REDUCTIONS, distance
from kdad.blocks.teacher import Teacher, encoder_student
from kdad.errors import check_choice
from kdad.methods.base import AnomalyModel, AnomalyOutput
from kdad.methods.dskd.students import STUDENT_FUSIONS, RunningLevelMean, fuse_students

STUDENTS = ("both", "se", "sd")
MAP_NORMS = ("none", "student", "level")


def batch_mean_distance(name: str) -> Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]:
    """The shared distance ``name`` (``kdad.blocks.losses``), averaged over the batch.

    Every distance is first averaged over the batch, so the two students' weights mean the same whatever the
    distance; ``batch_reduction='sum'`` then multiplies the weighted total by the batch size. That default was
    chosen as "STFPM's released reduction", but the released STFPM averages its loss over the batch
    (``torch.sum(d, 1).mean()``, checked by tests/test_parity_stfpm.py): with 'sum' DSKD's SGD step is B times
    the released STFPM step at the same lr. Kept as DSKD's default (no DSKD code exists to settle it; its
    measured results were trained so); 'mean' is the released STFPM scale.
    """
    return functools.partial(distance(name), batch_reduction="mean")


class DualStudentDistillation(AnomalyModel):
    """Teacher T (frozen), encoder student Se, DF embedding, decoder student Sd; see the module docstring.

    ``students``: 'both' (DSKD), 'se' (encoder student only: no DF/Sd is built) or 'sd' (decoder student only:
    Se + DF + Sd trained by Sd's loss). ``loss`` is the distance of both students unless ``se_loss`` /
    ``sd_loss`` override it. ``se_lr`` (None: the optimiser's lr) gives Se its own learning rate.
    ``map_norm``: 'none', 'student' (divide each student's level-fused map by its normal level, the running
    training mean; fusion-consistent: sum of level means for a sum, their product for a product) or 'level'
    (divide every level map by its running training mean before fusing levels: also re-weights the levels).
    """

    def __init__(
        self,
        teacher: Teacher,
        students: str = "both",
        embedding_blocks: int = 3,
        embedding_block: str = "bottleneck",
        decoder_blocks: Sequence[int] = (2, 2, 2),
        decoder_block: str = "basic",
        loss: str = "stfpm",
        se_loss: str | None = None,
        sd_loss: str | None = None,
        se_weight: float = 1.0,
        sd_weight: float = 1.0,
        batch_reduction: str = "sum",
        df_gradient: bool = True,
        student_fusion: str = "mean",
        map_norm: str = "none",
        norm_momentum: float = 0.1,
        se_lr: float | None = None,
        anomaly_map: AnomalyMapHead | None = None,
    ) -> None:
        super().__init__()
        check_choice(students, STUDENTS, "students")
        check_choice(batch_reduction, BATCH_REDUCTIONS, "batch_reduction")
        check_choice(map_norm, MAP_NORMS, "map_norm")
        check_choice(student_fusion, STUDENT_FUSIONS, "student fusion")
        if students == "sd" and not df_gradient:
            warnings.warn(
                "DSKD students=sd with df_gradient=false trains Sd on a random, frozen encoder student",
                stacklevel=2,
            )
        self.teacher = teacher
        self.students = students
        self.se_loss_name = se_loss or loss
        self.sd_loss_name = sd_loss or loss
        self.se_distance = batch_mean_distance(self.se_loss_name)
        self.sd_distance = batch_mean_distance(self.sd_loss_name)
        self.se_weight = float(se_weight)
        self.sd_weight = float(sd_weight)
        self.batch_reduction = batch_reduction
        self.df_gradient = bool(df_gradient)
        self.student_fusion = student_fusion
        self.map_norm = map_norm
        self.se_lr = se_lr
        self.anomaly_map = anomaly_map or AnomalyMapHead(fusion="sum", sigma=4.0)
        levels = len(teacher.channels)

        self.encoder = encoder_student(teacher)
        self.se_level_mean = RunningLevelMean(levels, norm_momentum)
        self.embedding: OneClassBottleneck | None = None
        self.decoder: MirroredDecoder | None = None
        if students != "se":
            self.embedding = OneClassBottleneck(teacher.channels, num_blocks=embedding_blocks, block=embedding_block)
            self.decoder = MirroredDecoder(
                teacher.channels, self.embedding.out_channels, blocks=decoder_blocks, block=decoder_block
            )
            self.sd_level_mean = RunningLevelMean(levels, norm_momentum)

    # ------------------------------------------------------------------ structure
    @property
    def uses_se(self) -> bool:
        return self.students in ("both", "se")

    @property
    def uses_sd(self) -> bool:
        return self.students in ("both", "sd")

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``se`` (Se) and ``df_sd`` (DF + Sd), in one optimiser. Se is left out when nothing trains it."""
        groups: dict[str, list[nn.Parameter]] = {}
        if self.uses_se or self.df_gradient:
            groups["se"] = list(self.encoder.parameters())
        if self.uses_sd:
            groups["df_sd"] = [*self.embedding.parameters(), *self.decoder.parameters()]
        return groups

    def parameter_options(self) -> dict[str, dict[str, Any]]:
        """Se's own learning rate when ``se_lr`` is set: one SGD, two learning rates (momentum kept per group)."""
        if self.se_lr is None or "se" not in self.parameter_groups():
            return {}
        return {"se": {"lr": float(self.se_lr)}}

    def features(self, images: Tensor) -> dict[str, list[Tensor]]:
        """Teacher, Se and (when built and used) Sd pyramids, shallow to deep."""
        out = {"teacher": self.teacher(images), "se": list(self.encoder(images))}
        if self.uses_sd:
            se = out["se"] if self.df_gradient else [f.detach() for f in out["se"]]
            out["sd"] = self.decoder(self.embedding(se))
        return out

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict) -> dict[str, Tensor]:
        feats = self.features(batch["image"])
        teacher = feats["teacher"]
        parts: dict[str, Tensor] = {}
        total = teacher[0].new_zeros(())
        scale = teacher[0].shape[0] if self.batch_reduction == "sum" else 1
        if self.uses_se:
            parts["se"] = self.se_distance(teacher, feats["se"])
            total = total + self.se_weight * scale * parts["se"]
        if self.uses_sd:
            parts["sd"] = self.sd_distance(teacher, feats["sd"])
            total = total + self.sd_weight * scale * parts["sd"]
        if self.training:
            self._track_normal_levels(feats)
        return {"loss": total, **parts}

    @torch.no_grad()
    def _track_normal_levels(self, feats: dict[str, list[Tensor]]) -> None:
        """Running mean of each level's per-pixel map (the head's distance, 1 - cos by default) on the (normal)
        training batches, so ``map_norm`` divides a map by the normal level of the same distance."""
        for name in ("se", "sd"):
            if name in feats:
                levels = self.anomaly_map.scale_maps(feats["teacher"], feats[name])
                getattr(self, f"{name}_level_mean").update([m.mean() for m in levels])

    # ------------------------------------------------------------------ inference
    def student_map(self, teacher: Sequence[Tensor], student: Sequence[Tensor], name: str, size: tuple[int, int]):
        """One student's level-fused [B,1,H,W] map, normalised by its normal level when ``map_norm`` says so."""
        head = self.anomaly_map
        levels = head.scale_maps(teacher, student)
        normal = getattr(self, f"{name}_level_mean").value.clamp_min(1e-8)
        if self.map_norm == "level":
            levels = [m / normal[k] for k, m in enumerate(levels)]
        fused = head.fuse(levels, size)
        if self.map_norm == "student":
            fused = fused / (normal.sum() if head.fusion == "sum" else normal.prod())
        return fused

    def forward(self, images: Tensor) -> AnomalyOutput:
        size = tuple(images.shape[-2:])
        feats = self.features(images)
        teacher = feats["teacher"]
        used = [name for name in ("se", "sd") if getattr(self, f"uses_{name}")]
        maps = {name: self.student_map(teacher, feats[name], name, size) for name in used}
        fused = fuse_students(list(maps.values()), self.student_fusion)
        score, anomaly_map = self.anomaly_map.finalise(fused)
        auxiliary = {name: self.anomaly_map.finalise(m) for name, m in maps.items()} if len(maps) > 1 else {}
        return AnomalyOutput(score=score, anomaly_map=anomaly_map, auxiliary=auxiliary)

    def extra_repr(self) -> str:
        return (
            f"students={self.students}, se_loss={self.se_loss_name}, sd_loss={self.sd_loss_name}, "
            f"weights=({self.se_weight}, {self.sd_weight}), df_gradient={self.df_gradient}, "
            f"scale_fusion={self.anomaly_map.fusion}, student_fusion={self.student_fusion}, map_norm={self.map_norm}"
        )
