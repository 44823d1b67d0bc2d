"""One-class bottleneck embedding (OCBE): RD's multi-scale fusion + one-class embedding, sized from channels.

For a WRN50 teacher (channels 256/512/1024) this is exactly RD4AD's layout: level 1 goes through two strided
3x3 conv-BN-ReLU (256->512->1024), level 2 through one (512->1024), both are concatenated with level 3
(3072 @ 16x16), and one bottleneck stage of 3 units (inner width 1024, stride 2) embeds them into
2048 @ 8x8. For other teachers every width follows from the teacher's channels (c1, c2, c3): fusion widths
c2 then c3, embedding width c3, output 2*c3. DSKD reuses the same module as its deep-feature embedding.
RD4AD also builds a fourth 1x1 conv that its forward never uses; it is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdad.blocks.residual import conv_bn, kaiming_init, residual_stage


class OneClassBottleneck(nn.Module):
    def __init__(
        self,
        channels: Sequence[int],
        num_blocks: int = 3,
        out_channels: int | None = None,
        width: int | None = None,
        block: str = "bottleneck",
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"OCBE fuses exactly three feature levels, got channels={list(channels)}")
        c1, c2, c3 = channels
        self.out_channels = out_channels or 2 * c3
        self.level1 = nn.Sequential(conv_bn(c1, c2, 3, stride=2), conv_bn(c2, c3, 3, stride=2))
        self.level2 = conv_bn(c2, c3, 3, stride=2)
        self.embed = residual_stage(3 * c3, self.out_channels, width or c3, num_blocks, stride=2, kind=block)
        kaiming_init(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        f1, f2, f3 = features
        fused = torch.cat([self.level1(f1), self.level2(f2), f3], dim=1)
        return self.embed(fused)
