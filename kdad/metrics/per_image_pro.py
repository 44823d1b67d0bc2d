"""The per-image "AUPRO" reported by RD4AD (Deng & Li, CVPR 2022), RD++ and URD.

It is NOT the MVTec AD AUPRO (see :mod:`kdad.metrics.pixel`): each anomalous image gets its own 200
thresholds, its own FPR axis normalised by the largest FPR kept, and the final number is the mean over
anomalous images. Numbers from the two definitions are not comparable; report which one you use.
"""

from __future__ import annotations

import math

import numpy as np

from kdad.metrics._convert import ArrayOrTensor, as_binary, as_maps, as_scores
from kdad.metrics.components import Components, label_components

DEFAULT_NUM_THRESHOLDS = 200
DEFAULT_FPR_LIMIT = 0.3


def _check_params(num_thresholds: int, fpr_limit: float) -> None:
    if num_thresholds < 1:
        raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _per_image_aupro_flat(
    scores: np.ndarray,
    anomalous: np.ndarray,
    weights: np.ndarray,
    n_components: int,
    num_thresholds: int,
    fpr_limit: float,
) -> float:
    """Core of :func:`per_image_aupro` on one image's flattened pixels.

    ``weights`` holds ``1 / |component|`` for each anomalous pixel (in ``scores[anomalous]`` order), so
    the weighted count of detected pixels over ``n_components`` is the mean per-region overlap.
    """
    n_normal = int(anomalous.size - np.count_nonzero(anomalous))
    if n_components == 0 or n_normal == 0:
        return math.nan
    lo, hi = float(scores.min()), float(scores.max())
    if lo == hi:
        # np.arange would get a zero step; no threshold separates anything, so nothing is detected.
        return 0.0
    # Literally np.arange so the threshold count (200, occasionally 201 by rounding) and values match
    # the reference implementation bit for bit.
    thresholds = np.arange(lo, hi, (hi - lo) / num_thresholds)
    # Counting "score > t" per threshold by binary-searching the ~200 thresholds in sorted scores is
    # exact and several times faster than locating every pixel among the thresholds.
    normal_sorted = np.sort(scores[~anomalous])
    fp = n_normal - np.searchsorted(normal_sorted, thresholds, side="right")
    anom_scores = scores[anomalous]
    order = np.argsort(anom_scores)
    # Suffix sums (summed from the top score down) so the PRO of high thresholds carries no
    # cancellation error from subtracting two large prefix sums.
    tail_weight = np.concatenate((np.cumsum(weights[order][::-1])[::-1], [0.0]))
    pro = tail_weight[np.searchsorted(anom_scores[order], thresholds, side="right")] / n_components
    fpr = fp / n_normal
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size == 0:
        # Even the highest threshold leaves >= fpr_limit of the normal pixels detected.
        return 0.0
    fpr_max = float(fpr.max())
    if fpr_max == 0.0:
        # Every kept threshold is free of false positives, so the FPR axis cannot be normalised (the
        # reference yields 0/0 = nan). The detector reaches this PRO at zero false positives, and we
        # score the flat curve at that level; a perfect map gets 1.0.
        return float(pro.max())
    fpr = fpr / fpr_max
    # FPR is non-increasing in threshold order: sklearn.metrics.auc then negates np.trapz, which is
    # this sum of non-negative trapezoids. A single kept point has zero width and area 0.
    return float(np.sum((fpr[:-1] - fpr[1:]) * (pro[:-1] + pro[1:]) * 0.5))


def per_image_aupro(
    amap: ArrayOrTensor,
    mask: ArrayOrTensor,
    num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> float:
    """RD4AD-style PRO score of ONE image (``amap`` and ``mask`` of shape ``[H, W]``).

    Definition (RD4AD ``compute_pro`` applied to a single image):

    * thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` of this image's raw scores;
    * at each threshold ``t`` the prediction is ``score > t``; PRO(t) is the mean over the mask's
      8-connected regions of the fraction of the region predicted; FPR(t) is false positives over the
      image's normal pixels;
    * points with ``FPR < fpr_limit`` are kept and FPR is divided by the largest kept FPR;
    * the area under (FPR, PRO) with the trapezoid rule over the points in threshold order
      (``sklearn.metrics.auc`` semantics, so the area spans only [smallest kept FPR, 1]).

    Degenerate cases (where the reference crashes or returns nan):

    * mask without anomalous pixels, or without normal pixels (fully anomalous image): ``nan``; the
      accumulators skip such images;
    * constant map: ``0.0`` (no threshold detects anything);
    * no threshold with ``FPR < fpr_limit``, or a single one with ``FPR > 0``: ``0.0`` (no curve width);
    * every kept threshold has ``FPR == 0``: the largest kept PRO (a perfect map scores ``1.0``).
    """
    _check_params(num_thresholds, fpr_limit)
    scores = as_scores(amap, "amap")
    anomalous = as_binary(mask, "mask")
    if scores.ndim != 2 or scores.shape != anomalous.shape:
        raise ValueError(f"amap and mask must both be [H, W], got {scores.shape} and {anomalous.shape}")
    comps = label_components(anomalous[None])
    weights = 1.0 / comps.sizes[comps.labels[0][anomalous]]
    return _per_image_aupro_flat(
        scores.ravel(), anomalous.ravel(), weights, comps.n_components, num_thresholds, fpr_limit
    )


class PerImageAuproAccumulator:
    """Streaming mean of :func:`per_image_aupro` over the images that have both anomalous and normal
    pixels (normal images and images with an empty mask are ignored). State: two scalars."""

    def __init__(self, num_thresholds: int = DEFAULT_NUM_THRESHOLDS, fpr_limit: float = DEFAULT_FPR_LIMIT) -> None:
        _check_params(num_thresholds, fpr_limit)
        self.num_thresholds = num_thresholds
        self.fpr_limit = fpr_limit
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    @property
    def n_images(self) -> int:
        """Number of images that contributed a value so far."""
        return self._count

    def update(self, maps: ArrayOrTensor, masks: ArrayOrTensor) -> None:
        """Add a batch: ``maps`` raw scores ``[B, H, W]``, ``masks`` 0/1 ``[B, H, W]``."""
        scores = as_maps(maps, "maps", binary=False)
        anomalous = as_maps(masks, "masks", binary=True)
        if scores.shape != anomalous.shape:
            raise ValueError(f"maps {scores.shape} and masks {anomalous.shape} differ in shape")
        self._update_arrays(scores, anomalous, label_components(anomalous))

    def _update_arrays(self, scores: np.ndarray, anomalous: np.ndarray, comps: Components) -> None:
        """Validated ``[B, H, W]`` float64 scores / bool masks with their precomputed components."""
        for b in np.flatnonzero(comps.per_image):
            mask_b = anomalous[b].ravel()
            if mask_b.all():
                continue
            weights = 1.0 / comps.sizes[comps.labels[b].ravel()[mask_b]]
            value = _per_image_aupro_flat(
                scores[b].ravel(),
                mask_b,
                weights,
                int(comps.per_image[b]),
                self.num_thresholds,
                self.fpr_limit,
            )
            self._sum += value
            self._count += 1

    def compute(self) -> float:
        """Mean per-image value, or nan when no image qualified."""
        return self._sum / self._count if self._count else math.nan
