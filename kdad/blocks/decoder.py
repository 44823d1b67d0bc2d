"""Mirrored decoder (RD's student): the teacher's stages in reverse, upsampling with transposed convs.

Sized from the teacher's channels (c1, c2, c3) and the embedding's channels: stage k outputs the channels of
teacher level 3, 2, 1 in turn, each doubling the resolution, with inner width out/2 (the "wide" decoder).
For WRN50 and ``blocks=(3, 4, 6)`` this is RD4AD's ``de_wide_resnet50_2`` (1024@16, 512@32, 256@64).
Outputs are returned shallow-to-deep, i.e. in the same order as the teacher's features.

Initialisation: He-normal convs and unit BatchNorm as RD4AD; ``upsample_init`` says whether the transposed convs
get He-normal too (``kaiming``, kdad's default) or keep PyTorch's default, as RD4AD's released decoder does
(``torch_default``; see :func:`kdad.blocks.residual.kaiming_init`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from kdad.blocks.residual import kaiming_init, residual_stage


class MirroredDecoder(nn.Module):
    def __init__(
        self,
        channels: Sequence[int],
        in_channels: int,
        blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        width_ratio: float = 0.5,
        upsample_init: str = "kaiming",
    ) -> None:
        super().__init__()
        if len(channels) != 3 or len(blocks) != 3:
            raise ValueError(f"decoder needs three levels, got channels={list(channels)} blocks={list(blocks)}")
        stages = []
        previous = in_channels
        for out_ch, count in zip(reversed(list(channels)), blocks, strict=True):
            width = max(1, int(out_ch * width_ratio))
            stages.append(residual_stage(previous, out_ch, width, count, stride=2, upsample=True, kind=block))
            previous = out_ch
        self.stages = nn.ModuleList(stages)
        kaiming_init(self, upsample_init)

    def forward(self, embedding: Tensor) -> list[Tensor]:
        outputs = []
        x = embedding
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]
