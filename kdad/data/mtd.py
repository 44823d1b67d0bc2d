"""Magnetic Tile Defects (Huang et al., "Surface defect saliency of magnetic tile", 2018; the release is the GitHub
repository abin24/Magnetic-tile-defect-datasets.): grayscale photographs of magnetic tile surfaces.

<root>/MT_Free/Imgs/exp<k>_num_<n>.jpg          defect-free images (952 in the release)
<root>/MT_Free/Imgs/exp<k>_num_<n>.png          their all-zero masks (not read)
<root>/MT_<Defect>/Imgs/exp<k>_num_<n>.jpg      defect images: MT_Blowhole, MT_Break, MT_Crack, MT_Fray, MT_Uneven
<root>/MT_<Defect>/Imgs/exp<k>_num_<n>.png      their masks, same stem, side by side with the images, 0/255

``root`` is the repository's folder (the one holding the MT_* folders). Image sizes vary. One category,
``magnetic_tile``; the defect types are the folder names without "MT_", lowercased (blowhole, break, crack, fray,
uneven). All six folders are required: a missing one is a partial download.

Protocol: the release has no train/test split. kdad follows the split of the anomaly-detection literature
(DifferNet, Rudolph et al. WACV 2021, and those who compare with it): 80 % of the defect-free images train, the
other 20 % and every defect image test. Which 20 % is either
- seeded (default): ``normal_test_split`` (0.2) of MT_Free's images, sorted by name, drawn with ``test_split_seed``
  (0) -- kept apart from the training ``seed`` so that runs with different seeds share a test set; or
- a list (``train_list``): a text file naming the MT_Free images to train on, one file name a line, e.g. DifferNet's
  published ``mtd_train_filenames.txt``; every other MT_Free image is a test normal.
DSKD (arXiv 2402.00448) reports MT Defects but its split is not public. ``describe()`` (metrics.json) records the
split's source, fraction, seed and file counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdad.data.datamodule import hold_out
from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.files import check_masks_have_images, find_mask, index_by_stem, list_images, require_dir
from kdad.data.single import SingleCategoryDataModule

MTD_CATEGORY = "magnetic_tile"
NORMAL_FOLDER = "MT_Free"
DEFECT_FOLDERS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
IMAGE_DIR = "Imgs"
MASK_EXTENSION = ".png"  # masks are the PNG files of a folder, images every other image file (JPEG in the release)


def defect_type(folder: str) -> str:
    """'MT_Blowhole' -> 'blowhole'."""
    return folder.removeprefix("MT_").lower()


class MagneticTileDataModule(SingleCategoryDataModule):
    """Magnetic Tile Defects (one category, ``magnetic_tile``); ``root`` holds the MT_* folders.

    Args:
        normal_test_split: fraction of MT_Free's images held out as test normals (without ``train_list``).
        test_split_seed: seed of that hold-out, separate from ``seed``.
        train_list: a text file (absolute, or relative to ``root``) naming the MT_Free images to train on, one file
            name a line (blank lines and lines starting with '#' are skipped); None draws the seeded hold-out.
        **kwargs: every other AnomalyDataModule argument.
    """

    name = "mtd"
    official_categories = (MTD_CATEGORY,)

    def __init__(
        self,
        root: str,
        category: str = MTD_CATEGORY,
        normal_test_split: float = 0.2,
        test_split_seed: int = 0,
        train_list: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, category=category, **kwargs)
        self.normal_test_split = float(normal_test_split)
        self.test_split_seed = int(test_split_seed)
        self.train_list = str(train_list) if train_list is not None else None
        self._normals: tuple[list[Sample], list[Sample]] | None = None

    @classmethod
    def holds_layout(cls, root: Path) -> bool:
        return (root / NORMAL_FOLDER / IMAGE_DIR).is_dir()

    def layout_help(self) -> str:
        return (
            f"Expected the Magnetic Tile Defects layout {self.data_root}/MT_<Type>/{IMAGE_DIR}/<stem>.jpg with "
            f"same-stem .png masks beside them, for {', '.join((NORMAL_FOLDER, *DEFECT_FOLDERS))} (data.root is the "
            "folder holding the MT_* folders)."
        )

    def _folder(self, name: str) -> tuple[Path, list[Path], dict[str, Path]]:
        """(folder, images, mask stem index) of one MT_* folder; every mask must belong to an image."""
        folder = require_dir(self.data_root / name / IMAGE_DIR, "image folder", self.layout_help())
        files = list_images(folder)
        images = [p for p in files if p.suffix.lower() != MASK_EXTENSION]
        masks = index_by_stem(folder, [p for p in files if p.suffix.lower() == MASK_EXTENSION])
        index_by_stem(folder, images)  # two images of one stem (a .jpg and a .bmp) could not be told apart
        check_masks_have_images(masks, images, folder, ("",))
        return folder, images, masks

    def _normal_split(self) -> tuple[list[Sample], list[Sample]]:
        """(training normals, test normals) of MT_Free, computed once."""
        if self._normals is None:
            folder, images, _ = self._folder(NORMAL_FOLDER)
            normals = [Sample(p, None, 0, "good") for p in images]
            if not normals:
                raise DatasetError(f"no defect-free images in {folder}: the training set is MT_Free's images.")
            if self.train_list is None:
                self._normals = hold_out(
                    normals, self.normal_test_split, self.test_split_seed, f"test normals of {folder}"
                )
            else:
                listed = self._read_train_list(folder, {s.image_path.name for s in normals})
                self._normals = (
                    [s for s in normals if s.image_path.name in listed],
                    [s for s in normals if s.image_path.name not in listed],
                )
        return self._normals

    def _read_train_list(self, folder: Path, names: set[str]) -> set[str]:
        path = self.data_root / Path(self.train_list).expanduser()
        if not path.is_file():
            raise DatasetError(
                f"train list {path} does not exist: set data.train_list to a text file naming the {folder} images to "
                "train on (absolute, or relative to data.root), or to null for the seeded split."
            )
        lines = [line.strip() for line in path.read_text().splitlines()]
        listed = {line for line in lines if line and not line.startswith("#")}
        unknown = sorted(listed - names)
        if unknown:
            raise DatasetError(
                f"train list {path} names {len(unknown)} image(s) that are not in {folder}, e.g. '{unknown[0]}'. "
                "It must list file names of that folder, one a line."
            )
        return listed

    def find_samples(self, split: str) -> list[Sample]:
        check_choice(split, ("train", "test"), f"Magnetic Tile split (data under {self.data_root})")
        train, test_normals = self._normal_split()
        if split == "train":
            return train
        samples = list(test_normals)
        for name in DEFECT_FOLDERS:
            folder, images, masks = self._folder(name)
            samples += [Sample(p, find_mask(p, masks, folder, ("",)), 1, defect_type(name)) for p in images]
        return samples

    def describe_layout(self) -> dict[str, Any]:
        train, test_normals = self._normal_split()
        if self.train_list is None:
            source = f"seeded hold-out of {self.normal_test_split:g} of {NORMAL_FOLDER} (test_split_seed)"
        else:
            source = f"train_list {self.data_root / Path(self.train_list).expanduser()}"
        return {
            "protocol": {
                "split": f"no official split: {NORMAL_FOLDER} divided into training and test normals ({source}); "
                "every defect image is tested",
                "masks": f"MT_<Defect>/{IMAGE_DIR}/<image stem>.png beside the image, binarised > 0",
            },
            "normal_split": {
                "source": "train_list" if self.train_list is not None else "seeded",
                "normal_test_split": self.normal_test_split if self.train_list is None else None,
                "test_split_seed": self.test_split_seed if self.train_list is None else None,
                "train_list": self.train_list,
                # before any validation or calibration hold-out, which comes out of the training normals (counts)
                "normal_images": len(train) + len(test_normals),
                "train_normals": len(train),
                "test_normals": len(test_normals),
            },
        }
