"""Writers of tiny dataset trees in the exact on-disk formats of each benchmark (importable by any test).

Every writer returns a manifest: absolute image path -> Expected(label, defect_type, mask_name, box), so
tests can check what a finder reports against what was written. Defect images carry a bright rectangle at
``box`` and their mask marks the same rectangle; every stem gets a different box, so a mask paired with
the wrong image is visible. Stems mix lengths ("000", "0001", ...) so that pairing images and masks by
position in a sorted listing would mis-pair them ("0001_mask" sorts before "000_mask", "0001" after "000").
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (64, 48)  # (width, height): non-square on purpose, the data layer resizes to a square
STEMS = ("000", "0001", "002", "0003", "004", "0005", "006", "0007", "008", "0009", "010", "0011")


@dataclass(frozen=True)
class Expected:
    label: int
    defect_type: str
    mask_name: str | None = None  # file name of the mask paired with this image
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) of the defect, in pixels


Manifest = dict[Path, Expected]


def stems(n: int) -> list[str]:
    if n > len(STEMS):
        return [f"{i:05d}" for i in range(n)]
    return list(STEMS[:n])


def box_for(index: int, size: tuple[int, int] = SIZE) -> tuple[int, int, int, int]:
    """A distinct rectangle per index, inside the image."""
    width, height = size
    left = 2 + (index * 7) % max(1, width - 20)
    top = 2 + (index * 5) % max(1, height - 16)
    return left, top, left + 12 + index % 5, top + 8 + index % 3


def write_image(
    path: Path, size: tuple[int, int] = SIZE, box: tuple[int, int, int, int] | None = None, mode: str = "RGB"
) -> Path:
    """Seeded noise (seed from the file name) with a bright rectangle at ``box``; format from the suffix."""
    seed = int(hashlib.sha256(str(path.name).encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)
    if box is not None:
        left, top, right, bottom = box
        pixels[top:bottom, left:right] = 250
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_mask(
    path: Path,
    box: tuple[int, int, int, int],
    size: tuple[int, int] = SIZE,
    value: int = 255,
    mode: str = "L",
) -> Path:
    """A mask with ``value`` inside ``box`` (255 like MVTec, or a class id like VisA)."""
    width, height = size
    pixels = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    pixels[top:bottom, left:right] = value
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.convert("P")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_dummy(path: Path, content: bytes = b"not an image") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def write_mvtec_category(
    root: Path,
    category: str = "bottle",
    n_train: int = 5,
    n_test_good: int = 2,
    defects: Sequence[str] = ("broken_large", "contamination"),
    n_per_defect: int = 3,
    size: tuple[int, int] = SIZE,
    mask_suffix: str = "_mask",
    mask_value: int = 255,
    image_mode: str = "RGB",
    with_masks: bool = True,
) -> Manifest:
    """``<root>/<category>/{train/good, test/<defect>, ground_truth/<defect>/<stem><mask_suffix>.png}``.

    ``with_masks=False`` writes no ground_truth/ folder at all (image-level labels only)."""
    base = Path(root) / category
    manifest: Manifest = {}
    for stem in stems(n_train):
        path = write_image(base / "train" / "good" / f"{stem}.png", size, mode=image_mode)
        manifest[path] = Expected(0, "good")
    for stem in stems(n_test_good):
        path = write_image(base / "test" / "good" / f"{stem}.png", size, mode=image_mode)
        manifest[path] = Expected(0, "good")
    for d, defect in enumerate(defects):
        # Written in reverse order: the file system's listing order must not matter either.
        for i, stem in reversed(list(enumerate(stems(n_per_defect)))):
            box = box_for(d * n_per_defect + i, size)
            mask_name = f"{stem}{mask_suffix}.png" if with_masks else None
            if mask_name is not None:
                write_mask(base / "ground_truth" / defect / mask_name, box, size, value=mask_value)
            path = write_image(base / "test" / defect / f"{stem}.png", size, box, mode=image_mode)
            manifest[path] = Expected(1, defect, mask_name, box)
    return manifest


def write_mvtec(root: Path, categories: Sequence[str] = ("bottle",), **kwargs: object) -> Manifest:
    """An MVTec AD tree with the given categories."""
    manifest: Manifest = {}
    for category in categories:
        manifest.update(write_mvtec_category(root, category, **kwargs))
    return manifest


def write_visa_converted(
    root: Path, category: str = "candle", mask_suffix: str = "", n_per_defect: int = 3, **kwargs: object
) -> Manifest:
    """VisA converted to the MVTec layout: test/{good,bad}, masks ground_truth/bad/<stem>.png."""
    return write_mvtec_category(
        root, category, defects=("bad",), n_per_defect=n_per_defect, mask_suffix=mask_suffix, **kwargs
    )


def write_visa_raw(
    root: Path,
    categories: Sequence[str] = ("candle", "pcb1"),
    n_train: int = 5,
    n_test_good: int = 2,
    n_anomaly: int = 3,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """VisA as downloaded: split_csv/1cls.csv + <cat>/Data/Images/{Normal,Anomaly}/*.JPG and class-id masks
    <cat>/Data/Masks/Anomaly/*.png (values 1..3). Rows are shuffled across categories and splits."""
    root = Path(root)
    manifest: Manifest = {}
    rows: list[list[str]] = []
    for category in categories:
        data = Path(category) / "Data"
        for i in range(n_train + n_test_good):
            rel = data / "Images" / "Normal" / f"{i:04d}.JPG"
            path = write_image(root / rel, size)
            manifest[path] = Expected(0, "good")
            rows.append([category, "train" if i < n_train else "test", "normal", rel.as_posix(), ""])
        for i, stem in enumerate(stems(n_anomaly)):
            box = box_for(i, size)
            rel = data / "Images" / "Anomaly" / f"{stem}.JPG"
            mask_rel = data / "Masks" / "Anomaly" / f"{stem}.png"
            write_mask(root / mask_rel, box, size, value=1 + i % 3)
            path = write_image(root / rel, size, box)
            manifest[path] = Expected(1, "bad", mask_rel.name, box)
            rows.append([category, "test", "anomaly", rel.as_posix(), mask_rel.as_posix()])
    order = np.random.default_rng(0).permutation(len(rows))
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows[i] for i in order)
    return manifest


def write_mvtec3d(
    root: Path,
    category: str = "bagel",
    n_train: int = 4,
    n_validation: int = 2,
    n_test_good: int = 2,
    defects: Sequence[str] = ("crack", "hole"),
    n_per_defect: int = 2,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """``<root>/<category>/{train,validation,test}/<label>/{rgb,xyz}/NNN.*`` + ``test/<label>/gt/NNN.png``.

    The xyz/*.tiff files are junk bytes: reading one would fail, proving they are ignored."""
    base = Path(root) / category
    manifest: Manifest = {}
    for split, count in (("train", n_train), ("validation", n_validation), ("test", n_test_good)):
        for i in range(count):
            path = write_image(base / split / "good" / "rgb" / f"{i:03d}.png", size)
            write_dummy(base / split / "good" / "xyz" / f"{i:03d}.tiff")
            if split == "test":
                write_mask(base / split / "good" / "gt" / f"{i:03d}.png", (0, 0, 0, 0), size)
            manifest[path] = Expected(0, "good")
    for d, defect in enumerate(defects):
        for i, stem in reversed(list(enumerate(stems(n_per_defect)))):
            box = box_for(d * n_per_defect + i, size)
            write_mask(base / "test" / defect / "gt" / f"{stem}.png", box, size)
            write_dummy(base / "test" / defect / "xyz" / f"{stem}.tiff")
            path = write_image(base / "test" / defect / "rgb" / f"{stem}.png", size, box)
            manifest[path] = Expected(1, defect, f"{stem}.png", box)
    return manifest


def write_folder(
    root: Path,
    n_normal: int = 10,
    defects: Sequence[str] | None = ("scratch", "dent"),
    n_per_defect: int = 2,
    with_masks: bool = True,
    n_test_normal: int = 0,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """A user's folder: good/ (normals), defect/ (images directly if ``defects`` is None, else one sub-folder
    per defect), mask/ mirroring defect/, optional good_test/. Extensions vary in kind and case, masks
    alternate between ``<stem>.png`` and ``<stem>_mask.png``."""
    root = Path(root)
    extensions = (".png", ".JPG", ".jpeg", ".bmp", ".TIFF", ".tif")
    manifest: Manifest = {}
    for i in range(n_normal):
        path = write_image(root / "good" / f"n{i:03d}{extensions[i % len(extensions)]}", size)
        manifest[path] = Expected(0, "good")
    for i in range(n_test_normal):
        path = write_image(root / "good_test" / f"t{i:03d}.png", size)
        manifest[path] = Expected(0, "good")
    groups = (
        [(root / "defect", "defect", root / "mask")]
        if defects is None
        else [(root / "defect" / name, name, root / "mask" / name) for name in defects]
    )
    index = 0
    for folder, defect, mask_folder in groups:
        for stem in stems(n_per_defect):
            box = box_for(index, size)
            # Lossless formats for defect images, so the bright box survives exactly.
            path = write_image(folder / f"{stem}{('.png', '.bmp')[index % 2]}", size, box)
            mask_name = None
            if with_masks:
                mask_name = f"{stem}{('', '_mask')[index % 2]}.png"
                write_mask(mask_folder / mask_name, box, size)
            manifest[path] = Expected(1, defect, mask_name, box)
            index += 1
    return manifest
