"""Connected ground-truth regions, the unit over which PRO averages."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 8-connectivity inside an image (the MVTec AD and skimage.measure.label default for 2-D), and no
# connectivity along the batch axis so that one call labels a whole batch without merging images.
_BATCH_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_BATCH_STRUCTURE[1] = True


@dataclass(frozen=True)
class Components:
    """Connected components of a batch of binary masks.

    Attributes:
        labels: ``[B, H, W]`` int32; 0 for normal pixels, otherwise a component id in ``1..n_components``
            that is unique across the batch.
        sizes: ``[n_components + 1]`` pixel count per id (entry 0 counts normal pixels).
        image_index: ``[n_components + 1]`` image of each component (entry 0 is -1).
        per_image: ``[B]`` number of components in each image.
    """

    labels: np.ndarray
    sizes: np.ndarray
    image_index: np.ndarray
    per_image: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.sizes.size - 1)


def label_components(masks: np.ndarray) -> Components:
    """Label 8-connected anomalous regions of ``masks`` (bool ``[B, H, W]``) image by image."""
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape [B, H, W], got {masks.shape}")
    labels, n = ndimage.label(masks, structure=_BATCH_STRUCTURE)
    labels = labels.astype(np.int32, copy=False)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    image_index = np.full(n + 1, -1, dtype=np.int64)
    batch_idx, _, _ = np.nonzero(labels)
    image_index[labels[labels > 0]] = batch_idx
    per_image = np.bincount(image_index[1:], minlength=masks.shape[0])
    return Components(labels=labels, sizes=sizes, image_index=image_index, per_image=per_image)
