"""Guided Information Injection (GII) of RD with Expert (Liu et al., AAAI 2025; released code ``hito2448/URD``).

Between two stages of RD's mirrored decoder, teacher detail is injected into the student. With ``a`` the decoder's
output at a level, ``T_deep`` the teacher's feature at the same level and ``T_shallow`` the next shallower one:

    context = FE(T_deep + DS(T_shallow))        DS = bilinear x0.5 -> conv1x1 -> BN -> ReLU;  FE = conv3x3-BN-ReLU
    gated    (the paper's GII):  s = cos_channel(a, T_deep) per pixel, without gradient
                                 next = FS(concat[a, SA(context * s + a * (1 - s))])
    released (what the released train/test scripts run):  next = FS(concat[a, context])

FS and SA are conv3x3-BN-ReLU (FS halves the concatenated channels). ``s`` is the raw cosine (not clamped), as in
the code. The released scripts call the student with ``attn=True``, which dispatches to the path *without* the
similarity gating and leaves SA unused (it is still constructed there); kdad builds SA only in ``gated`` mode.
The gated path injects teacher detail where the student already agrees with the teacher and falls back to the
student's own features where they disagree (likely anomalies).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdad.blocks.decoder import MirroredDecoder
from kdad.blocks.residual import conv_bn
from kdad.errors import check_choice

GII_MODES = ("gated", "released")


class GuidedInjection(nn.Module):
    """One GII unit producing the input of the next decoder stage (``deep_channels`` wide)."""

    def __init__(self, deep_channels: int, shallow_channels: int, mode: str = "gated") -> None:
        super().__init__()
        self.mode = check_choice(mode, GII_MODES, "GII mode")
        self.downsample = conv_bn(shallow_channels, deep_channels, 1)
        self.fuse_teacher = conv_bn(deep_channels, deep_channels, 3)
        self.attend = conv_bn(deep_channels, deep_channels, 3) if mode == "gated" else None
        self.fuse = conv_bn(2 * deep_channels, deep_channels, 3)

    def context(self, deep: Tensor, shallow: Tensor) -> Tensor:
        """Teacher context FE(T_deep + DS(T_shallow)) at the deep level's resolution."""
        down = F.interpolate(shallow, size=deep.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse_teacher(deep + self.downsample(down))

    @staticmethod
    def similarity(decoded: Tensor, deep: Tensor) -> Tensor:
        """Per-pixel channel cosine between the decoder output and the teacher, [B,1,H,W], no gradient."""
        with torch.no_grad():
            return F.cosine_similarity(decoded.detach(), deep.detach(), dim=1).unsqueeze(1)

    def gate(self, context: Tensor, decoded: Tensor, similarity: Tensor) -> Tensor:
        """SA(context * s + decoded * (1 - s)): teacher context where s = 1, the decoder path where s = 0."""
        assert self.attend is not None
        return self.attend(context * similarity + decoded * (1.0 - similarity))

    def forward(self, decoded: Tensor, deep: Tensor, shallow: Tensor, similarity: Tensor | None = None) -> Tensor:
        """Next stage input from decoder output ``decoded`` and teacher features; ``similarity`` overrides s."""
        context = self.context(deep, shallow)
        if self.mode == "released":
            return self.fuse(torch.cat([decoded, context], dim=1))
        s = self.similarity(decoded, deep) if similarity is None else similarity
        return self.fuse(torch.cat([decoded, self.gate(context, decoded, s)], dim=1))


class InjectedDecoder(nn.Module):
    """RD's mirrored decoder run stage by stage, with a GII unit before each stage but the first.

    Takes the bottleneck embedding and the teacher features (shallow to deep) that guide the injection; returns the
    decoder's outputs shallow to deep, like :class:`~kdad.blocks.decoder.MirroredDecoder`.
    """

    def __init__(
        self,
        channels: Sequence[int],
        in_channels: int,
        blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        mode: str = "gated",
    ) -> None:
        super().__init__()
        self.decoder = MirroredDecoder(channels, in_channels, blocks=blocks, block=block)
        deep_to_shallow = list(reversed(list(channels)))
        # Unit k sits after decoder stage k: deep level = deep_to_shallow[k], shallow = deep_to_shallow[k + 1].
        self.injections = nn.ModuleList(
            GuidedInjection(deep_to_shallow[k], deep_to_shallow[k + 1], mode) for k in range(len(channels) - 1)
        )

    def forward(self, embedding: Tensor, teacher: Sequence[Tensor]) -> list[Tensor]:
        guide = list(reversed(list(teacher)))  # deep to shallow
        outputs = []
        x = embedding
        for k, stage in enumerate(self.decoder.stages):
            if k > 0:
                x = self.injections[k - 1](x, guide[k - 1], guide[k])
            x = stage(x)
            outputs.append(x)
        return outputs[::-1]
