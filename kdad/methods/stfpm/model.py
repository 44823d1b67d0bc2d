"""STFPM: student-teacher feature pyramid matching (Wang et al., BMVC 2021).

The student has the teacher's architecture with random weights and is fed the image; each tapped level is
matched to the teacher's with the channel-normalised squared L2 distance. The student is
:func:`~kdad.blocks.teacher.encoder_student`, which DSKD uses as its encoder student too. What is faithful to the
released code (``gdwang08/STFPM`` @ 2598a5e), what kdad decided differently and the switch that restores the
released behaviour are listed in :class:`StudentTeacherPyramid` and in README.md beside this file;
``tests/test_parity_stfpm.py`` checks the released setting numerically against the released code.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdad.blocks.anomaly_map import AnomalyMapHead, finest_size, fuse_scales
from kdad.blocks.losses import BATCH_REDUCTIONS, distance
from kdad.blocks.teacher import Teacher, encoder_student
from kdad.errors import check_choice
from kdad.methods.distillation import FeatureDistillation

VAL_CRITERIA = ("loss", "map")


class StudentTeacherPyramid(FeatureDistillation):
    """STFPM's student-teacher pyramid; every default is kdad's, every released setting is one switch away.

    The paper: loss 1/2 * sum_k mean_{h,w} ||t̂_k - ŝ_k||^2 (t̂, ŝ channel-normalised), the map the product of the
    per-level distances, ResNet18 with random init as the student.

    The released code (``main.py``, checked numerically by ``tests/test_parity_stfpm.py``): no 1/2 in the loss;
    the loss averaged over batch and positions (``torch.sum(d, 1).mean()``); SGD lr 0.4, momentum 0.9, weight decay
    1e-4; per-level map ||t̂ - ŝ||^2 (= 2 - 2cos) bilinearly resized to 64x64 (``align_corners=False``), product,
    ``cv2.resize`` to 256, no smoothing, image score = max; student = ``torchvision.models.resnet18()`` (no
    zero-init of the residual branches); checkpoint = lowest mean of the 64x64 product map on a 20 % normal-only
    split.

    kdad, argument by argument:

    * ``loss`` ('stfpm', the released distance, no 1/2: a constant the SGD learning rate absorbs; or
      'pixel_cosine' / 'global_cosine').
    * ``batch_reduction``: 'mean' (default, the released reduction) or 'sum' (the loss summed over the batch:
      kdad's default before the parity check showed that the released code averages; B times the step).
    * ``anomaly_map``: the head of ``conf/method/stfpm.yaml`` (product, sigma 0, ``align_corners=False``, max).
      kdad's defaults there are ``distance='cosine'`` (1 - cos: exactly 1/2 of the released level map, so the
      fused product is 1/8 of the released one, same ranking) and ``fuse_at='input'`` (each level upsampled to
      the input size, then multiplied: every method fuses at the input resolution). The released map is
      ``distance='normalised_l2'``, ``fuse_at='finest'``; the product of upsampled maps and the upsampled product
      differ by interpolation detail only (measured in README.md: image scores within 1 %).
    * ``zero_init_last``: None (default, timm's: for a ResNet each block's last BatchNorm weight starts at zero,
      for the default EfficientNet teacher there is no such option) or False (torchvision's init, the released
      student; ResNet teachers only). See :func:`~kdad.blocks.teacher.encoder_student`.
    * ``val_criterion``: what ``loss`` returns outside training (the ``checkpoint=val_loss`` monitor): 'loss'
      (default, the training loss, as every kdad method) or 'map' (the mean of the level maps fused by the head
      at the finest level's resolution: the released criterion, ``test(...).mean()`` on the split, with the
      released head). The split itself is kdad's data module's (``data.val_split``, seeded; not sklearn's
      ``train_test_split(test_size=0.2, random_state=0)``).
    """

    def __init__(
        self,
        teacher: Teacher,
        loss: str = "stfpm",
        anomaly_map: AnomalyMapHead | None = None,
        batch_reduction: str = "mean",
        zero_init_last: bool | None = None,
        val_criterion: str = "loss",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = encoder_student(teacher, zero_init_last=zero_init_last)
        self.loss_name = loss
        self.distance = distance(loss)
        self.batch_reduction = check_choice(batch_reduction, BATCH_REDUCTIONS, "batch_reduction")
        self.val_criterion = check_choice(val_criterion, VAL_CRITERIA, "STFPM val_criterion")
        self.anomaly_map = anomaly_map or AnomalyMapHead(fusion="product", sigma=0.0, align_corners=False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group: the student; the teacher is frozen."""
        return {"student": list(self.student.parameters())}

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.teacher(images), list(self.student(images))

    def loss(self, batch: dict) -> dict[str, Tensor]:
        teacher, student = self.features(batch["image"])
        if not self.training and self.val_criterion == "map":
            head = self.anomaly_map
            levels = head.scale_maps(teacher, student)
            return {"loss": fuse_scales(levels, finest_size(levels), head.fusion, head.align_corners).mean()}
        return {"loss": self.distance(teacher, student, batch_reduction=self.batch_reduction)}

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, batch_reduction={self.batch_reduction}, val_criterion={self.val_criterion}"
