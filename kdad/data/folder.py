"""Users' own images: a folder of normal images, a folder of defect images, optionally masks.

    <root>/<normal_dir>/*.png                 normal images (training; a seeded share becomes test normals
                                              unless test_normal_dir is given)
    <root>/<test_normal_dir>/*.png            optional normal test images
    <root>/<abnormal_dir>/*.png               defect images of one type named after the folder, or
    <root>/<abnormal_dir>/<defect>/*.png      one sub-folder per defect type
    <root>/<mask_dir>/...                     optional masks mirroring abnormal_dir, named <stem>[_mask].<ext>

Folder arguments are relative to root (absolute paths work too). Any of png/jpg/jpeg/bmp/tif/tiff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdad.data.datamodule import AnomalyDataModule, hold_out
from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.files import find_mask, index_by_stem, list_images, list_subdirs, require_dir

MASK_SUFFIXES = ("", "_mask")


def find_abnormal_samples(abnormal_dir: Path, mask_dir: Path | None, skip: tuple[str, ...] = ()) -> list[Sample]:
    """Defect images: directly in ``abnormal_dir`` (one type) or in its sub-folders (one type each), leaving out
    the sub-folders named in ``skip``."""
    direct = list_images(abnormal_dir)
    groups = [(d, images) for d in list_subdirs(abnormal_dir) if d.name not in skip and (images := list_images(d))]
    if direct and groups:
        raise DatasetError(
            f"{abnormal_dir} holds images both directly and in sub-folders "
            f"({', '.join(d.name for d, _ in groups)}). Put all defect images directly in it (one defect "
            "type) or all in sub-folders (one defect type each); keep masks outside it (data.mask_dir)."
        )
    if direct:
        groups = [(abnormal_dir, direct)]
    if not groups:
        raise DatasetError(
            f"no defect images in {abnormal_dir}: the test set needs anomalous images to evaluate on. Put "
            "them there directly or in one sub-folder per defect type."
        )
    samples: list[Sample] = []
    for folder, images in groups:
        defect = folder.name
        if mask_dir is None:
            samples += [Sample(p, None, 1, defect) for p in images]
            continue
        group_masks = mask_dir if folder == abnormal_dir else mask_dir / defect
        require_dir(group_masks, "mask folder", f"With data.mask_dir set, it must mirror {abnormal_dir}'s structure.")
        masks = index_by_stem(group_masks)
        samples += [Sample(p, find_mask(p, masks, group_masks, MASK_SUFFIXES), 1, defect) for p in images]
    return samples


def find_labelled_samples(folder: Path, mask_dir: Path | None = None, normal: str = "good") -> list[Sample]:
    """A labelled folder in MVTec test layout: ``<folder>/good/`` normal images and ``<folder>/<defect>/``
    defect images, with optional masks in ``mask_dir/<defect>/`` named ``<stem>[_mask].<ext>`` (the layout of the
    ``f1_val`` threshold folder, ``threshold.val_dir``)."""
    folder = require_dir(folder, "labelled threshold folder", "Set threshold.val_dir (good/ and <defect>/ folders).")
    if mask_dir is not None:
        mask_dir = require_dir(mask_dir, "mask folder", "Set threshold.mask_dir (mirrors val_dir's defect folders).")
    normal_dir = require_dir(folder / normal, "normal image folder", f"{folder} needs a '{normal}/' sub-folder.")
    normals = [Sample(p, None, 0, normal) for p in list_images(normal_dir)]
    if not normals:
        raise DatasetError(f"no normal images in {normal_dir}: a threshold needs normal and defect images.")
    return normals + find_abnormal_samples(folder, mask_dir, skip=(normal,))


class FolderDataModule(AnomalyDataModule):
    """A user's own images on disk (see the module docstring for the layout).

    Args:
        root: folder the other folder arguments are relative to.
        category: a name for the data set, used only in logs and outputs.
        normal_dir: normal images; all for training if test_normal_dir is given.
        abnormal_dir: defect images (directly, or one sub-folder per defect type).
        mask_dir: masks mirroring abnormal_dir; None when there is no pixel ground truth (then
            ``has_pixel_masks`` is False and only image-level metrics apply).
        test_normal_dir: normal test images; None holds out ``normal_test_split`` of normal_dir instead.
        normal_test_split: fraction of normal_dir held out as test normals when test_normal_dir is None.
        test_split_seed: seed of that hold-out, kept apart from ``seed`` so that runs with different training
            seeds are evaluated on the same test images.
        **kwargs: every other AnomalyDataModule argument (image_size, batch_size, val_source, ...).
    """

    name = "folder"
    DEFAULT_CATEGORY = "custom"

    def __init__(
        self,
        root: str,
        category: str = DEFAULT_CATEGORY,
        normal_dir: str = "good",
        abnormal_dir: str = "defect",
        mask_dir: str | None = None,
        test_normal_dir: str | None = None,
        normal_test_split: float = 0.2,
        test_split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, category=category, **kwargs)
        self.normal_dir = str(normal_dir)
        self.abnormal_dir = str(abnormal_dir)
        self.mask_dir = str(mask_dir) if mask_dir is not None else None
        self.test_normal_dir = str(test_normal_dir) if test_normal_dir is not None else None
        self.normal_test_split = float(normal_test_split)
        self.test_split_seed = int(test_split_seed)
        self._normals: tuple[list[Sample], list[Sample]] | None = None

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        # A folder data set is a single category whose name is free; report the default one.
        return [cls.DEFAULT_CATEGORY] if Path(root).expanduser().is_dir() else []

    def check_category(self) -> None:
        """Any category name is valid: it only names the data set."""

    @property
    def category_dir(self) -> Path:
        return self.data_root

    def _path(self, folder: str) -> Path:
        return self.data_root / Path(folder).expanduser()

    def _normal_split(self) -> tuple[list[Sample], list[Sample]]:
        """(train normals, test normals), computed once."""
        if self._normals is None:
            normal_dir = require_dir(
                self._path(self.normal_dir),
                "normal image folder",
                "Set data.normal_dir (relative to data.root).",
            )
            normals = [Sample(p, None, 0, "good") for p in list_images(normal_dir)]
            if not normals:
                raise DatasetError(
                    f"no training images in {normal_dir}: put normal images (png/jpg/bmp/tif) there or point "
                    "data.normal_dir at the folder that holds them."
                )
            if self.test_normal_dir is None:
                self._normals = hold_out(
                    normals, self.normal_test_split, self.test_split_seed, f"test normals of {normal_dir}"
                )
            else:
                test_dir = require_dir(
                    self._path(self.test_normal_dir),
                    "normal test folder",
                    "Set data.test_normal_dir (relative to data.root).",
                )
                self._normals = (normals, [Sample(p, None, 0, "good") for p in list_images(test_dir)])
        return self._normals

    def find_samples(self, split: str) -> list[Sample]:
        check_choice(split, ("train", "test"), f"folder split (data under {self.data_root})")
        if split == "train":
            return self._normal_split()[0]
        abnormal_dir = require_dir(
            self._path(self.abnormal_dir),
            "defect image folder",
            "Set data.abnormal_dir (relative to data.root).",
        )
        mask_dir = None
        if self.mask_dir is not None:
            mask_dir = require_dir(
                self._path(self.mask_dir), "mask folder", "Set data.mask_dir (relative to data.root) or null."
            )
        return self._normal_split()[1] + find_abnormal_samples(abnormal_dir, mask_dir)

    def describe_layout(self) -> dict[str, Any]:
        return {
            "normal_dir": self.normal_dir,
            "abnormal_dir": self.abnormal_dir,
            "mask_dir": self.mask_dir,
            "test_normal_dir": self.test_normal_dir,
        }
