"""MVTec AD: finds files in the MVTec layout (also used by converted VisA and the synthetic benchmark).

<root>/<category>/train/good/*.png
<root>/<category>/test/<defect>/*.png          (test/good holds the normal test images)
<root>/<category>/ground_truth/<defect>/<stem>_mask.png

A category without any ground_truth/ folder (users' data often has image-level labels only) is read without
masks: image-level metrics only, as for folder data without a mask_dir.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from kdad.data.datamodule import AnomalyDataModule
from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.files import (
    check_masks_have_images,
    find_mask,
    index_by_stem,
    list_images,
    list_subdirs,
    require_dir,
)

MVTEC_CATEGORIES = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)  # fmt: skip

log = logging.getLogger(__name__)

NORMAL = "good"
GROUND_TRUTH = "ground_truth"


def mvtec_layout_categories(root: Path, normal: str = NORMAL) -> list[str]:
    """Sub-folders of ``root`` that look like MVTec-layout categories (they hold train/good, or train/<normal>;
    ``normal`` may be a path, e.g. "good/rgb")."""
    if not root.is_dir():
        return []
    return [d.name for d in list_subdirs(root) if (d / "train" / normal).is_dir()]


def find_mvtec_samples(
    category_dir: Path,
    split: str,
    mask_suffixes: Sequence[str] = ("_mask",),
    normal: str = NORMAL,
    masks_required: bool = False,
    layout: str | None = None,
) -> list[Sample]:
    """Samples of ``split`` ("train" or "test") of one category in the MVTec layout.

    Masks are looked up by image stem + one of ``mask_suffixes`` in ground_truth/<defect>/. Without a
    ground_truth/ folder the category has image-level labels only and its defect images get no mask; a mask
    missing under an existing ground_truth/ is still an error, since that is a broken extraction rather than
    an unannotated data set.

    Args:
        normal: the name of the normal folders (train/<normal>, test/<normal>): "good" in MVTec, "ok" in BTAD.
            Normal samples get the defect type "good" whatever the folder's name, as in every benchmark.
        masks_required: for layouts that only exist as a shipped benchmark whose archive annotates every defect
            image (BTAD, MPDD): a missing ground_truth/ is an error instead of image-level data, and so is a mask
            that no test image claims (or a ground_truth/<defect>/ folder without its test/<defect>/).
        layout: the sentence describing the expected layout in error messages (default: the MVTec one).
    """
    layout = layout or mvtec_layout(category_dir, normal, mask_suffixes[0])
    check_choice(split, ("train", "test"), f"MVTec split (in {category_dir})")
    if split == "train":
        return find_normal_samples(category_dir / "train" / normal, "training folder", layout)
    return _find_test_samples(category_dir, mask_suffixes, layout, normal, masks_required)


def mvtec_layout(category_dir: Path, normal: str = NORMAL, mask_suffix: str = "_mask") -> str:
    """The sentence describing one category's MVTec layout, for error messages."""
    return (
        f"Expected the MVTec layout: {category_dir}/train/{normal}/*.png, {category_dir}/test/<defect>/*.png and "
        f"{category_dir}/{GROUND_TRUTH}/<defect>/<stem>{mask_suffix}.png."
    )


def find_normal_samples(folder: Path, what: str, layout: str) -> list[Sample]:
    """Every image of a folder of normal images (train/good, validation/good, ...), defect type "good"; a missing
    folder is a DatasetError naming it as ``what`` and ``layout``."""
    return [Sample(p, None, 0, NORMAL) for p in list_images(require_dir(folder, what, layout))]


