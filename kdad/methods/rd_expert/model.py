"""RD with Expert (Liu, Wang, Leng, Zhang, AAAI 2025, arXiv 2412.07579; the released code: the URD repository,
``hito2448/URD``) and RD++ with Expert, the RD++-flavoured variant kdad calls ``rdpp_expert``.

Three networks (faithful to the released code):

* expert E: the pretrained backbone, frozen (a :class:`~kdad.blocks.teacher.Teacher` with ``frozen=True``);
* teacher T: a second copy of the same pretrained backbone, **fully trainable** (Adam 1e-4, betas (0.5, 0.999)),
  BatchNorm in train mode while it is updated, so its running statistics drift on normal + synthetic images;
* student S: RD's OCBE + mirrored decoder with Guided Information Injection from T's features
  (:class:`~kdad.methods.rd_expert.injection.InjectedDecoder`), Adam 0.005, betas (0.5, 0.999); every ``nn.Conv2d`` /
  ``nn.Linear`` of the student re-initialised Xavier-normal as in the code (``init``: by default the decoder's
  transposed convolutions keep kdad's shared decoder init, Kaiming-normal; the released code's keep PyTorch's
  default, which ``init: released`` reproduces).

Losses (released version, after the 2025-01-21 commits; M = synthetic mask, bilinearly resized per level with
``align_corners=True`` and thresholded at 0.5, see ``mask_levels``; cos_p per pixel over channels, cos_g over
whole flattened maps):

* ``L_T = sum_k [ mean(1 - cos_p(T_k(x), E_k(x))) + L1(1 - cos_p(T_k(x~), E_k(x)), M_k)
  + (1 - cos_g(T_k(x~), E_k(x~))) ]``
* ``L_S = sum_k [ 1 - cos_g(S_k(T(x)), T_k(x)) + 1 - cos_g(S_k(T(x~)), T_k(x)) + 1 - cos_g(S_k(T(x)), E_k(x))
  + 1 - cos_g(S_k(T(x~)), E_k(x)) ]``

Per iteration (``optimizer_steps``): E(x), E(x~) without gradient; T in train mode -> L_T -> step T; T in eval mode,
T(x), T(x~) recomputed without gradient; S on both -> L_S -> step S. Each of T(x), T(x~), S(.) is its own forward
pass (its own BatchNorm batch statistics), as in the code. Inference uses T and S only: map = sum over levels of
upsampled 1 - cos_p(S_k, T_k), Gaussian sigma 4, image score = max (RD's head).

GII (``gii``): ``gated`` (default) is the similarity-gated injection the paper describes; ``released`` is the
ungated path the released train/test scripts actually run (their ``attn=True`` flag selects it). kdad defaults to
the paper because the method is defined by it; ``gii: released`` reproduces the code path.

Mask per level (``mask_levels``): ``direct`` (kdad's default) resizes the full-resolution mask to every level;
the released ``Teacher.loss_distil_aug_p`` reassigns its ``anomaly_mask`` argument inside the level loop, so each
level is resized from the previous level's *binarised* mask (``chained``). The two differ on a few boundary
positions of the coarser levels (measured on tests/parity.py's mask: 1 of 23 anomalous positions at 16x16 for a
128 px input). The chaining reads as an accident of the loop variable, not as a choice; ``chained`` reproduces it.

The parity test (tests/test_parity_rd_expert.py) runs the released settings ``gii: released, init: released,
mask_levels: chained`` (and the gated GII) against numbers recorded from the released code; see the README.

``rdpp_expert`` (RD++ with Expert, kdad's; the released code has no RD++ parts): the same
recipe with RD++'s projection layers P on the teacher side: the student consumes P(T(x)) while GII and every loss
target stay the raw T(x) (as RD++ keeps the raw encoder as target), and RD++'s projection loss on (T(x), T(x~)) is
added to the student stage with weight 0.2, P having its own Adam (0.001). The DRAEM pseudo-anomaly x~ plays the
role of RD++'s noisy image; there is no gradient accumulation (RD with Expert's iteration schedule).

The expert is a frozen pretrained Teacher, so checkpoints leave it out (``AnomalyModule.on_save_checkpoint``); the
trained teacher, projection and student are saved. ``expert=None`` builds an inference-only model (no expert in
memory) that loads those checkpoints.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.bottleneck import OneClassBottleneck
from kdad.blocks.losses import global_cosine_loss, pixel_cosine_loss
from kdad.blocks.projection import MultiProjection, ProjectionLoss
from kdad.blocks.teacher import Teacher
from kdad.errors import check_choice
from kdad.methods.base import pseudo_anomalies
from kdad.methods.distillation import FeatureDistillation
from kdad.methods.multi_optimizer import MultiOptimizerModel, OptimizerStep
from kdad.methods.rd_expert.injection import InjectedDecoder

TEACHER_BN_MODES = ("train", "eval")
STUDENT_INITS = ("xavier", "released", "kaiming")
MASK_LEVELS = ("direct", "chained")


def xavier_init(module: nn.Module) -> None:
    """The released student init: Xavier-normal weights for every ``nn.Conv2d`` and ``nn.Linear`` (biases untouched)."""
    for m in module.modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            nn.init.xavier_normal_(m.weight)


def released_init(module: nn.Module) -> None:
    """Exactly the released student init: :func:`xavier_init`, and PyTorch's default init for the transposed
    convolutions (``Student.apply(init_weight)`` skips them, and RD4AD's decoder constructor initialises only
    ``nn.Conv2d``), instead of kdad's shared decoder init (Kaiming-normal, fan_out)."""
    xavier_init(module)
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            m.reset_parameters()


