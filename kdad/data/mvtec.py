"""MVTec AD: finds files in the MVTec layout (also used by converted VisA and the synthetic benchmark).

<root>/<category>/train/good/*.png
<root>/<category>/test/<defect>/*.png          (test/good holds the normal test images)
<root>/<category>/ground_truth/<defect>/<stem>_mask.png
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kdad.data.datamodule import AnomalyDataModule
from kdad.data.dataset import Sample
from kdad.data.errors import DatasetError
from kdad.data.files import find_mask, index_by_stem, list_images, list_subdirs, require_dir

MVTEC_CATEGORIES = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)  # fmt: skip

NORMAL = "good"


def mvtec_layout_categories(root: Path) -> list[str]:
    """Sub-folders of ``root`` that look like MVTec-layout categories (they hold train/good)."""
    if not root.is_dir():
        return []
    return [d.name for d in list_subdirs(root) if (d / "train" / NORMAL).is_dir()]


def find_mvtec_samples(category_dir: Path, split: str, mask_suffixes: Sequence[str] = ("_mask",)) -> list[Sample]:
    """Samples of ``split`` ("train" or "test") of one category in the MVTec layout.

    Masks are looked up by image stem + one of ``mask_suffixes`` in ground_truth/<defect>/.
    """
    layout = (
        f"Expected the MVTec layout: {category_dir}/train/good/*.png, {category_dir}/test/<defect>/*.png and "
        f"{category_dir}/ground_truth/<defect>/<stem>{mask_suffixes[0]}.png."
    )
    if split == "train":
        folder = require_dir(category_dir / "train" / NORMAL, "training folder", layout)
        return [Sample(p, None, 0, NORMAL) for p in list_images(folder)]
    if split != "test":
        raise DatasetError(f"the MVTec layout has no '{split}' split in {category_dir}; splits are train and test.")
    test_dir = require_dir(category_dir / "test", "test folder", layout)
    samples: list[Sample] = []
    for defect_dir in list_subdirs(test_dir):
        images = list_images(defect_dir)
        if defect_dir.name == NORMAL:
            samples += [Sample(p, None, 0, NORMAL) for p in images]
            continue
        if not images:
            continue
        mask_dir = require_dir(
            category_dir / "ground_truth" / defect_dir.name,
            "mask folder",
            f"The defect images in {defect_dir} need masks there. {layout}",
        )
        masks = index_by_stem(mask_dir)
        samples += [Sample(p, find_mask(p, masks, mask_dir, mask_suffixes), 1, defect_dir.name) for p in images]
    return samples


class MVTecDataModule(AnomalyDataModule):
    """MVTec AD (15 categories); ``root`` holds the category folders."""

    name = "mvtec"
    official_categories = MVTEC_CATEGORIES

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        return mvtec_layout_categories(Path(root).expanduser())

    def find_samples(self, split: str) -> list[Sample]:
        return find_mvtec_samples(self.category_dir, split)

    def layout_help(self) -> str:
        return (
            f"Expected the MVTec layout {self.data_root}/<category>/train/good/*.png, test/<defect>/*.png "
            "and ground_truth/<defect>/<stem>_mask.png."
        )
