"""Anomaly-detection metrics on raw, unbounded scores (numpy/torch/scipy only, no Lightning).

Image level (exact): :func:`image_auroc`, :func:`average_precision`, :func:`f1_max`; :func:`max_per_unit` turns
per-image scores into per-item ones where several images show one item.
Pixel level (streaming, fixed memory): :class:`PixelMetricAccumulator` with the MVTec AD AUPRO and the
RD4AD per-image AUPRO (:func:`per_image_aupro`, :class:`PerImageAuproAccumulator`).
Everything at once: :class:`AnomalyMetrics`.
Decision thresholds (NOK iff ``score > threshold``) and thresholded figures: :mod:`kdad.metrics.thresholds`.
"""

from kdad.metrics.anomaly_metrics import (
    IMAGE_KEYS,
    PIXEL_KEYS,
    THRESHOLDED_IMAGE_KEYS,
    THRESHOLDED_PIXEL_KEYS,
    AnomalyMetrics,
)
from kdad.metrics.components import Components, label_components
from kdad.metrics.histogram import GrowingHistogram
from kdad.metrics.image import average_precision, f1_max, image_auroc, max_per_unit
from kdad.metrics.per_image_pro import PerImageAuproAccumulator, per_image_aupro
from kdad.metrics.pixel import PixelMetricAccumulator
from kdad.metrics.thresholds import (
    DECISION_RULE,
    DEFAULT_FPR,
    POLICIES,
    NormalScoreCalibrator,
    ThresholdEstimate,
    Thresholds,
    f1_optimal_threshold,
    is_anomalous,
    manual_threshold,
    normal_quantile_threshold,
    pixel_f1_threshold,
    pixel_quantile_threshold,
    thresholded_image_metrics,
    thresholded_pixel_metrics,
)

__all__ = [
    "DECISION_RULE",
    "DEFAULT_FPR",
    "IMAGE_KEYS",
    "PIXEL_KEYS",
    "POLICIES",
    "THRESHOLDED_IMAGE_KEYS",
    "THRESHOLDED_PIXEL_KEYS",
    "AnomalyMetrics",
    "Components",
    "GrowingHistogram",
    "NormalScoreCalibrator",
    "PerImageAuproAccumulator",
    "PixelMetricAccumulator",
    "ThresholdEstimate",
    "Thresholds",
    "average_precision",
    "f1_max",
    "f1_optimal_threshold",
    "image_auroc",
    "is_anomalous",
    "label_components",
    "manual_threshold",
    "max_per_unit",
    "normal_quantile_threshold",
    "per_image_aupro",
    "pixel_f1_threshold",
    "pixel_quantile_threshold",
    "thresholded_image_metrics",
    "thresholded_pixel_metrics",
]
