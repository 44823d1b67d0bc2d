"""MVTec LOCO AD: logical and structural anomalies, several mask files per defect image.

<root>/<category>/train/good/NNN.png
<root>/<category>/validation/good/NNN.png                     (normal images the model is not trained on)
<root>/<category>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
<root>/<category>/ground_truth/<anomaly type>/NNN/000.png, 001.png, ...   (one file per annotated region)
<root>/<category>/defects_config.json                          (per-defect pixel values; sPRO only, not read)

Masks: every file in ground_truth/<type>/<image stem>/ belongs to that image; they are merged (union of their
pixels > 0) into the image's one pixel ground truth. Their pixel values are not 255 but the defect's
``pixel_value`` from defects_config.json (which the official sPRO metric uses to look up each defect's saturation
area); kdad binarises them with > 0 like every mask.

Protocol (kdad's reading of the release and of the LOCO paper's evaluation): trained on train/good; with
val_source="train_split" the shipped validation/good images are the validation split (the training set stays
whole). Tested on all of test/, and additionally on two groups, each made of test/good plus one anomaly type
(``defect_groups``: ``logical/<metric>``, ``structural/<metric>``), as the official evaluation reports them. The
official localisation metric is sPRO (saturated per-region overlap, with the per-defect saturation thresholds of
defects_config.json); kdad does not compute it: its AU-PRO (unsaturated) and pixel metrics over the merged masks
are reported instead and are not comparable with published AU-sPRO figures.

The archive annotates every defect image, so a defect image without its mask folder, an empty mask folder and a
mask folder without its image are all errors (a broken or mixed extraction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.files import list_images, list_subdirs, require_dir
from kdad.data.mvtec import MVTecLayoutDataModule, find_normal_samples

MVTEC_LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")

NORMAL = "good"
LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"
GROUND_TRUTH = "ground_truth"


def _layout(category_dir: Path) -> str:
    return (
        f"Expected the MVTec LOCO AD layout: {category_dir}/{{train,validation}}/good/NNN.png, "
        f"{category_dir}/test/{{good,{LOGICAL},{STRUCTURAL}}}/NNN.png and the masks of each defect image in "
        f"{category_dir}/{GROUND_TRUTH}/<anomaly type>/NNN/000.png, 001.png, ..."
    )


def find_mvtec_loco_samples(category_dir: Path, split: str) -> list[Sample]:
    """Samples of ``split`` ("train", "validation" or "test") of one MVTec LOCO AD category."""
    layout = _layout(category_dir)
    check_choice(split, ("train", "validation", "test"), f"MVTec LOCO AD split (in {category_dir})")
    if split in ("train", "validation"):
        return find_normal_samples(category_dir / split / NORMAL, f"{split} folder", layout)
    test_dir = require_dir(category_dir / "test", "test folder", layout)
    ground_truth = require_dir(category_dir / GROUND_TRUTH, "mask folder", layout)
    samples: list[Sample] = []
    for type_dir in list_subdirs(test_dir):
        images = list_images(type_dir)
        if type_dir.name == NORMAL:
            samples += [Sample(p, None, 0, NORMAL) for p in images]
            continue
        masks_dir = ground_truth / type_dir.name
        if images:
            require_dir(masks_dir, "mask folder", f"The defect images in {type_dir} need their masks there. {layout}")
        samples += [_defect_sample(image, masks_dir, type_dir.name, layout) for image in images]
        if masks_dir.is_dir():
            _check_mask_folders_have_images(masks_dir, images, type_dir, layout)
    for masks_dir in list_subdirs(ground_truth):
        if not (test_dir / masks_dir.name).is_dir() and list_subdirs(masks_dir):
            raise DatasetError(
                f"mask folder {masks_dir} has no test images: expected them in {test_dir / masks_dir.name}. "
                f"Restore them from the dataset archive, or remove the masks. {layout}"
            )
    return samples


def _defect_sample(image: Path, masks_dir: Path, defect_type: str, layout: str) -> Sample:
    """The defect image with every mask file of its folder ground_truth/<type>/<stem>/ (paired by name)."""
    folder = masks_dir / image.stem
    require_dir(folder, "mask folder", f"The defect image {image} needs its masks (000.png, ...) there. {layout}")
    masks = list_images(folder)
    if not masks:
        raise DatasetError(
            f"mask folder {folder} of the defect image {image} holds no mask files (expected 000.png, ...). "
            "Re-extract it from the dataset archive."
        )
    return Sample(image, masks[0], 1, defect_type, extra_mask_paths=tuple(masks[1:]))


def _check_mask_folders_have_images(masks_dir: Path, images: list[Path], type_dir: Path, layout: str) -> None:
    stems = {image.stem for image in images}
    orphans = [folder for folder in list_subdirs(masks_dir) if folder.name not in stems and list_images(folder)]
    if orphans:
        more = f" ({len(orphans) - 1} more such folder(s) there)" if len(orphans) > 1 else ""
        raise DatasetError(
            f"masks {orphans[0]} have no image: expected {type_dir / orphans[0].name}.png{more}. Restore the image "
            f"from the dataset archive, or remove its masks. {layout}"
        )


class MVTecLOCODataModule(MVTecLayoutDataModule):
    """MVTec LOCO AD (5 categories); ``root`` holds the category folders. Logical and structural anomalies are
    also evaluated apart (``logical/<metric>``, ``structural/<metric>``); see the module docstring."""

    name = "mvtec_loco"
    official_categories = MVTEC_LOCO_CATEGORIES
    has_validation_split = True
    fixed_categories = True
    defect_groups = {"logical": (LOGICAL,), "structural": (STRUCTURAL,)}

    def category_layout(self, category_dir: Path) -> str:
        return _layout(category_dir)

    def find_samples(self, split: str) -> list[Sample]:
        return find_mvtec_loco_samples(self.category_dir, split)

    def describe_layout(self) -> dict[str, Any]:
        return {
            "protocol": {
                "train": "train/good",
                "validation": "validation/good (val_source=train_split; training set left whole)",
                "test": "test/{good,logical_anomalies,structural_anomalies}",
                "masks": "ground_truth/<type>/<stem>/*.png merged (union, pixel value > 0) into one mask per image",
                "groups": {name: f"test/good + test/{types[0]}" for name, types in self.defect_groups.items()},
                "not_computed": "sPRO / AU-sPRO (official LOCO localisation metric): pixel_aupro is the unsaturated "
                "AU-PRO over the merged masks, not comparable with published AU-sPRO",
            }
        }
