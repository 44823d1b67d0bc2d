"""BTAD (beanTech Anomaly Detection, Mishra et al., ICIP 2021 "VT-ADL"): three industrial products, MVTec-like.

<root>/<category>/train/ok/<stem>.<ext>           normal training images
<root>/<category>/test/ok/<stem>.<ext>            normal test images
<root>/<category>/test/ko/<stem>.<ext>            defect test images
<root>/<category>/ground_truth/ko/<stem>.<ext>    their masks: same stem as the image, 0/255

``root`` is the extracted archive's ``BTech_Dataset_transformed/`` folder. Categories 01, 02, 03 (the archive's
folder names). The extensions differ per category in the release: 01 images .bmp with .png masks, 02 .png / .png,
03 .bmp / .bmp (the original loaders of the BTAD literature and DatasetNinja's converter build exactly these mask
names). kdad pairs by stem and reads any image extension, so copies converted to PNG (anomalib's BTech preparation
converts the .bmp files) read the same; ``describe()`` records the extensions found. Stems restart at 0000 in every
folder (test/ok/0000.bmp and test/ko/0000.bmp are different images), so masks are only paired within ko/.

Protocol: the release's split, train/ok for training and the whole test/ folder for testing; pixel ground truth
from ground_truth/ko. The layout only exists as this shipped benchmark, whose archive annotates every defect image,
so a missing ground_truth/, a defect image without a mask and a mask without its image are all errors. The release
has defect images whose mask is empty (e.g. some of 02's and 03's): they stay anomalous (the image label is the
folder's), they add no positive pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdad.data.dataset import Sample
from kdad.data.mvtec import GROUND_TRUTH, MVTecLayoutDataModule

BTAD_CATEGORIES = ("01", "02", "03")
NORMAL = "ok"
# What the release ships, per category: (image extension, mask extension). For docs and messages only; kdad reads
# whatever extensions are on disk.
RELEASE_EXTENSIONS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


class BTADDataModule(MVTecLayoutDataModule):
    """BTAD (categories 01, 02, 03); ``root`` holds the category folders (see the module docstring)."""

    name = "btad"
    official_categories = BTAD_CATEGORIES
    fixed_categories = True
    normal_folder = NORMAL
    mask_suffixes = ("",)
    masks_required = True
    layout_help_format = (
        "Expected the BTAD layout {root}/<category>/train/ok, test/ok, test/ko and ground_truth/ko "
        "(categories 01, 02, 03: data.root is the archive's BTech_Dataset_transformed folder)."
    )

    def category_layout(self, category_dir: Path) -> str:
        image, mask = RELEASE_EXTENSIONS.get(self.category, (".bmp", ".png"))
        return (
            f"Expected the BTAD layout: {category_dir}/train/{NORMAL}/<stem>{image}, "
            f"{category_dir}/test/{NORMAL}/<stem>{image}, {category_dir}/test/ko/<stem>{image} and "
            f"{category_dir}/{GROUND_TRUTH}/ko/<stem>{mask} (masks named like their image)."
        )

    def describe_layout(self) -> dict[str, Any]:
        samples = self._samples_or_setup()
        return {
            "protocol": {
                "split": "official: train/ok for training; test/ok and test/ko for testing",
                "masks": "ground_truth/ko/<image stem>.<ext>, binarised > 0; empty masks of ko images kept",
            },
            "extensions": file_extensions(samples),
        }


def file_extensions(samples: dict[str, list[Sample]]) -> dict[str, list[str]]:
    """The image and mask file extensions found, over every split (what the release ships differs per category)."""
    every = [s for split in samples.values() for s in split]
    return {
        "images": sorted({s.image_path.suffix for s in every}),
        "masks": sorted({s.mask_path.suffix for s in every if s.mask_path is not None}),
    }
