"""Connected ground-truth regions, the unit over which PRO averages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 8-connectivity, the MVTec AD evaluation and skimage.measure.label default for 2-D masks.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Components:
    """Connected components of a batch of binary masks.

    Attributes:
        labels: ``[B, H, W]`` int32; 0 for normal pixels, otherwise a component id in ``1..n_components``
            that is unique across the batch.
        sizes: ``[n_components + 1]`` pixel count per id (entry 0 counts normal pixels).
        per_image: ``[B]`` number of components in each image.
    """

    labels: np.ndarray
    sizes: np.ndarray
    per_image: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.sizes.size - 1)


def label_components(masks: np.ndarray) -> Components:
    """Label 8-connected anomalous regions of ``masks`` (bool ``[B, H, W]``) image by image."""
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [B, H, W], got {masks.shape}")
    masks = np.asarray(masks, dtype=bool)  # no copy for bool input; 0/1 arrays must not become fancy indices
    labels = np.zeros(masks.shape, dtype=np.int32)
    per_image = np.zeros(masks.shape[0], dtype=np.int64)
    offset = 0
    # Image by image (rather than one 3-D call with a batch-blind structure) so each image's ids form a
    # known contiguous range and per-image counts need no extra pass over the pixels. Images without
    # anomalous pixels (every normal image) have no regions: their labels stay 0 without a labelling pass.
    for b in np.flatnonzero(masks.reshape(masks.shape[0], -1).any(axis=1)):
        n = ndimage.label(masks[b], structure=_EIGHT_CONNECTED, output=labels[b])
        if n and offset:
            np.add(labels[b], offset, out=labels[b], where=labels[b] > 0)
        per_image[b] = n
        offset += n
    # Region sizes from the anomalous pixels only (a small share of all pixels); entry 0 = the normal pixels.
    anomalous_labels = labels[masks]
    sizes = np.bincount(anomalous_labels, minlength=offset + 1)
    sizes[0] = masks.size - anomalous_labels.size
    return Components(labels=labels, sizes=sizes, per_image=per_image)
