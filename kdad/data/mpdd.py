"""MPDD (Metal Parts Defect Detection, Jezek et al., ICUMT 2021): six metal parts, in the MVTec AD layout.

<root>/<category>/train/good/NNN.png
<root>/<category>/test/<defect>/NNN.png              (test/good holds the normal test images)
<root>/<category>/ground_truth/<defect>/NNN_mask.png

``root`` is the extracted archive (the folder holding bracket_black/ ... tubes/). Categories bracket_black,
bracket_brown, bracket_white, connector, metal_plate, tubes. The files are MVTec's (anomalib reads MPDD with its
MVTec parser: PNG images, ``<stem>_mask.png`` masks), so kdad reads it with the MVTec finder; unlike user data in the
MVTec layout, MPDD is a shipped benchmark whose archive annotates every defect image, so a missing ground_truth/ or
a mask without its image is an error (``masks_required``).

Protocol: the release's split, train/good for training and the whole test/ folder for testing, pixel ground truth
from ground_truth/<defect>/<stem>_mask.png (binarised > 0).
"""

from __future__ import annotations

from typing import Any

from kdad.data.mvtec import MVTecLayoutDataModule

MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")


class MPDDDataModule(MVTecLayoutDataModule):
    """MPDD (6 categories); ``root`` holds the category folders."""

    name = "mpdd"
    official_categories = MPDD_CATEGORIES
    fixed_categories = True
    masks_required = True
    layout_help_format = (
        "Expected MPDD in the MVTec layout {root}/<category>/train/good/*.png, test/<defect>/*.png "
        "and ground_truth/<defect>/<stem>_mask.png."
    )

    def describe_layout(self) -> dict[str, Any]:
        return {
            "protocol": {
                "split": "official: train/good for training; test/<defect> and test/good for testing",
                "masks": "ground_truth/<defect>/<image stem>_mask.png, binarised > 0",
            }
        }
