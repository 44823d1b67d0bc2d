"""STFPM: student-teacher feature pyramid matching (Wang et al., BMVC 2021).

The student has the teacher's architecture with random weights and is fed the image; each tapped level is
matched to the teacher's with the channel-normalised squared L2 distance. Faithful to the official code:
SGD lr 0.4, momentum 0.9, weight decay 1e-4 (``conf/method/stfpm.yaml``), the per-level map is the same
distance (= 2 - 2cos; kdad uses 1 - cos, a constant factor that cannot change any ranking), maps multiplied
across levels, no Gaussian smoothing (``anomaly_map.sigma=0``), image score = max. The official checkpoint
policy (best loss on a 20 % normal-only split) is ``checkpoint=val_loss``. The student is
:func:`~kdad.blocks.teacher.encoder_student`, which DSKD uses as its encoder student too.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.teacher import Teacher, encoder_student
from kdad.methods.distillation import FeatureDistillation


class StudentTeacherPyramid(FeatureDistillation):
    def __init__(
        self,
        teacher: Teacher,
        loss: str = "stfpm",
        anomaly_map: AnomalyMapHead | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.student = encoder_student(teacher)
        self.loss_name = loss
        self.anomaly_map = anomaly_map or AnomalyMapHead(fusion="product", sigma=0.0, align_corners=False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group: the student; the teacher is frozen."""
        return {"student": list(self.student.parameters())}

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.teacher(images), list(self.student(images))
