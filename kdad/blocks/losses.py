"""Distillation losses over lists of feature maps (one per tapped level, shallow to deep)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def global_cosine_loss(teacher: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
    """RD4AD's released loss: sum over levels of mean over the batch of 1 - cos(vec(T_k), vec(S_k)).

    Each whole C*H*W map is one vector. The paper's per-pixel form underperforms (RD4AD issue #22), and this
    flattened form is what reproduces the published numbers.
    """
    return sum(
        (1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
        for t, s in zip(teacher, student, strict=True)
    )


def pixel_cosine_loss(teacher: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
    """The RD paper's form: sum over levels of the mean per-pixel 1 - cos over channels."""
    return sum((1.0 - F.cosine_similarity(t, s, dim=1)).mean() for t, s in zip(teacher, student, strict=True))


def stfpm_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], batch_reduction: str = "sum") -> Tensor:
    """STFPM: sum over levels of ||t/|t| - s/|s|||^2 summed over channels and averaged over positions.

    The official code sums over the batch (so the effective step grows with batch size, which its SGD lr 0.4
    with batch 32 was tuned for); ``batch_reduction='mean'`` makes the loss batch-size independent.
    """
    total = 0.0
    for t, s in zip(teacher, student, strict=True):
        per_image = (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(1).mean((1, 2))
        total = total + (per_image.sum() if batch_reduction == "sum" else per_image.mean())
    return total


DISTANCES = {"global_cosine": global_cosine_loss, "pixel_cosine": pixel_cosine_loss, "stfpm": stfpm_loss}


def distillation_loss(name: str, teacher: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
    """Look up a distillation distance by its config name."""
    if name not in DISTANCES:
        raise ValueError(f"unknown distillation loss '{name}'; choose one of {sorted(DISTANCES)}")
    return DISTANCES[name](teacher, student)
