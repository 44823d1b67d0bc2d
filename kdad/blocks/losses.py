"""Distillation distances over lists of feature maps (one per tapped level, shallow to deep): the one registry.

Every distance takes ``(teacher, student, batch_reduction)`` and sums its per-level terms. ``batch_reduction``
says how the per-image terms are combined over the batch; ``distillation_loss`` uses each distance's default (the
cosine losses: RD's batch mean; ``stfpm_loss``: the sum, see there, although STFPM's released code averages).
STFPM passes its own ``batch_reduction`` (default mean, the released one), and DSKD asks every distance for the
batch mean, so that the weights of its two students mean the same whatever the distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch.nn.functional as F
from torch import Tensor

from kdad.errors import check_choice

BATCH_REDUCTIONS = ("mean", "sum")


class Distance(Protocol):
    def __call__(self, teacher: Sequence[Tensor], student: Sequence[Tensor], batch_reduction: str = ...) -> Tensor: ...


def _over_batch(per_image: Tensor, batch_reduction: str) -> Tensor:
    """[B] per-image terms -> their batch mean or sum."""
    if check_choice(batch_reduction, BATCH_REDUCTIONS, "batch_reduction") == "sum":
        return per_image.sum()
    return per_image.mean()


def global_cosine_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], batch_reduction: str = "mean") -> Tensor:
    """RD4AD's released loss: sum over levels of 1 - cos(vec(T_k), vec(S_k)), averaged over the batch.

    Each whole C*H*W map is one vector. The paper's per-pixel form underperforms (RD4AD issue #22), and this
    flattened form is what reproduces the published numbers.
    """
    return sum(
        _over_batch(1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1), batch_reduction)
        for t, s in zip(teacher, student, strict=True)
    )


def pixel_cosine_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], batch_reduction: str = "mean") -> Tensor:
    """The RD paper's form: sum over levels of the mean per-pixel 1 - cos over channels.

    With ``batch_reduction='mean'`` the mean runs over all pixels of the batch at once (every image has the same
    number of pixels, so this is the batch mean of the per-image means).
    """
    check_choice(batch_reduction, BATCH_REDUCTIONS, "batch_reduction")
    total = 0.0
    for t, s in zip(teacher, student, strict=True):
        per_pixel = 1.0 - F.cosine_similarity(t, s, dim=1)
        total = total + (per_pixel.mean() if batch_reduction == "mean" else per_pixel.flatten(1).mean(1).sum())
    return total


def stfpm_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], batch_reduction: str = "mean") -> Tensor:
    """STFPM: sum over levels of ||t/|t| - s/|s|||^2 summed over channels and averaged over positions.

    The released code (gdwang08/STFPM, ``torch.sum(d, 1).mean()``) also averages over the batch, and so does this
    function by default (``batch_reduction='mean'``; held to the released numbers by ``tests/test_parity_stfpm.py``).
    ``'sum'`` (B times the batch mean) was kdad's reading before that parity check; STFPM keeps it one switch away
    (``method.model.batch_reduction``), and every caller without the switch (``distillation_loss('stfpm', ...)``,
    another method's student with ``loss=stfpm``) gets the released reduction.
    """
    total = 0.0
    for t, s in zip(teacher, student, strict=True):
        per_image = (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(1).mean((1, 2))
        total = total + _over_batch(per_image, batch_reduction)
    return total


DISTANCES: dict[str, Distance] = {
    "global_cosine": global_cosine_loss,
    "pixel_cosine": pixel_cosine_loss,
    "stfpm": stfpm_loss,
}


def distance(name: str) -> Distance:
    """The registered distance ``name`` (a config value), checked."""
    return DISTANCES[check_choice(name, sorted(DISTANCES), "distillation loss")]


def distillation_loss(name: str, teacher: Sequence[Tensor], student: Sequence[Tensor]) -> Tensor:
    """The distance ``name`` with its reference's batch reduction."""
    return distance(name)(teacher, student)
