"""Real-IAD: 30 categories, 5 camera views per sample, train/test lists in one JSON file per category.

<root>/realiad_1024/<category>/OK/<sample>/<category>_<NNNN>_OK_C<view>_<timestamp>.jpg
<root>/realiad_1024/<category>/NG/<defect>/<sample>/<category>_<NNNN>_NG_<defect>_C<view>_<timestamp>.jpg
                                                  ... and its mask, the same name with .png, next to it
<root>/realiad_jsons/<category>.json     {"meta": {"prefix": ..., "normal_class": "OK", ...},
                                          "train": [record, ...], "test": [record, ...]}
    record: {"category": ..., "anomaly_class": "OK" or a defect code (AK, BX, CH, HS, PS, QS, YW, ZW),
             "image_path": "NG/HS/S0064/...jpg", "mask_path": "NG/HS/S0064/...png" or null}

The JSON folder is a setting (``json_dir``): the release ships ``realiad_jsons`` (multi-view, the standard
single-class protocol, the default), ``realiad_jsons_sv`` (single view, C1 only) and ``realiad_jsons_fuiad_<r>``
(training sets with a share r of anomalous samples). Extracting realiad_jsons.zip into ``<root>`` puts them either
directly under it (the layout of the Real-IAD repository's README) or under ``<root>/realiad_jsons/`` (the layout
anomalib and Dinomaly read); by default kdad takes ``<root>/realiad_jsons/<category>.json``, else
``<root>/realiad_jsons/realiad_jsons/<category>.json``. The image folder is a setting too (``image_dir``:
realiad_1024 by default, as the reference experiments; realiad_256, realiad_512 or realiad_raw also work).

Decisions, following the reference loader (Tencent/AnomalyDetection_Real-IAD, datasets/explicit_dataset.py):
record paths are relative to ``<root>/<image_dir>/<meta.prefix>`` (the category folder when the prefix is empty);
a record is anomalous unless its anomaly_class is ``meta.normal_class`` ("OK") or it has no mask (the reference
code counts such a view as normal); every record of "train" is trained on, as the reference code does, the
anomalous ones of the FUIAD lists included (counted under their defect code in ``describe()``). Normal images have
the defect type "good", anomalous ones their anomaly_class.

Metrics: per image (each view on its own) at image and pixel level, as every kdad benchmark; and, as Real-IAD's
paper defines its image-level detection per sample, per sample (``sample/<metric>``): a sample is the folder
holding its views, scores the maximum of its views' scores and is anomalous when any view is (the grouping of the
official ADEval tool, whose sample key is the file name up to ``_C<view>_``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdad.data.datamodule import AnomalyDataModule
from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.files import list_subdirs

REALIAD_CATEGORIES = (
    "audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts", "pcb",
    "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator", "rolled_strip_base",
    "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy", "toy_brick", "transistor1", "u_block",
    "usb", "usb_adaptor", "vcpill", "wooden_beads", "woodstick", "zipper",
)  # fmt: skip

IMAGE_DIR = "realiad_1024"
# Where realiad_jsons.zip puts the standard split files, in the order kdad looks (module docstring).
JSON_DIRS = ("realiad_jsons", "realiad_jsons/realiad_jsons")
RECORD_FIELDS = ("category", "anomaly_class", "image_path", "mask_path")
NORMAL = "good"
DEFAULT_NORMAL_CLASS = "OK"


def read_split_file(path: Path) -> dict[str, Any]:
    """A Real-IAD split file, checked for its structure: ``meta`` (an object), ``train`` and ``test`` (lists)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(
            f"cannot read Real-IAD split file {path}: {exc}. Restore it from realiad_jsons.zip."
        ) from exc
    if not (
        isinstance(data, dict)
        and isinstance(data.get("meta"), dict)
        and isinstance(data.get("train"), list)
        and isinstance(data.get("test"), list)
    ):
        raise DatasetError(
            f"{path} is not a Real-IAD split file: expected a JSON object with 'meta' (an object) and the lists "
            "'train' and 'test'. Restore it from realiad_jsons.zip."
        )
    return data


def find_realiad_samples(split_file: Path, base: Path, split: str) -> list[Sample]:
    """Samples of ``split`` ("train" or "test") listed in ``split_file``, paths relative to ``base``."""
    check_choice(split, ("train", "test"), f"Real-IAD split (in {split_file})")
    data = read_split_file(split_file)
    normal_class = str(data["meta"].get("normal_class", DEFAULT_NORMAL_CLASS))
    samples: list[Sample] = []
    for index, record in enumerate(data[split]):
        where = f"{split_file} {split}[{index}]"
        missing = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
        if missing:
            raise DatasetError(
                f"{where} lacks the field(s) {', '.join(missing)}: every record holds {', '.join(RECORD_FIELDS)}. "
                "Restore the file from realiad_jsons.zip."
            )
        image = base / str(record["image_path"])
        mask = base / str(record["mask_path"]) if record["mask_path"] else None
        if not image.is_file():
            if mask is not None and mask.is_file():
                raise DatasetError(
                    f"mask {mask} has no image: {where} pairs it with {image}, which does not exist. Re-extract the "
                    f"category's archive into {base}."
                )
            raise DatasetError(
                f"{where} lists the image {image}, which does not exist. Extract the category's archive into {base} "
                "(paths in the file are relative to <root>/<image_dir>/<meta.prefix>; check data.image_dir)."
            )
        anomalous = str(record["anomaly_class"]) != normal_class and mask is not None
        if not anomalous:
            samples.append(Sample(image, None, 0, NORMAL))
            continue
        if split == "train":
            # FUIAD lists train on anomalous samples on purpose; their masks are never used.
            samples.append(Sample(image, None, 1, str(record["anomaly_class"])))
            continue
        if not mask.is_file():
            raise DatasetError(
                f"{where}: the defect image {image} lists the mask {mask}, which does not exist. Re-extract the "
                f"category's archive into {base}."
            )
        samples.append(Sample(image, mask, 1, str(record["anomaly_class"])))
    return samples


