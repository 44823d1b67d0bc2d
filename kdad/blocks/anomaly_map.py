"""Anomaly-map head: per-scale teacher/student discrepancy, upsample, fuse, Gaussian blur, image score.

The RD family (RD, RD++, AAND, RD with Expert) uses 1 - cos over channels per scale, bilinear upsampling
with align_corners=True, a sum over scales, scipy's ``gaussian_filter(sigma=4)`` and the max as image score.
STFPM multiplies the scales. STFPM's 0.5*||t/|t| - s/|s|||^2 equals 1 - cos exactly, so one distance serves
both. The blur runs on the device as two 1-D convolutions with scipy's boundary rule ('reflect', which
repeats the edge pixel) and radius round(truncate * sigma), so it matches scipy to float precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cosine_distance(teacher: Tensor, student: Tensor) -> Tensor:
    """1 - cos over channels per position: [B,C,H,W] x2 -> [B,1,H,W]."""
    return 1.0 - F.cosine_similarity(teacher, student, dim=1).unsqueeze(1)


def fuse_scales(maps: Sequence[Tensor], size: tuple[int, int], mode: str = "sum", align_corners: bool = True) -> Tensor:
    """Upsample each [B,1,h,w] map to ``size`` and combine them by ``mode`` ('sum' or 'product')."""
    upsampled = [F.interpolate(m, size=size, mode="bilinear", align_corners=align_corners) for m in maps]
    if mode == "sum":
        return torch.stack(upsampled).sum(0)
    if mode == "product":
        return torch.stack(upsampled).prod(0)
    raise ValueError(f"unknown scale fusion '{mode}' (use 'sum' or 'product')")


def _symmetric_pad_index(length: int, radius: int, device: torch.device) -> Tensor:
    # scipy 'reflect' = (d c b a | a b c d | d c b a): the edge sample is repeated, unlike torch's 'reflect'.
    index = torch.arange(-radius, length + radius, device=device)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - 1 - index, index)


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of [B,1,H,W] maps matching ``scipy.ndimage.gaussian_filter``; sigma<=0 is identity."""

    def __init__(self, sigma: float = 4.0, truncate: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.radius = int(truncate * sigma + 0.5) if sigma > 0 else 0
        if self.radius > 0:
            x = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
            kernel = torch.exp(-0.5 * (x / sigma) ** 2)
            kernel = (kernel / kernel.sum()).float()
        else:
            kernel = torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        if self.radius == 0:
            return maps
        b, c, h, w = maps.shape
        x = maps.reshape(b * c, 1, h, w)
        k = self.kernel.to(dtype=x.dtype)
        rows = _symmetric_pad_index(h, self.radius, x.device)
        cols = _symmetric_pad_index(w, self.radius, x.device)
        x = F.conv2d(x.index_select(2, rows), k.view(1, 1, -1, 1))
        x = F.conv2d(x.index_select(3, cols), k.view(1, 1, 1, -1))
        return x.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, radius={self.radius}"


class AnomalyMapHead(nn.Module):
    """Per-scale 1 - cos maps -> fused full-resolution map -> blur -> (score, map).

    ``score`` is 'max' (every reference repo) or 'mean_topk' with ``topk_ratio`` of the pixels.
    """

    def __init__(
        self,
        fusion: str = "sum",
        sigma: float = 4.0,
        align_corners: bool = True,
        score: str = "max",
        topk_ratio: float = 0.01,
    ) -> None:
        super().__init__()
        if score not in {"max", "mean_topk"}:
            raise ValueError(f"unknown image score '{score}' (use 'max' or 'mean_topk')")
        self.fusion = fusion
        self.align_corners = align_corners
        self.score = score
        self.topk_ratio = topk_ratio
        self.blur = GaussianBlur(sigma)

    def scale_maps(self, teacher: Sequence[Tensor], student: Sequence[Tensor]) -> list[Tensor]:
        return [cosine_distance(t, s) for t, s in zip(teacher, student, strict=True)]

    def forward(
        self, teacher: Sequence[Tensor], student: Sequence[Tensor], size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        fused = fuse_scales(self.scale_maps(teacher, student), size, self.fusion, self.align_corners)
        return self.finalise(fused)

    def finalise(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """Blur a fused [B,1,H,W] map and reduce it to image scores; returns (scores [B], maps [B,H,W])."""
        maps = self.blur(fused.float()).squeeze(1)
        return image_score(maps, self.score, self.topk_ratio), maps


def image_score(maps: Tensor, reduction: str = "max", topk_ratio: float = 0.01) -> Tensor:
    flat = maps.flatten(1)
    if reduction == "max":
        return flat.amax(1)
    k = max(1, math.ceil(topk_ratio * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(1)
