"""RD: reverse distillation from a one-class embedding (Deng & Li, CVPR 2022).

Frozen teacher -> OCBE (multi-scale fusion + one-class embedding) -> mirrored decoder trained to reproduce
the teacher's three feature maps. Faithful to the released RD4AD code: the flattened global cosine loss
(``loss='global_cosine'``; the paper's per-pixel form is ``'pixel_cosine'``), Adam lr 0.005 betas (0.5, 0.999)
over OCBE + decoder (see ``conf/method/rd.yaml``), maps = sum over scales of bilinear-upsampled 1 - cos
(align_corners=True), Gaussian sigma 4, image score = max.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.bottleneck import OneClassBottleneck
from kdad.blocks.decoder import MirroredDecoder
from kdad.blocks.teacher import Teacher
from kdad.methods.distillation import FeatureDistillation


class ReverseDistillation(FeatureDistillation):
    def __init__(
        self,
        teacher: Teacher,
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        loss: str = "global_cosine",
        anomaly_map: AnomalyMapHead | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.bottleneck = OneClassBottleneck(teacher.channels, num_blocks=bottleneck_blocks, block=block)
        self.decoder = MirroredDecoder(
            teacher.channels, self.bottleneck.out_channels, blocks=decoder_blocks, block=block
        )
        self.loss_name = loss
        self.anomaly_map = anomaly_map or AnomalyMapHead()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group: the student (OCBE + decoder); the teacher is frozen."""
        return {"student": [*self.bottleneck.parameters(), *self.decoder.parameters()]}

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher = self.teacher(images)
        return teacher, self.decoder(self.bottleneck(teacher))