def _find_test_samples(
    category_dir: Path, mask_suffixes: Sequence[str], layout: str, normal: str, masks_required: bool
) -> list[Sample]:
    """test/<normal> and test/<defect> images, each defect image paired by stem with its mask when masks exist."""
    test_dir = require_dir(category_dir / "test", "test folder", layout)
    ground_truth = category_dir / GROUND_TRUTH
    annotated = masks_required or ground_truth.exists()
    if annotated:
        require_dir(ground_truth, "mask folder", layout)
    samples: list[Sample] = []
    for defect_dir in list_subdirs(test_dir):
        images = list_images(defect_dir)
        if defect_dir.name == normal or not annotated:
            label = 0 if defect_dir.name == normal else 1
            samples += [Sample(p, None, label, NORMAL if label == 0 else defect_dir.name) for p in images]
        elif images:
            fix = f"The defect images in {defect_dir} need masks there. {layout}"
            mask_dir = require_dir(ground_truth / defect_dir.name, "mask folder", fix)
            masks = index_by_stem(mask_dir)
            if masks_required:
                check_masks_have_images(masks, images, defect_dir, mask_suffixes)
            samples += [Sample(p, find_mask(p, masks, mask_dir, mask_suffixes), 1, defect_dir.name) for p in images]
    if masks_required:
        for mask_dir in list_subdirs(ground_truth):
            images_dir = test_dir / mask_dir.name
            has_images = images_dir.is_dir() and bool(list_images(images_dir))
            if mask_dir.name != normal and list_images(mask_dir) and not has_images:
                raise DatasetError(
                    f"mask folder {mask_dir} has no test images: expected them in {images_dir}. "
                    f"Restore them from the dataset archive, or remove the masks. {layout}"
                )
    if not annotated and any(s.label == 1 for s in samples):
        log.warning(
            "%s: no %s/ folder: image-level metrics only (the defect images have no masks, so pixel metrics "
            "are skipped).",
            category_dir,
            GROUND_TRUTH,
        )
    return samples


class MVTecLayoutDataModule(AnomalyDataModule):
    """Base of the benchmarks in the MVTec layout or a variant of it: ``<root>/<category>/train/<normal>/`` marks a
    category (MVTec AD, MPDD, BTAD, MVTec AD 2, MVTec LOCO AD).

    A subclass states what differs from MVTec AD, as class attributes: ``official_categories`` (and
    ``fixed_categories`` where the benchmark is those only: other folders are not offered as categories), the name of
    its normal folders, its mask suffixes, whether every defect image must have a mask (``masks_required``, see
    :func:`find_mvtec_samples`), the sentence of its errors (``category_layout``) and of ``layout_help``. A test split
    that is not the MVTec one overrides ``find_samples``.
    """

    normal_folder: ClassVar[str] = NORMAL
    mask_suffixes: ClassVar[tuple[str, ...]] = ("_mask",)
    masks_required: ClassVar[bool] = False
    # ``layout_help`` with ``{root}`` for data.root; empty: ``category_layout`` of ``<root>/<category>``.
    layout_help_format: ClassVar[str] = ""

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        found = mvtec_layout_categories(Path(root).expanduser(), cls.normal_folder)
        return [c for c in found if c in cls.official_categories] if cls.fixed_categories else found

    def category_layout(self, category_dir: Path) -> str:
        """The sentence describing ``category_dir``'s expected layout, in the errors of ``find_samples``."""
        return mvtec_layout(category_dir, self.normal_folder, self.mask_suffixes[0])

    def find_samples(self, split: str) -> list[Sample]:
        return find_mvtec_samples(
            self.category_dir,
            split,
            mask_suffixes=self.mask_suffixes,
            normal=self.normal_folder,
            masks_required=self.masks_required,
            layout=self.category_layout(self.category_dir),
        )

    def layout_help(self) -> str:
        if self.layout_help_format:
            return self.layout_help_format.format(root=self.data_root)
        return self.category_layout(self.data_root / "<category>")


class MVTecDataModule(MVTecLayoutDataModule):
    """MVTec AD (15 categories); ``root`` holds the category folders."""

    name = "mvtec"
    official_categories = MVTEC_CATEGORIES
    layout_help_format = (
        "Expected the MVTec layout {root}/<category>/train/good/*.png, test/<defect>/*.png "
        "and ground_truth/<defect>/<stem>_mask.png."
    )
