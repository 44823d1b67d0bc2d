"""KolektorSDD2 (KSDD2, Božič et al., Computers in Industry 2021): surface images of electrical commutators.

<root>/train/NNNNN.png        images (RGB, about 230 x 630)
<root>/train/NNNNN_GT.png     their masks, side by side: all zero for a defect-free image
<root>/test/NNNNN.png
<root>/test/NNNNN_GT.png

``root`` is the extracted archive (the folder holding train/ and test/). One category, ``ksdd2``. The release
labels images only through their masks (its own loader, vicoslab/mixed-segdec-net-comind2021, reads an image as
positive when its mask has a set pixel); kdad does the same with its mask binarisation (> 0).

Protocol: the release's split. KSDD2 was made for supervised training, so its train/ folder also holds defect
images (246 of 2,331): one-class training uses only the defect-free ones and leaves the others out, counted in the
log and in ``describe()`` (metrics.json, ``ignored_train_anomalies``). The test set is all of test/; its defect
images get the defect type "bad" (KSDD2 names no types; VisA's raw layout uses the same name), their ``_GT`` masks
are the pixel ground truth. Every image needs its ``_GT`` mask and every mask its image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kdad.data.dataset import Sample
from kdad.data.decode import check_choice, mask_is_empty
from kdad.data.files import check_masks_have_images, find_mask, index_by_stem, list_images, require_dir
from kdad.data.single import SingleCategoryDataModule

log = logging.getLogger(__name__)

KSDD2_CATEGORY = "ksdd2"
MASK_SUFFIX = "_GT"
DEFECT_TYPE = "bad"


def find_ksdd2_samples(folder: Path) -> list[Sample]:
    """Every image of one KSDD2 split folder, labelled by its ``_GT`` mask (empty: normal, mask None)."""
    layout = (
        f"Expected the KSDD2 layout: {folder.parent}/{{train,test}}/NNNNN.png with the masks NNNNN{MASK_SUFFIX}.png "
        "beside them (data.root is the folder holding train/ and test/)."
    )
    require_dir(folder, f"{folder.name} folder", layout)
    files = list_images(folder)
    masks = index_by_stem(folder, [p for p in files if p.stem.endswith(MASK_SUFFIX)])
    images = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
    index_by_stem(folder, images)  # two images of one stem could not be told apart
    check_masks_have_images(masks, images, folder, (MASK_SUFFIX,))
    samples = []
    for image in images:
        mask = find_mask(image, masks, folder, (MASK_SUFFIX,))
        # An all-zero mask carries no information: a normal image gets none, as in every benchmark.
        samples.append(Sample(image, None, 0, "good") if mask_is_empty(mask) else Sample(image, mask, 1, DEFECT_TYPE))
    return samples


class KSDD2DataModule(SingleCategoryDataModule):
    """KolektorSDD2 (one category, ``ksdd2``); ``root`` holds train/ and test/ (see the module docstring)."""

    name = "ksdd2"
    official_categories = (KSDD2_CATEGORY,)

    def __init__(self, root: str, category: str = KSDD2_CATEGORY, **kwargs: Any) -> None:
        super().__init__(root=root, category=category, **kwargs)
        self.ignored_train_anomalies: int | None = None

    @classmethod
    def holds_layout(cls, root: Path) -> bool:
        return (root / "train").is_dir() and (root / "test").is_dir()

    def layout_help(self) -> str:
        return f"Expected the KSDD2 layout {self.data_root}/{{train,test}}/NNNNN.png with NNNNN{MASK_SUFFIX}.png masks."

    def find_samples(self, split: str) -> list[Sample]:
        check_choice(split, ("train", "test"), f"KSDD2 split (data under {self.data_root})")
        samples = find_ksdd2_samples(self.data_root / split)
        if split == "test":
            return samples
        normals = [s for s in samples if s.label == 0]
        self.ignored_train_anomalies = len(samples) - len(normals)
        if self.ignored_train_anomalies:
            log.info(
                "%s: %d training images with a defect mask left out (one-class training uses the %d defect-free ones)",
                self.data_root / split,
                self.ignored_train_anomalies,
                len(normals),
            )
        return normals

    def describe_layout(self) -> dict[str, Any]:
        self._samples_or_setup()
        return {
            "protocol": {
                "split": "official: the defect-free images of train/ for training (its defect images left out); "
                "all of test/ for testing",
                "masks": f"<stem>{MASK_SUFFIX}.png beside the image; an empty mask marks a normal image",
            },
            "ignored_train_anomalies": self.ignored_train_anomalies,
        }
