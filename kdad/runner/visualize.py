"""Anomaly-map overlays: image | heat map blended on the image | ground-truth outline."""

from __future__ import annotations

import cv2
import numpy as np


def heatmap_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.5
) -> np.ndarray:
    """Blend a JET heat map of ``anomaly_map`` (clipped to [vmin, vmax]) over an RGB uint8 image."""
    scale = max(vmax - vmin, 1e-12)
    normalised = np.clip((anomaly_map - vmin) / scale, 0.0, 1.0)
    heat = cv2.applyColorMap((normalised * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (alpha * heat + (1 - alpha) * image).round().astype(np.uint8)


def draw_mask_outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, colour, 1)
    return out


def overlay_panel(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None,
    vmin: float,
    vmax: float,
    caption: str,
) -> np.ndarray:
    """Three tiles side by side (input, heat map, heat map with GT outline) with a caption bar on top."""
    heat = heatmap_overlay(image, anomaly_map, vmin, vmax)
    outlined = draw_mask_outline(heat, mask) if mask is not None and mask.any() else heat
    panel = np.concatenate([image, heat, outlined], axis=1)
    bar = np.full((18, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, caption[:120], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)
