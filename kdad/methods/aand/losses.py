"""AAND's losses (Tang et al., arXiv 2405.02068): focal loss on the RAA gate, amplification loss, hard KD loss.

Formulas and constants are those of the released code (``Hui-design/AAND``, ``models/loss.py``, ``train.py``) as
recorded in the project's method notes:

* focal loss on the gate *probability* (no sigmoid), alpha 0.8 on the anomalous class, gamma 2, mean over
  positions; summed over levels by the caller;
* amplification loss with margin 0.3 between normal positions (outside the anomaly mask, inside the
  foreground, at most 5000 sampled over the batch) and anomalous ones (inside the mask, at most 1000);
* HKD: per level, the mean of the k largest per-pixel cosine distances of each image (k = 10), averaged over
  the batch, plus RD's global cosine term.

Proven against the released functions (``get_focal_loss``, ``get_amplify_loss``, ``loss_fucntion``) per level by
``tests/test_parity_aand.py``. kdad's differences, each a no-op at AAND's settings or an edge case: the focal loss
clamps the gate to [eps, 1 - eps] (``eps=None`` is the released loss); the subsample draws with ``torch.randperm``
where the released code uses ``np.random.permutation`` (same distribution; below the limits both take every
position); a level with anomalies but no normal position gives 0 where the released code gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdad.blocks.losses import global_cosine_loss


def binary_focal_loss(
    probability: Tensor, target: Tensor, alpha: float = 0.8, gamma: float = 2.0, eps: float | None = 1e-6
) -> Tensor:
    """Mean binary focal loss of probabilities in [0, 1] against {0, 1} targets (same shape).

    ``-alpha (1-p)^gamma log p`` on positives, ``-(1-alpha) p^gamma log(1-p)`` on negatives (the released
    ``BCEFocalLoss``, applied to the gate probability, no sigmoid). kdad clamps the probabilities to
    ``[eps, 1 - eps]`` so a saturated gate gives a finite loss; the released code takes the log of the raw
    probability (``eps=None`` or 0). With AAND's tau = 0.2 and 50 + 50 prototypes the gate cannot leave
    [4.5e-5, 1 - 4.5e-5] (logits are cosines / 0.2, within [-5, 5]), so the default clamp never acts there.
    """
    p = probability.float()  # float32: 1 - 1e-6 is 1.0 in bfloat16
    if eps:
        p = p.clamp(eps, 1.0 - eps)
    target = target.float()
    positive = -alpha * (1.0 - p).pow(gamma) * torch.log(p) * target
    negative = -(1.0 - alpha) * p.pow(gamma) * torch.log(1.0 - p) * (1.0 - target)
    return (positive + negative).mean()


def _positions(features: Tensor) -> Tensor:
    """[B,C,H,W] -> [B*H*W, C], row order = (batch, row, column) as ``mask.flatten()``."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def _subsample(index: Tensor, limit: int) -> Tensor:
    if index.numel() <= limit:
        return index
    return index[torch.randperm(index.numel(), device=index.device)[:limit]]


def amplification_loss(
    original: Tensor,
    amplified: Tensor,
    anomaly_mask: Tensor,
    foreground: Tensor | None = None,
    margin: float = 0.3,
    max_normal: int = 5000,
    max_anomalous: int = 1000,
) -> Tensor:
    """AAND's amplification loss for one level: amplified anomalies must be ``margin`` less cosine-similar to
    normal features than the original anomalies were.

    Args:
        original, amplified: features [B,C,H,W] before and after RAA.
        anomaly_mask: binary [B,1,H,W] at this level (the teacher-forcing mask).
        foreground: optional binary [B,1,H,W] (the released code pools it like the mask, > 0.3); normal
            positions are taken inside it only.
        margin: required drop of cosine similarity (AAND: 0.3).
        max_normal, max_anomalous: random subsampling limits over the whole batch (AAND: 5000 and 1000).

    Returns:
        ``mean(relu(cos(n, a') - (cos(n, a) - margin)))`` over all (normal, anomalous) pairs; 0 when the batch
        has no anomalous or no normal position. Only ``amplified`` carries gradient in AAND's use.
    """
    anomalous = anomaly_mask.flatten() > 0.5
    normal = ~anomalous
    if foreground is not None:
        normal &= foreground.flatten() > 0.5
    normal_index = _subsample(normal.nonzero().squeeze(1), max_normal)
    anomalous_index = _subsample(anomalous.nonzero().squeeze(1), max_anomalous)
    if normal_index.numel() == 0 or anomalous_index.numel() == 0:
        return amplified.sum() * 0.0
    reference = F.normalize(_positions(original)[normal_index].float(), dim=1)
    before = F.normalize(_positions(original)[anomalous_index].float(), dim=1)
    after = F.normalize(_positions(amplified)[anomalous_index].float(), dim=1)
    similarity_before = reference @ before.T
    similarity_after = reference @ after.T
    return F.relu(similarity_after - (similarity_before - margin)).mean()


def hard_cosine_loss(teacher: Tensor, student: Tensor, k: int = 10) -> Tensor:
    """Mean over the batch of the mean of the ``k`` largest per-pixel ``1 - cos`` of each image (one level).

    ``k`` is capped at the number of positions of the level.
    """
    distance = (1.0 - F.cosine_similarity(teacher.float(), student.float(), dim=1)).flatten(1)  # [B, H*W]
    k = min(int(k), distance.shape[1])
    return distance.topk(k, dim=1).values.mean()


def hard_knowledge_distillation_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], k: int = 10) -> Tensor:
    """AAND's HKD loss: sum over levels of the hard (top-k per image) cosine term + RD's global cosine term."""
    if k < 1:
        raise ValueError(f"HKD needs k >= 1 hard positions, got {k}")
    hard = sum(hard_cosine_loss(t, s, k) for t, s in zip(teacher, student, strict=True))
    return hard + global_cosine_loss(teacher, student)
