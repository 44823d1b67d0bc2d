"""MVTec 3D-AD, RGB images only (the xyz/ point clouds are ignored).

<root>/<category>/{train,validation,test}/<label>/rgb/NNN.png
<root>/<category>/test/<label>/gt/NNN.png      (masks, same stem as the image)

Unlike the MVTec layout, a defect folder without gt/ is always an error, never image-level data: this layout
is only the shipped benchmark's, whose archive has gt/ everywhere, so a missing one is a broken extraction.
Own RGB data without masks belongs in the MVTec layout (no ground_truth/ folder) or data=folder.
"""

from __future__ import annotations

from pathlib import Path

from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.files import find_mask, index_by_stem, list_images, list_subdirs, require_dir
from kdad.data.mvtec import MVTecLayoutDataModule, find_normal_samples

MVTEC3D_CATEGORIES = (
    "bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire",
)  # fmt: skip

NORMAL = "good"


def _layout(category_dir: Path) -> str:
    return (
        f"Expected the MVTec 3D-AD layout: {category_dir}/{{train,validation,test}}/<label>/rgb/NNN.png with "
        f"masks in {category_dir}/test/<label>/gt/NNN.png."
    )


def find_mvtec3d_samples(category_dir: Path, split: str) -> list[Sample]:
    """Samples of ``split`` ("train", "validation" or "test"); train and validation are normal only."""
    layout = _layout(category_dir)
    check_choice(split, ("train", "validation", "test"), f"MVTec 3D-AD split (in {category_dir})")
    if split in ("train", "validation"):
        return find_normal_samples(category_dir / split / NORMAL / "rgb", f"{split} folder", layout)
    test_dir = require_dir(category_dir / "test", "test folder", layout)
    samples: list[Sample] = []
    for label_dir in list_subdirs(test_dir):
        rgb_dir = require_dir(label_dir / "rgb", "image folder", layout)
        images = list_images(rgb_dir)
        if label_dir.name == NORMAL:
            # The all-black gt files of normal test images carry no information: skip decoding them.
            samples += [Sample(p, None, 0, NORMAL) for p in images]
            continue
        if not images:
            continue
        gt_dir = require_dir(label_dir / "gt", "mask folder", f"The defect images in {rgb_dir} need masks. {layout}")
        masks = index_by_stem(gt_dir)
        samples += [Sample(p, find_mask(p, masks, gt_dir, ("",)), 1, label_dir.name) for p in images]
    return samples


class MVTec3DDataModule(MVTecLayoutDataModule):
    """MVTec 3D-AD RGB (10 categories). With val_source="train_split" the shipped validation/good images are
    the validation split, and the training set is left whole."""

    name = "mvtec3d"
    official_categories = MVTEC3D_CATEGORIES
    has_validation_split = True
    normal_folder = f"{NORMAL}/rgb"  # a category holds train/good/rgb
    layout_help_format = (
        "Expected the MVTec 3D-AD layout {root}/<category>/{{train,validation,test}}/<label>"
        "/rgb/NNN.png with masks in test/<label>/gt/NNN.png."
    )

    def category_layout(self, category_dir: Path) -> str:
        return _layout(category_dir)

    def find_samples(self, split: str) -> list[Sample]:
        return find_mvtec3d_samples(self.category_dir, split)
