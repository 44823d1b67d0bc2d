"""VisA: finds files in either of its two on-disk layouts (detected automatically).

(a) raw, as downloaded: ``<root>/split_csv/1cls.csv`` (columns object,split,label,image,mask; paths relative
    to root, e.g. candle/Data/Images/Anomaly/000.JPG) with class-id masks (binarised > 0 at load).
(b) converted to the MVTec layout: ``<root>/<category>/train/good``, ``test/<defect>`` and
    ``ground_truth/<defect>/<stem>.png`` (or ``<stem>_mask.png``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from kdad.data.datamodule import AnomalyDataModule
from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.mvtec import find_mvtec_samples, mvtec_layout_categories

VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip

SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")
# The raw layout only says normal/anomaly; "bad" is the defect name used by MVTec-style VisA conversions,
# so per-defect metrics read the same in both layouts.
RAW_DEFECT_TYPE = "bad"
CONVERTED_MASK_SUFFIXES = ("", "_mask")


def _layouts_help(root: Path) -> str:
    return (
        f"kdad reads VisA in two layouts: (a) as downloaded, with {root / SPLIT_CSV} and the category "
        f"folders ({root}/candle/Data/Images/...); or (b) converted to the MVTec layout, with "
        f"{root}/<category>/train/good, test/<defect> and ground_truth/<defect>/<stem>.png."
    )


def read_split_csv(csv_path: Path) -> list[dict[str, str]]:
    """Rows of VisA's split CSV, checked for the expected header."""
    try:
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{csv_path} lacks the column(s) {', '.join(missing)}: expected the header "
                    f"'{','.join(CSV_COLUMNS)}' of VisA's split_csv/1cls.csv. Restore it from the archive."
                )
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read VisA split file {csv_path}: {exc}. Restore it from the archive.") from exc


def raw_categories(root: Path) -> list[str]:
    """Categories listed in the split CSV whose folder exists under ``root``."""
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        return []
    return sorted({row["object"] for row in read_split_csv(csv_path) if (root / row["object"]).is_dir()})


def find_raw_samples(root: Path, category: str, split: str) -> list[Sample]:
    """Samples of ``split`` for ``category`` from the raw VisA split CSV."""
    csv_path = root / SPLIT_CSV
    check_choice(split, ("train", "test"), f"VisA split (in {csv_path})")
    rows = read_split_csv(csv_path)
    if not any(row["object"] == category for row in rows):
        raise DatasetError(
            f"{csv_path} has no rows for category '{category}', and {root / category}/train/good does not "
            f"exist. {_layouts_help(root)}"
        )
    samples: list[Sample] = []
    for line, row in enumerate(rows, start=2):
        if row["object"] != category or row["split"] != split:
            continue
        where = f"{csv_path} line {line}"
        check_choice(row["label"], ("normal", "anomaly"), f"label ({where})")
        image = root / row["image"]
        if not image.is_file():
            raise DatasetError(
                f"{where} lists the image {image}, which does not exist. Re-extract the VisA archive into "
                f"{root} (file names are case sensitive: VisA images end in .JPG)."
            )
        if row["label"] == "normal":
            samples.append(Sample(image, None, 0, "good"))
            continue
        mask = root / row["mask"] if row["mask"] else None
        if mask is None or not mask.is_file():
            raise DatasetError(
                f"{where}: defect image {image} has no mask file ({mask or 'the mask column is empty'}). "
                f"Re-extract the VisA archive into {root}."
            )
        samples.append(Sample(image, mask, 1, RAW_DEFECT_TYPE))
    return samples


def detect_layout(root: Path, category: str) -> str:
    """ "converted" if ``<root>/<category>/train/good`` exists, else "raw" if the split CSV exists."""
    if (root / category / "train" / "good").is_dir():
        return "converted"
    if (root / SPLIT_CSV).is_file():
        return "raw"
    raise DatasetError(f"no VisA data found for category '{category}' under {root}. {_layouts_help(root)}")


class VisADataModule(AnomalyDataModule):
    """VisA (12 categories) in its raw or MVTec-converted layout; ``root`` is the dataset folder."""

    name = "visa"
    official_categories = VISA_CATEGORIES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._layout: str | None = None

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        root = Path(root).expanduser()
        return sorted(set(mvtec_layout_categories(root)) | set(raw_categories(root)))

    @property
    def layout(self) -> str:
        """ "raw" or "converted", detected on first use."""
        if self._layout is None:
            self._layout = detect_layout(self.data_root, self.category)
        return self._layout

    def find_samples(self, split: str) -> list[Sample]:
        if self.layout == "raw":
            return find_raw_samples(self.data_root, self.category, split)
        return find_mvtec_samples(self.category_dir, split, CONVERTED_MASK_SUFFIXES)

    def layout_help(self) -> str:
        return _layouts_help(self.data_root)

    def describe_layout(self) -> dict[str, Any]:
        return {"layout": self.layout}
