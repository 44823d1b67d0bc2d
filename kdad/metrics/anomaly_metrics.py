"""One object that collects everything an anomaly-detection test loop reports."""

from __future__ import annotations

import math

import numpy as np

from kdad.metrics._convert import ArrayOrTensor, as_maps, as_vector
from kdad.metrics._curves import auroc_from_counts, average_precision_from_counts, f1_max_from_counts
from kdad.metrics.image import counts_per_distinct_score
from kdad.metrics.per_image_pro import DEFAULT_FPR_LIMIT, DEFAULT_NUM_THRESHOLDS
from kdad.metrics.pixel import PixelMetricAccumulator
from kdad.metrics.thresholds import Thresholds, f1_optimal_threshold, thresholded_image_metrics

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro", "pixel_aupro_per_image")
_CONFUSION = ("tp", "fp", "tn", "fn")
#: Keys of :meth:`AnomalyMetrics.thresholded`; the pixel ones only when masks were seen.
THRESHOLDED_IMAGE_KEYS = tuple(
    f"image_{k}" for k in ("threshold", "precision", "recall", "fpr", "f1", "accuracy", *_CONFUSION)
)
THRESHOLDED_PIXEL_KEYS = tuple(
    f"pixel_{k}" for k in ("threshold", "precision", "recall", "fpr", "f1", "iou", "accuracy", *_CONFUSION)
)


class AnomalyMetrics:
    """Image metrics (exact) and, with ``pixel=True``, pixel metrics (streaming histograms).

    ``compute()`` returns ``image_auroc``, ``image_ap``, ``image_f1_max`` (see :mod:`kdad.metrics.image`)
    and, with ``pixel=True``, ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``, ``pixel_aupro`` (MVTec AD
    definition, FPR limit ``aupro_limit``) and ``pixel_aupro_per_image`` (RD4AD definition, FPR limit
    ``per_image_fpr_limit``); see :class:`kdad.metrics.pixel.PixelMetricAccumulator`. Values are
    python floats; nan marks a metric that is undefined for the data seen (e.g. no anomalous image).

    Image scores are kept (8 bytes per image) because exact ranking needs them; pixel state is fixed-size.
    """

    def __init__(
        self,
        pixel: bool = True,
        aupro_limit: float = 0.3,
        n_bins: int = 2**16,
        per_image_thresholds: int = DEFAULT_NUM_THRESHOLDS,
        per_image_fpr_limit: float = DEFAULT_FPR_LIMIT,
    ) -> None:
        self.pixel = pixel
        self._pixel = (
            PixelMetricAccumulator(aupro_limit, n_bins, per_image_thresholds, per_image_fpr_limit) if pixel else None
        )
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        if self._pixel is not None:
            self._pixel.reset()

    @property
    def n_images(self) -> int:
        return sum(s.size for s in self._scores)

    def update(
        self,
        image_scores: ArrayOrTensor,
        labels: ArrayOrTensor,
        maps: ArrayOrTensor | None = None,
        masks: ArrayOrTensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            image_scores: raw per-image scores, ``[B]`` (or ``[B, 1]``).
            labels: 0 = normal, 1 = anomalous, ``[B]``.
            maps: raw anomaly maps ``[B, H, W]`` (or ``[B, 1, H, W]``); required when ``pixel=True``,
                ignored otherwise.
            masks: ground truth 0/1 ``[B, H, W]``. A label-0 image must have an empty mask; a label-1
                image may have one (e.g. a logical anomaly), it then only adds normal pixels.

        Tensors may be on any device. All inputs are validated before any state changes, so a
        ``ValueError`` leaves the object as it was.
        """
        scores = as_vector(image_scores, "image_scores", binary=False)
        y = as_vector(labels, "labels", binary=True)
        if scores.shape != y.shape:
            raise ValueError(f"image_scores {scores.shape} and labels {y.shape} differ in length")
        if self._pixel is not None:
            if maps is None or masks is None:
                raise ValueError("pixel=True needs maps and masks in every update")
            score_maps = as_maps(maps, "maps", binary=False)
            anomalous = as_maps(masks, "masks", binary=True)
            if score_maps.shape != anomalous.shape or score_maps.shape[0] != scores.size:
                raise ValueError(
                    f"maps {score_maps.shape}, masks {anomalous.shape} and {scores.size} image scores "
                    "do not describe the same batch"
                )
            # An anomalous pixel in a normal image is a data bug that would silently skew every pixel metric.
            bad = np.flatnonzero(~y & anomalous.reshape(anomalous.shape[0], -1).any(axis=1))
            if bad.size:
                raise ValueError(f"images {bad.tolist()} of this batch have label 0 but a non-empty mask")
            self._pixel._update_arrays(score_maps, anomalous)
        self._scores.append(scores)
        self._labels.append(y)

    def compute(self) -> dict[str, float]:
        """Metrics over everything added since construction or the last ``reset()``."""
        if self._scores:
            neg, pos = counts_per_distinct_score(np.concatenate(self._scores), np.concatenate(self._labels))
            out = {
                "image_auroc": auroc_from_counts(neg, pos),
                "image_ap": average_precision_from_counts(neg, pos),
                "image_f1_max": f1_max_from_counts(neg, pos),
            }
        else:
            out = dict.fromkeys(IMAGE_KEYS, math.nan)
        if self._pixel is not None:
            out.update(self._pixel.compute())
        return out

    def _all_scores(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._scores:
            raise ValueError("no images were added; thresholds and thresholded metrics need data")
        return np.concatenate(self._scores), np.concatenate(self._labels)

    def _pixels_seen(self) -> bool:
        return self._pixel is not None and self._pixel.n_pixels > 0

    def thresholded(self, image_threshold: float, pixel_threshold: float | None = None) -> dict[str, float | int]:
        """Figures of the decisions ``score > threshold`` (keys :data:`THRESHOLDED_IMAGE_KEYS`, and
        :data:`THRESHOLDED_PIXEL_KEYS` when ``pixel_threshold`` is given and masks were seen).

        Image figures are exact (:func:`kdad.metrics.thresholds.thresholded_image_metrics`). Pixel figures
        pool all pixels of all images into one confusion table and come from the histograms, exact to
        one bin width (:func:`kdad.metrics.thresholds.thresholded_pixel_metrics`); ``pixel_f1`` is the
        segmentation F1 MVTec AD 2 reports. Raises ``ValueError`` before any image was added.
        """
        scores, labels = self._all_scores()
        image = thresholded_image_metrics(scores, labels, image_threshold)
        out: dict[str, float | int] = {"image_threshold": float(image_threshold)}
        out.update({f"image_{k}": v for k, v in image.items()})
        if pixel_threshold is not None and self._pixel is not None and self._pixels_seen():
            out["pixel_threshold"] = float(pixel_threshold)
            out.update(self._pixel.thresholded(pixel_threshold))
        return out

    def f1_thresholds(self, policy: str = "f1_test") -> Thresholds:
        """F1-optimal image threshold (exact) and, when masks were seen, pixel threshold (one bin width).

        ``policy`` names the data this object saw: ``"f1_test"`` (benchmark only, recorded as optimistic)
        or ``"f1_val"`` (a labelled validation set). Raises ``ValueError`` when the images, or the pooled
        pixels, lack a class.
        """
        scores, labels = self._all_scores()
        image = f1_optimal_threshold(scores, labels, policy=policy)
        pixel = self._pixel.f1_threshold(policy) if self._pixel is not None and self._pixels_seen() else None
        return Thresholds(image, pixel)
