"""The common shape of a teacher-student method: features -> distillation loss, and features -> map.

RD, STFPM and RD++ (through RD) distil with one distance between two pyramids; RD with Expert has its own losses
but maps exactly like them (discrepancy of the inference pyramids through the map head), so it reuses ``forward``.
"""

from __future__ import annotations

import abc

from torch import Tensor

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.losses import distillation_loss
from kdad.methods.base import AnomalyModel, AnomalyOutput


class FeatureDistillation(AnomalyModel):
    """Subclasses define ``features(images) -> (teacher_features, student_features)`` and ``parameter_groups()``;
    training minimises ``loss_name`` (a ``kdad.blocks.losses`` distance) between the two pyramids unless a subclass
    overrides ``loss``, and inference maps their discrepancy with ``anomaly_map``."""

    loss_name: str
    anomaly_map: AnomalyMapHead

    @abc.abstractmethod
    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Teacher and student feature pyramids (shallow to deep) for a batch of images."""

    def loss(self, batch: dict) -> dict[str, Tensor]:
        teacher, student = self.features(batch["image"])
        return {"loss": distillation_loss(self.loss_name, teacher, student)}

    def forward(self, images: Tensor) -> AnomalyOutput:
        teacher, student = self.features(images)
        score, anomaly_map = self.anomaly_map(teacher, student, tuple(images.shape[-2:]))
        return AnomalyOutput(score=score, anomaly_map=anomaly_map)
