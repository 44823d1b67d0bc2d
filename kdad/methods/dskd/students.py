"""Helpers for methods with more than one student: running map statistics, map fusion.

(The encoder student, Se, is ``kdad.blocks.teacher.encoder_student``, shared with STFPM.)

* ``RunningLevelMean``: an exponential moving average of the mean per-pixel discrepancy of each feature level on
  normal training batches. It costs nothing extra (the features are already computed for the loss), is a
  buffer (so every checkpoint carries it) and gives each student's map a "normal level" to be divided by
  before maps of different students are fused.
* ``fuse_students(maps, mode)``: combine per-student full-resolution maps by their mean or their product.
  The product is invariant to a constant rescaling of either map (up to a constant factor on the result), the
  mean is not: with the mean, a student whose discrepancies are larger dominates unless the maps are
  normalised first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kdad.errors import check_choice

STUDENT_FUSIONS = ("mean", "product")


def fuse_students(maps: Sequence[Tensor], mode: str = "mean") -> Tensor:
    """Fuse per-student [B,1,H,W] maps by their element-wise ``mode`` ('mean' or 'product')."""
    check_choice(mode, STUDENT_FUSIONS, "student fusion")
    stacked = torch.stack(list(maps))
    return stacked.mean(0) if mode == "mean" else stacked.prod(0)


class RunningLevelMean(nn.Module):
    """EMA of one value per feature level, initialised by the first update (ones before any update)."""

    def __init__(self, levels: int = 3, momentum: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("value", torch.ones(levels))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, values: Sequence[Tensor]) -> None:
        current = torch.stack([v.detach().float().reshape(()) for v in values]).to(self.value.device)
        if int(self.updates) == 0:
            self.value.copy_(current)
        else:
            self.value.lerp_(current, self.momentum)
        self.updates += 1

    def extra_repr(self) -> str:
        return f"levels={self.value.numel()}, momentum={self.momentum}"