def level_masks(mask: Tensor, features: Sequence[Tensor], rule: str = "direct") -> list[Tensor]:
    """The synthetic mask per level: bilinear resize (align_corners=True), then 1 where >= 0.5 (the released rule).

    ``rule='direct'`` resizes the full-resolution mask to every level (kdad); ``'chained'`` resizes each level
    from the previous level's binarised mask, as the released loop does (it overwrites its mask argument).
    """
    check_choice(rule, MASK_LEVELS, "mask_levels")
    out = []
    source = mask.float()
    for f in features:
        resized = F.interpolate(source, size=f.shape[-2:], mode="bilinear", align_corners=True)
        level = (resized >= 0.5).to(f.dtype)
        out.append(level)
        if rule == "chained":
            source = level.float()
    return out


def teacher_loss(
    teacher: Sequence[Tensor],
    teacher_aug: Sequence[Tensor],
    expert: Sequence[Tensor],
    expert_aug: Sequence[Tensor],
    mask: Tensor,
    mask_levels: str = "direct",
) -> dict[str, Tensor]:
    """RD with Expert's teacher loss L_T and its three parts (normal closeness, mask target, global closeness on x~).

    ``mask_levels``: how the mask reaches each level (:func:`level_masks`).
    """
    normal = pixel_cosine_loss(teacher, expert)
    target = sum(
        F.l1_loss(1.0 - F.cosine_similarity(t, e, dim=1).unsqueeze(1), m)
        for t, e, m in zip(teacher_aug, expert, level_masks(mask, expert, mask_levels), strict=True)
    )
    global_aug = global_cosine_loss(teacher_aug, expert_aug)
    return {"teacher": normal + target + global_aug, "t_normal": normal, "t_mask": target, "t_global": global_aug}


def student_loss(
    student: Sequence[Tensor], student_aug: Sequence[Tensor], teacher: Sequence[Tensor], expert: Sequence[Tensor]
) -> dict[str, Tensor]:
    """RD with Expert's student loss L_S: both student outputs must match the *clean* teacher and expert features."""
    to_teacher = global_cosine_loss(teacher, student) + global_cosine_loss(teacher, student_aug)
    to_expert = global_cosine_loss(expert, student) + global_cosine_loss(expert, student_aug)
    return {"student": to_teacher + to_expert, "s_teacher": to_teacher, "s_expert": to_expert}


START_GAP_LIMIT = 0.1


