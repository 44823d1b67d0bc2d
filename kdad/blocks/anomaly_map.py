"""Anomaly-map head: per-scale teacher/student discrepancy, upsample, fuse, Gaussian blur, image score.

The RD family (RD, RD++, AAND, RD with Expert) uses 1 - cos over channels per scale, bilinear upsampling
with align_corners=True, a sum over scales, scipy's ``gaussian_filter(sigma=4)`` and the max as image score.
STFPM multiplies the scales. STFPM's 0.5*||t/|t| - s/|s|||^2 equals 1 - cos exactly, so one distance serves
both by default; ``distance='normalised_l2'`` computes STFPM's released ||t/|t| - s/|s|||^2 (= 2 - 2cos) and
``fuse_at='finest'`` its released order (level maps fused at the finest level's resolution, the product then
resized to the input), for numerical parity with its code. The blur runs on the device as a separable
convolution with scipy's boundary rule ('reflect', which repeats the edge pixel) and radius
round(truncate * sigma), so it matches scipy to float precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdad.errors import check_choice

SCALE_FUSIONS = ("sum", "product")
IMAGE_SCORES = ("max", "mean_topk")
MAP_DISTANCES = ("cosine", "normalised_l2")
FUSION_RESOLUTIONS = ("input", "finest")


def cosine_distance(teacher: Tensor, student: Tensor, eps: float = 1e-8) -> Tensor:
    """1 - cos over channels per position: [B,C,H,W] x2 -> [B,1,H,W], in float32 whatever the inputs' precision.

    ``F.cosine_similarity``'s definition (each norm clamped at ``eps``) in three channel sums: 3-5x faster than
    ``F.cosine_similarity`` on CPU (measured 5.8 vs 25.7 ms for RD's three levels at 256 px, batch 16).
    """
    teacher, student = teacher.float(), student.float()
    dot = (teacher * student).sum(1, keepdim=True)
    norm_t = teacher.square().sum(1, keepdim=True).sqrt().clamp_min(eps)
    norm_s = student.square().sum(1, keepdim=True).sqrt().clamp_min(eps)
    return 1.0 - dot / (norm_t * norm_s)


def normalised_l2_distance(teacher: Tensor, student: Tensor) -> Tensor:
    """||t/|t| - s/|s|||^2 over channels per position: [B,C,H,W] x2 -> [B,1,H,W] float32; STFPM's released map.

    Written as the released code writes it (``F.normalize``, difference, squared channel sum) rather than as
    2 * (1 - cos): equal in exact arithmetic, and this form keeps its precision where the features nearly agree.
    """
    diff = F.normalize(teacher.float(), dim=1) - F.normalize(student.float(), dim=1)
    return diff.square().sum(1, keepdim=True)


MAP_DISTANCE_FUNCTIONS = {"cosine": cosine_distance, "normalised_l2": normalised_l2_distance}


def finest_size(maps: Sequence[Tensor]) -> tuple[int, int]:
    """The spatial size of the largest of the [B,1,h,w] level maps (the shallowest level)."""
    return max((tuple(m.shape[-2:]) for m in maps), key=lambda hw: hw[0] * hw[1])


def fuse_scales(maps: Sequence[Tensor], size: tuple[int, int], mode: str = "sum", align_corners: bool = True) -> Tensor:
    """Upsample each [B,1,h,w] map to ``size`` and combine them by ``mode`` ('sum' or 'product')."""
    check_choice(mode, SCALE_FUSIONS, "scale fusion")
    fused = None
    for m in maps:
        # Accumulated in place: no stacked copy of every full-resolution map.
        up = F.interpolate(m, size=size, mode="bilinear", align_corners=align_corners)
        fused = up if fused is None else (fused.add_(up) if mode == "sum" else fused.mul_(up))
    return fused


def _symmetric_pad_index(length: int, radius: int, device: torch.device) -> Tensor:
    # scipy 'reflect' = (d c b a | a b c d | d c b a): the edge sample is repeated, unlike torch's 'reflect'.
    index = torch.arange(-radius, length + radius, device=device)
    period = 2 * length
    index = torch.remainder(index, period)
    return torch.where(index >= length, period - 1 - index, index)


def _blur_matrix(length: int, kernel: Tensor, radius: int) -> Tensor:
    """[length, length] matrix M with (M @ x) = the 1-D convolution of x with ``kernel`` under scipy's reflect
    boundary: row i holds the taps of output i, the taps that fall outside folded back onto their mirrored pixel."""
    taps = torch.arange(2 * radius + 1, device=kernel.device)
    rows = torch.arange(length, device=kernel.device)[:, None].expand(length, taps.numel())
    cols = _symmetric_pad_index(length, radius, kernel.device)[rows + taps]
    matrix = kernel.new_zeros(length, length)
    matrix.index_put_((rows.reshape(-1), cols.reshape(-1)), kernel.repeat(length), accumulate=True)
    return matrix


@dataclass(frozen=True)
class _Band:
    """One block of output rows of a 1-D blur pass (blocks come in order) reads only input rows [in0, in1): the slice
    of the banded blur matrix holding all their non-zero taps (the reflect boundary folds taps inward, so the window
    clipped to the array still holds them)."""

    in0: int
    in1: int
    matrix: Tensor


def _bands(length: int, kernel: Tensor, radius: int, block: int) -> list[_Band]:
    matrix = _blur_matrix(length, kernel, radius)
    bands = []
    for out0 in range(0, length, block):
        out1 = min(length, out0 + block)
        in0, in1 = max(0, out0 - radius), min(length, out1 + radius)
        bands.append(_Band(in0, in1, matrix[out0:out1, in0:in1].contiguous()))
    return bands


class GaussianBlur(nn.Module):
    """Separable Gaussian blur of [B,1,H,W] maps matching ``scipy.ndimage.gaussian_filter``; sigma<=0 is identity.

    Each 1-D pass is a product with the banded [H,H] (then [W,W]) matrix of the convolution, the reflect boundary
    folded in, taken block by block: ``block`` output rows need only ``block + 2r`` input rows. Matrix products run
    near peak speed where a one-channel convolution does not: measured on the 2-core CPU for 16 maps of 256 px,
    79 ms as two 1-D convolutions, 10 ms as two full matrix products, 3 ms in blocks of 32. The matrices are built
    once per (size, device, dtype). The blur runs in the maps' precision with autocast off, so bf16 mixed precision
    never rounds the maps the metrics see.
    """

    def __init__(self, sigma: float = 4.0, truncate: float = 4.0, block: int = 32) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.radius = int(truncate * sigma + 0.5) if sigma > 0 else 0
        self.block = int(block)
        if self.radius > 0:
            x = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
            kernel = torch.exp(-0.5 * (x / sigma) ** 2)
            kernel = (kernel / kernel.sum()).float()
        else:
            kernel = torch.ones(1)
        self.register_buffer("kernel", kernel, persistent=False)
        self._band_cache: dict[tuple[int, torch.device, torch.dtype], list[_Band]] = {}

    def bands(self, length: int, like: Tensor) -> list[_Band]:
        # int(): a tracer (ONNX/TorchScript export) hands the size over as a traced value; keyed by the plain size,
        # the matrices built by an eager call are found and enter the graph as constants instead of being rebuilt
        # inside it (an accumulating index_put, which ONNX's ScatterND does not reproduce).
        length = int(length)
        key = (length, like.device, like.dtype)
        if key not in self._band_cache:
            # Normal tensors even when first built under inference_mode, so a later call with autograd can use them.
            with torch.inference_mode(False):
                kernel = self.kernel.to(device=like.device, dtype=like.dtype)
                self._band_cache[key] = _bands(length, kernel, self.radius, self.block)
        return self._band_cache[key]

    def forward(self, maps: Tensor) -> Tensor:
        if self.radius == 0:
            return maps
        with torch.autocast(device_type=maps.device.type, enabled=False):
            rows = torch.cat([b.matrix @ maps[..., b.in0 : b.in1, :] for b in self.bands(maps.shape[-2], maps)], -2)
            cols = [rows[..., b.in0 : b.in1] @ b.matrix.T for b in self.bands(maps.shape[-1], maps)]
            return torch.cat(cols, -1)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, radius={self.radius}"


class AnomalyMapHead(nn.Module):
    """Per-scale discrepancy maps -> fused full-resolution map -> blur -> (score, map).

    ``distance`` per scale: 'cosine' (1 - cos over channels; every method's default) or 'normalised_l2'
    (||t/|t| - s/|s|||^2 = 2 - 2cos, STFPM's released form). ``fuse_at``: 'input' (every level map upsampled to
    the input size, then fused; the default) or 'finest' (level maps upsampled to the finest level's size and
    fused there, the fused map then upsampled to the input size: STFPM's released order, its product at 64x64
    resized to 256). ``score`` is 'max' (every reference repo) or 'mean_topk' with ``topk_ratio`` of the pixels.
    """

    def __init__(
        self,
        fusion: str = "sum",
        sigma: float = 4.0,
        align_corners: bool = True,
        score: str = "max",
        topk_ratio: float = 0.01,
        distance: str = "cosine",
        fuse_at: str = "input",
    ) -> None:
        super().__init__()
        self.fusion = check_choice(fusion, SCALE_FUSIONS, "scale fusion")
        self.score = check_choice(score, IMAGE_SCORES, "image score")
        self.distance = check_choice(distance, MAP_DISTANCES, "map distance")
        self.fuse_at = check_choice(fuse_at, FUSION_RESOLUTIONS, "fusion resolution")
        self.align_corners = align_corners
        self.topk_ratio = topk_ratio
        self.blur = GaussianBlur(sigma)

    def scale_maps(self, teacher: Sequence[Tensor], student: Sequence[Tensor]) -> list[Tensor]:
        """One [B,1,h,w] ``distance`` map per level, at the level's own resolution."""
        measure = MAP_DISTANCE_FUNCTIONS[self.distance]
        return [measure(t, s) for t, s in zip(teacher, student, strict=True)]

    def fuse(self, maps: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        """Level maps -> one [B,1,*size] map by ``fusion``, fused at the resolution ``fuse_at`` says."""
        if self.fuse_at == "input":
            return fuse_scales(maps, size, self.fusion, self.align_corners)
        fused = fuse_scales(maps, finest_size(maps), self.fusion, self.align_corners)
        return F.interpolate(fused, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(
        self, teacher: Sequence[Tensor], student: Sequence[Tensor], size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        return self.finalise(self.fuse(self.scale_maps(teacher, student), size))

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
