"""What the test path records per image: the types that results files, overlays and review material are made of.

Plain data at the bottom of the tree: the shared test path (kdad.methods.base) fills them, the experiment runner
(kdad.runner.results, kdad.runner.review) writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TestRecord:
    image_path: str
    defect_type: str
    label: int
    score: float
    category: str | None = None  # the image's category in a test of several (unified training)


@dataclass
class OverlaySample:
    image: np.ndarray  # uint8 HxWx3
    anomaly_map: np.ndarray  # float32 HxW
    mask: np.ndarray | None  # bool HxW
    record: TestRecord