def warn_if_teacher_starts_far(t_normal: Tensor, levels: int, teacher_bn: str) -> None:
    """Warn when the teacher does not start as a copy of the expert (``t_normal``: L_T's first term, summed over
    ``levels``).

    RD with Expert's teacher loss assumes T = E at the first iteration. With ``teacher_bn: train`` the teacher
    normalises with the batch's statistics instead of ImageNet's, and on batches of one category that alone moves some
    backbones far from the expert: measured with EfficientNet-Lite0 at 128 px on the embedded benchmark, mean per-pixel
    1 - cos of 0.3-0.9 per level (0.16-0.48 even for its non-negative post-ReLU6 features; WRN50, which the recipe was
    tuned on, was not measurable here). The teacher then spends its budget undoing the shift instead of learning the
    mask.
    """
    gap = float(t_normal.detach()) / levels
    if gap > START_GAP_LIMIT:
        warnings.warn(
            f"RD with Expert: at the first iteration the teacher (BatchNorm in {teacher_bn} mode) is already "
            f"{gap:.2f} (mean 1 - cos per level) from the expert on normal images; the recipe assumes it starts as "
            "a copy. This backbone's batch statistics on this category differ from its pretrained ones; "
            "method.model.teacher_bn=eval keeps the pretrained statistics (ablation in "
            "kdad/methods/rd_expert/README.md).",
            stacklevel=2,
        )


