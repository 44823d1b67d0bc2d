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
    """RD: frozen teacher E -> OCBE -> mirrored decoder D, trained to reproduce E's three feature maps.

    Paper: the distillation loss is a per-pixel cosine distance; the anomaly map sums the per-level 1 - cos maps.
    Released code (RD4AD): the loss flattens each C x H x W map into one vector (global cosine); OCBE and decoder
    are He-normal (fan_out) with unit BatchNorm, except the decoder's transposed convs, which its init loop misses
    (they are not ``nn.Conv2d``) and so keep PyTorch's default.
    kdad: the released loss (``loss='global_cosine'``); He-normal for the transposed convs too
    (``upsample_init='kaiming'``; ``'torch_default'`` is the released initialisation). Proven against the released
    code by ``tests/test_parity_rd.py`` (see the README's "Parity with the released code").

    Args:
        teacher: the frozen teacher E (three taps).
        bottleneck_blocks: residual units of the one-class embedding (RD4AD: 3).
        decoder_blocks: residual blocks per decoder stage, deepest first (RD4AD: 3, 4, 6).
        block: ``bottleneck`` or ``basic`` residual units in OCBE and decoder.
        loss: the distillation distance, a ``kdad.blocks.losses`` name.
        anomaly_map: the map head (default: RD's, sum of 1 - cos maps, sigma 4, max).
        upsample_init: initialisation of the decoder's transposed convs: ``kaiming`` or ``torch_default``.
    """

    def __init__(
        self,
        teacher: Teacher,
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        loss: str = "global_cosine",
        anomaly_map: AnomalyMapHead | None = None,
        upsample_init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.bottleneck = OneClassBottleneck(teacher.channels, num_blocks=bottleneck_blocks, block=block)
        self.decoder = MirroredDecoder(
            teacher.channels,
            self.bottleneck.out_channels,
            blocks=decoder_blocks,
            block=block,
            upsample_init=upsample_init,
        )
        self.loss_name = loss
        self.anomaly_map = anomaly_map or AnomalyMapHead()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group: the student (OCBE + decoder); the teacher is frozen."""
        return {"student": [*self.bottleneck.parameters(), *self.decoder.parameters()]}

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher = self.teacher(images)
        return teacher, self.decoder(self.bottleneck(teacher))