class RealIADDataModule(AnomalyDataModule):
    """Real-IAD (30 categories); ``root`` holds ``realiad_1024/`` and ``realiad_jsons/`` (module docstring).

    Args:
        image_dir: folder of the images under ``root`` (realiad_1024; or realiad_256, realiad_512, realiad_raw).
        json_dir: folder of the split files under ``root`` (or absolute): realiad_jsons, realiad_jsons_sv,
            realiad_jsons_fuiad_0.1, ...; None looks for the standard realiad_jsons in both extraction layouts.
        **kwargs: see :class:`~kdad.data.datamodule.AnomalyDataModule`.
    """

    name = "realiad"
    official_categories = REALIAD_CATEGORIES
    fixed_categories = True

    def __init__(self, *args: Any, image_dir: str = IMAGE_DIR, json_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image_dir = str(image_dir)
        self.json_dir = str(json_dir) if json_dir is not None else None
        self._split_file: Path | None = None
        self._base: Path | None = None

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        """Official categories with a folder in any image folder (``realiad_<resolution>``) under ``root``."""
        root = Path(root).expanduser()
        if not root.is_dir():
            return []
        found: set[str] = set()
        for folder in list_subdirs(root):
            if folder.name.startswith("realiad_") and not folder.name.startswith("realiad_jsons"):
                found |= {d.name for d in list_subdirs(folder) if d.name in REALIAD_CATEGORIES}
        return sorted(found)

    def locate_root(self) -> Path:
        root = super().locate_root()
        images = root / self.image_dir
        if not images.is_dir():
            hint = ""
            if root.name.startswith("realiad_") or (root / "OK").is_dir():
                hint = f" {root} looks like an image or category folder itself: set data.root to the Real-IAD folder."
            raise DatasetError(
                f"Real-IAD image folder {images} does not exist. data.root must be the folder holding "
                f"{self.image_dir}/ and realiad_jsons/ (data.image_dir names the image folder).{hint}"
            )
        return root

    @property
    def category_dir(self) -> Path:
        return self.data_root / self.image_dir / self.category

    def check_category(self) -> None:
        self.check_official_category()
        if self.category_dir.is_dir():
            return
        folder = self.data_root / self.image_dir
        found = [d.name for d in list_subdirs(folder) if d.name in REALIAD_CATEGORIES]
        raise DatasetError(
            f"Real-IAD category folder {self.category_dir} does not exist. Categories found in {folder}: "
            f"{', '.join(found) or 'none'}. Extract the category's archive there."
        )

    @property
    def split_file(self) -> Path:
        """The category's JSON split file (``json_dir``, or the first standard location that holds it)."""
        if self._split_file is None:
            folders = [self.json_dir] if self.json_dir is not None else list(JSON_DIRS)
            candidates = [self.data_root / folder / f"{self.category}.json" for folder in folders]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise DatasetError(
                    f"Real-IAD split file {' or '.join(str(c) for c in candidates)} does not exist. Extract "
                    f"realiad_jsons.zip into {self.data_root}, or set data.json_dir to the folder holding "
                    f"{self.category}.json (realiad_jsons, realiad_jsons_sv, realiad_jsons_fuiad_0.1, ...)."
                )
            self._split_file = found
        return self._split_file

    @property
    def base(self) -> Path:
        """The folder the split file's paths are relative to: ``<root>/<image_dir>/<meta.prefix>``."""
        if self._base is None:
            prefix = str(read_split_file(self.split_file)["meta"].get("prefix") or "").strip("/")
            self._base = self.data_root / self.image_dir / prefix if prefix else self.category_dir
        return self._base

    def find_samples(self, split: str) -> list[Sample]:
        return find_realiad_samples(self.split_file, self.base, split)

    def test_units(self) -> dict[str, str]:
        """Each test view's sample: the folder holding the sample's views, relative to the category folder."""
        units = {}
        for sample in self.test_dataset.samples:
            folder = sample.image_path.parent
            units[str(sample.image_path)] = (
                folder.relative_to(self.base).as_posix() if folder.is_relative_to(self.base) else str(folder)
            )
        return units

    def layout_help(self) -> str:
        return (
            f"Expected the Real-IAD layout: {self.data_root}/{self.image_dir}/<category>/{{OK,NG/<defect>}}/<sample>/"
            f"*.jpg (masks *.png next to the NG images) and {self.data_root}/realiad_jsons/<category>.json."
        )

    def describe_layout(self) -> dict[str, Any]:
        units = self.test_units()
        return {
            "image_dir": self.image_dir,
            "split_file": str(self.split_file),
            "test_samples": len(set(units.values())),
            "protocol": {
                "train": f"the 'train' list of {self.split_file.name} (every record, as the reference code)",
                "test": f"the 'test' list of {self.split_file.name}, one test image per camera view",
                "labels": "anomalous iff anomaly_class != meta.normal_class and mask_path is set (reference loader)",
                "masks": "mask_path (.png next to the image), binarised > 0",
                "sample_metrics": "sample/<metric>: per sample (the folder of its views), score = max over its "
                "views, anomalous iff any view is; pixel metrics are per view",
            },
        }
