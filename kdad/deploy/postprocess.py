"""From raw model outputs to what an operator sees: normalised score, OK/NOK, full-size map, mask, overlay.

numpy + Pillow only, so the standalone inferencer and the torch prediction path share these rules.

Conventions:

- Normalisation follows anomalib's min-max normalisation (``anomalib`` ``normalize`` in its min-max
  post-processing): ``(x - threshold) / (score_max - score_min) + 0.5``, clipped to [0, 1]. The threshold
  lands exactly on 0.5 and the observed score range spans one unit, so normalised scores of different
  models and categories are comparable and 0.5 is always the decision boundary.
- A sample is NOK iff its raw score is strictly greater than the threshold (a score equal to the threshold
  is OK); masks use the same strict rule per pixel. Because the normalisation is strictly increasing, the
  decision is the same whether read off the raw or the normalised score.
- Without thresholds (an export whose metadata says ``"thresholds": null``) there is no decision and no
  normalisation: callers report raw scores and maps only (decision and normalised score None, no mask),
  and overlays colour each map over its own range (:func:`map_display_range`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

Decision = Literal["OK", "NOK"]


def normalize_scores(x: float | np.ndarray, threshold_record: Mapping[str, Any]) -> float | np.ndarray:
    """Min-max normalise raw scores (or map values) with a threshold record, anomalib-style.

    ``threshold_record`` holds ``value`` (the threshold), ``score_min`` and ``score_max`` (the score range
    seen when the threshold was chosen). When ``score_max == score_min`` there is no scale to divide by,
    so the result is the limit of the formula: 0 below the threshold, 0.5 at it and 1 above it. Returns a
    float for a scalar input and a float32 array of the same shape otherwise.
    """
    threshold = float(threshold_record["value"])
    span = float(threshold_record["score_max"]) - float(threshold_record["score_min"])
    values = np.asarray(x, dtype=np.float64)
    if span > 0:
        normalized = (values - threshold) / span + 0.5
    else:
        normalized = np.where(values > threshold, 1.0, np.where(values < threshold, 0.0, 0.5))
    normalized = np.clip(normalized, 0.0, 1.0)
    return float(normalized) if normalized.ndim == 0 else normalized.astype(np.float32)


def decide(score: float, image_threshold: float) -> Decision:
    """The decision for one image: "NOK" iff ``score > image_threshold`` (strict), else "OK".

    A NaN score raises ValueError: it means the model produced garbage, and calling that "OK" would pass a
    part nobody inspected.
    """
    if np.isnan(score):
        raise ValueError("the anomaly score is NaN: the model output is invalid, no decision can be made.")
    return "NOK" if score > image_threshold else "OK"


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float32 [height, width] map: ``anomaly_map`` [h, w] resized bilinearly to ``size`` = (height, width).

    Pillow's mode "F" resize keeps full float precision; the map is stretched to the original image,
    undoing the square resize of preprocessing, so map and mask align with the input pixels.
    """
    values = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"an anomaly map must be 2-D [height, width], got shape {values.shape}.")
    height, width = size
    if values.shape == (height, width):
        return values.copy()
    resized = Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def binary_mask(full_size_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """uint8 mask, 255 where the map is strictly above ``pixel_threshold`` and 0 elsewhere (viewable as is)."""
    return np.where(np.asarray(full_size_map) > pixel_threshold, 255, 0).astype(np.uint8)


def record_display_range(threshold_record: Mapping[str, Any]) -> tuple[float, float]:
    """(score_min, score_max) of a threshold record: the map range an overlay spreads over its colours."""
    return float(threshold_record["score_min"]), float(threshold_record["score_max"])


def map_display_range(anomaly_map: np.ndarray) -> tuple[float, float]:
    """(min, max) of one map: the overlay range when no threshold record gives a fixed one (colours per image)."""
    values = np.asarray(anomaly_map, dtype=np.float32)
    return float(values.min()), float(values.max())


def display_range(
    anomaly_map: np.ndarray, image_record: Mapping[str, Any] | None, pixel_record: Mapping[str, Any] | None
) -> tuple[float, float]:
    """The map range an overlay spreads over its colours: the pixel record's, else the image record's (colours
    comparable across images), else, without thresholds, this map's own (min, max)."""
    record = pixel_record or image_record
    return map_display_range(anomaly_map) if record is None else record_display_range(record)


def jet(values: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] jet-like colours of ``values`` in [0, 1] (blue = low, red = high).

    Each channel is a clipped triangle, which is the classic jet ramp without matplotlib.
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # red, green, blue peak at 0.75, 0.5, 0.25
    channels = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.round(channels * 255.0).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Boolean border of the mask's regions: mask pixels with a 4-neighbour outside the mask."""
    inside = np.asarray(mask) > 0
    padded = np.pad(inside, 1, mode="edge")
    eroded = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & inside
    return inside & ~eroded


def overlay(
    rgb_original: np.ndarray,
    full_size_map: np.ndarray,
    mask: np.ndarray | None,
    display_range: tuple[float, float],
    alpha: float = 0.4,
    outline_color: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the image blended with a jet heat map of the map, plus the mask's outline.

    ``display_range`` = (low, high) maps to the ends of the colour ramp; a fixed range (e.g. the threshold
    record's score_min / score_max) keeps colours comparable across images, unlike per-image min-max.
    """
    rgb = np.asarray(rgb_original)
    values = np.asarray(full_size_map, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[:2] != values.shape:
        raise ValueError(f"overlay needs an RGB image [H, W, 3] and a map [H, W], got {rgb.shape} and {values.shape}.")
    low, high = display_range
    scaled = (values - low) / (high - low) if high > low else (values > low).astype(np.float32)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * jet(scaled).astype(np.float32)
    result = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    if mask is not None:
        if mask.shape != values.shape:
            raise ValueError(f"overlay mask shape {mask.shape} differs from the map shape {values.shape}.")
        result[_outline(mask)] = outline_color
    return result


@dataclass(frozen=True)
class Prediction:
    """The result for one image, at the image's original size.

    ``score`` is the raw image score, ``normalized_score`` its anomalib-style normalisation (0.5 = the
    threshold), ``anomaly_map`` the raw float32 map resized to the original (height, width), ``mask`` the
    uint8 0/255 mask of the map above the pixel threshold, or None when the export has no pixel threshold.
    An export without thresholds (metadata ``"thresholds": null``) gives scores and maps only:
    ``normalized_score`` and ``decision`` are None.
    """

    score: float
    normalized_score: float | None
    decision: Decision | None
    anomaly_map: np.ndarray
    mask: np.ndarray | None
    image_size: tuple[int, int]


def make_prediction(
    score: float,
    model_map: np.ndarray,
    size: tuple[int, int],
    image_record: Mapping[str, Any] | None,
    pixel_record: Mapping[str, Any] | None,
) -> Prediction:
    """One image's Prediction from the raw model outputs, for an image of ``size`` = (height, width): the map at the
    original size, the mask at the pixel threshold, the normalised score and the decision at the image threshold.
    The single post-processing of kdad.predict's torch path and of the exported-model inferencers. Without an image
    record (a run without thresholds), or for a non-finite score, there is no decision, normalised score or mask."""
    height, width = int(size[0]), int(size[1])
    full_map = resize_map(model_map, (height, width))
    if image_record is None or not math.isfinite(score):
        return Prediction(score, None, None, full_map, None, (height, width))
    mask = None if pixel_record is None else binary_mask(full_map, float(pixel_record["value"]))
    normalized = float(normalize_scores(score, image_record))
    return Prediction(score, normalized, decide(score, float(image_record["value"])), full_map, mask, (height, width))