class ReverseDistillationExpert(FeatureDistillation, MultiOptimizerModel):
    """Expert-teacher-student reverse distillation (``method=rd_expert``; with projection: ``rdpp_expert``).

    Args:
        teacher: the trainable teacher T (``frozen=False``), initialised from the pretrained weights.
        expert: the frozen expert E (same backbone); None for an inference-only model.
        gii: ``gated`` (the paper) or ``released`` (the released scripts' path).
        projection_loss: RD++'s projection loss; given, RD++'s projection layers are added (``rdpp_expert``).
        projection_weight: weight of the projection loss in the student stage (RD++: 0.2).
        bottleneck_blocks, decoder_blocks, block: OCBE / decoder sizes, as RD.
        init: ``xavier`` (kdad's default: the released Xavier-normal re-init of every ``nn.Conv2d``/``nn.Linear``,
            the transposed convolutions keeping kdad's shared decoder init, Kaiming-normal), ``released`` (exactly
            the released code: the transposed convolutions keep PyTorch's default init, :func:`released_init`) or
            ``kaiming`` (RD's).
        mask_levels: ``direct`` (kdad's default: every level from the full-resolution mask) or ``chained`` (the
            released code: each level from the previous level's binarised mask); :func:`level_masks`.
        teacher_bn: ``train`` (released: BatchNorm statistics follow the training batches while T is updated) or
            ``eval`` (kdad's ablation: T's BatchNorm keeps the pretrained statistics, only its weights move). With
            ``train``, the first iteration warns when T does not start close to E (:func:`warn_if_teacher_starts_far`).
        anomaly_map: the map head (RD's by default).
    """

    def __init__(
        self,
        teacher: Teacher,
        expert: Teacher | None,
        gii: str = "gated",
        projection_loss: ProjectionLoss | None = None,
        projection_weight: float = 0.2,
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        init: str = "xavier",
        teacher_bn: str = "train",
        anomaly_map: AnomalyMapHead | None = None,
        mask_levels: str = "direct",
    ) -> None:
        super().__init__()
        if teacher.frozen:
            raise ValueError("RD with Expert trains its teacher: build it with frozen=False")
        if expert is not None and (not expert.frozen or list(expert.channels) != list(teacher.channels)):
            raise ValueError("the expert must be a frozen backbone with the teacher's channels")
        check_choice(teacher_bn, TEACHER_BN_MODES, "teacher_bn")
        check_choice(init, STUDENT_INITS, "init")
        check_choice(mask_levels, MASK_LEVELS, "mask_levels")
        self.teacher = teacher
        self.expert = expert
        self.bottleneck = OneClassBottleneck(teacher.channels, num_blocks=bottleneck_blocks, block=block)
        self.decoder = InjectedDecoder(
            teacher.channels, self.bottleneck.out_channels, blocks=decoder_blocks, block=block, mode=gii
        )
        if init == "xavier":
            xavier_init(self.bottleneck)
            xavier_init(self.decoder)
        elif init == "released":
            released_init(self.bottleneck)
            released_init(self.decoder)
        self.projection = MultiProjection(teacher.channels) if projection_loss is not None else None
        self.projection_loss = projection_loss
        self.projection_weight = projection_weight
        self.gii = gii
        self.teacher_bn = teacher_bn
        self.mask_levels = mask_levels
        self.anomaly_map = anomaly_map or AnomalyMapHead()
        # Checked on the first training iteration only (RDExpertModule turns it off when a run resumes).
        self.check_start_gap = True

    # ------------------------------------------------------------ parameters
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The teacher, the student (OCBE + GII decoder) and, for ``rdpp_expert``, the projection: one optimiser
        each. The expert is frozen."""
        groups = {
            "teacher": list(self.teacher.parameters()),
            "student": [*self.bottleneck.parameters(), *self.decoder.parameters()],
        }
        if self.projection is not None:
            groups["projection"] = list(self.projection.parameters())
        return groups

    # ------------------------------------------------------------ networks
    def student(self, teacher: Sequence[Tensor], projected: Sequence[Tensor] | None = None) -> list[Tensor]:
        """S(T): OCBE over the (projected) teacher features, decoded with injection from the raw teacher features.

        ``projected`` passes P(T) when the caller has it already (``rdpp_expert``); it is computed otherwise.
        """
        if projected is None:
            projected = self.projection(teacher) if self.projection is not None else teacher
        return self.decoder(self.bottleneck(projected), teacher)

    def _expert(self, images: Tensor) -> list[Tensor]:
        if self.expert is None:
            raise RuntimeError("this model was built without an expert (inference only); training needs one")
        return self.expert(images)

    # ------------------------------------------------------------ losses
    def _student_parts(
        self, teacher: list[Tensor], teacher_aug: list[Tensor], expert: list[Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if self.projection is None or self.projection_loss is None:
            parts = student_loss(self.student(teacher), self.student(teacher_aug), teacher, expert)
            return parts["student"], parts
        projected, projected_aug = self.projection(teacher), self.projection(teacher_aug)
        student, student_aug = self.student(teacher, projected), self.student(teacher_aug, projected_aug)
        parts = student_loss(student, student_aug, teacher, expert)
        proj = self.projection_loss(teacher_aug, projected_aug, projected)
        return parts["student"] + self.projection_weight * proj["proj"], {**parts, **proj}

    def optimizer_steps(self, batch: dict) -> Iterator[OptimizerStep]:
        """One RD with Expert iteration: teacher stage (step T), then student stage on the updated teacher (step S)."""
        image = batch["image"]
        image_aug, mask = pseudo_anomalies(batch)
        expert, expert_aug = self._expert(image), self._expert(image_aug)

        self.teacher.train(self.teacher_bn == "train")
        t_parts = teacher_loss(self.teacher(image), self.teacher(image_aug), expert, expert_aug, mask, self.mask_levels)
        if self.check_start_gap:
            self.check_start_gap = False
            warn_if_teacher_starts_far(t_parts["t_normal"], len(expert), self.teacher_bn)
        yield OptimizerStep(("teacher",), t_parts["teacher"], t_parts)

        self.teacher.eval()
        with torch.no_grad():
            teacher, teacher_aug = self.teacher(image), self.teacher(image_aug)
        loss, s_parts = self._student_parts(teacher, teacher_aug, expert)
        optimizers = ("projection", "student") if self.projection is not None else ("student",)
        yield OptimizerStep(optimizers, loss, s_parts)

    def loss(self, batch: dict) -> dict[str, Tensor]:
        """Both losses on one batch without any update or mode switch (used for ``checkpoint=val_loss``)."""
        image = batch["image"]
        image_aug, mask = pseudo_anomalies(batch)
        expert, expert_aug = self._expert(image), self._expert(image_aug)
        teacher, teacher_aug = self.teacher(image), self.teacher(image_aug)
        t_parts = teacher_loss(teacher, teacher_aug, expert, expert_aug, mask, self.mask_levels)
        s_loss, s_parts = self._student_parts([t.detach() for t in teacher], [t.detach() for t in teacher_aug], expert)
        return {"loss": t_parts["teacher"] + s_loss, **t_parts, **s_parts}

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Inference networks without the map head: the teacher's pyramid T(x) and the student's S(T(x)); the map
        is :class:`FeatureDistillation`'s (their discrepancy through ``anomaly_map``)."""
        teacher = self.teacher(images)
        return teacher, self.student(teacher)
