"""Anomaly-detection metrics on raw, unbounded scores (numpy/torch/scipy only, no Lightning).

Image level (exact): :func:`image_auroc`, :func:`average_precision`, :func:`f1_max`.
Pixel level (streaming, fixed memory): :class:`PixelMetricAccumulator` with the MVTec AD AUPRO and the
RD4AD per-image AUPRO (:func:`per_image_aupro`, :class:`PerImageAuproAccumulator`).
Everything at once: :class:`AnomalyMetrics`.
"""

from kdad.metrics.anomaly_metrics import IMAGE_KEYS, PIXEL_KEYS, AnomalyMetrics
from kdad.metrics.components import Components, label_components
from kdad.metrics.histogram import GrowingHistogram
from kdad.metrics.image import average_precision, f1_max, image_auroc
from kdad.metrics.per_image_pro import PerImageAuproAccumulator, per_image_aupro
from kdad.metrics.pixel import PixelMetricAccumulator

__all__ = [
    "IMAGE_KEYS",
    "PIXEL_KEYS",
    "AnomalyMetrics",
    "Components",
    "GrowingHistogram",
    "PerImageAuproAccumulator",
    "PixelMetricAccumulator",
    "average_precision",
    "f1_max",
    "image_auroc",
    "label_components",
    "per_image_aupro",
]
