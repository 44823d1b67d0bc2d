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
import json
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


# -------------------------------------------------------------------------------------------- BTAD, MPDD, MTD, KSDD2
# The release's extensions per BTAD category (image, mask): stated here from the release, not read from kdad.
BTAD_EXTENSIONS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}
MPDD_DEFECTS = {
    "bracket_black": ("hole", "scratches"),
    "bracket_brown": ("bend_and_parts_mismatch", "parts_mismatch"),
    "bracket_white": ("defective_painting", "scratches"),
    "connector": ("parts_mismatch",),
    "metal_plate": ("major_rust", "scratches", "total_rust"),
    "tubes": ("anomalous",),
}
MTD_DEFECT_FOLDERS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def write_btad(
    root: Path,
    categories: Sequence[str] = ("01", "02", "03"),
    n_train: int = 4,
    n_test_ok: int = 2,
    n_ko: int = 3,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """BTAD as extracted (BTech_Dataset_transformed/): ``<cat>/{train/ok, test/ok, test/ko}/NNNN.<ext>`` and
    ``<cat>/ground_truth/ko/NNNN.<ext>`` (same stem, 0/255), with the release's extensions per category. Numbering
    restarts at 0000 in every folder, as in the release: test/ok/0000 and test/ko/0000 are different images."""
    manifest: Manifest = {}
    for c, category in enumerate(categories):
        image_ext, mask_ext = BTAD_EXTENSIONS[category]
        base = Path(root) / category
        for folder, count in (("train", n_train), ("test", n_test_ok)):
            for i in range(count):
                path = write_image(base / folder / "ok" / f"{i:04d}{image_ext}", size)
                manifest[path] = Expected(0, "good")
        for i in reversed(range(n_ko)):
            box = box_for(c * n_ko + i, size)
            mask_name = f"{i:04d}{mask_ext}"
            write_mask(base / "ground_truth" / "ko" / mask_name, box, size)
            path = write_image(base / "test" / "ko" / f"{i:04d}{image_ext}", size, box)
            manifest[path] = Expected(1, "ko", mask_name, box)
    return manifest


def write_mpdd(
    root: Path,
    categories: Sequence[str] = tuple(MPDD_DEFECTS),
    n_train: int = 3,
    n_test_good: int = 2,
    n_per_defect: int = 2,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """MPDD as extracted: the MVTec layout with the release's names, ``<cat>/{train/good, test/<defect>}/NNN.png``
    and ``<cat>/ground_truth/<defect>/NNN_mask.png``, each category with its own defect types."""
    manifest: Manifest = {}
    for c, category in enumerate(categories):
        base = Path(root) / category
        for folder, count in (("train", n_train), ("test", n_test_good)):
            for i in range(count):
                manifest[write_image(base / folder / "good" / f"{i:03d}.png", size)] = Expected(0, "good")
        for d, defect in enumerate(MPDD_DEFECTS[category]):
            for i in reversed(range(n_per_defect)):
                box = box_for(c * 7 + d * n_per_defect + i, size)
                write_mask(base / "ground_truth" / defect / f"{i:03d}_mask.png", box, size)
                path = write_image(base / "test" / defect / f"{i:03d}.png", size, box)
                manifest[path] = Expected(1, defect, f"{i:03d}_mask.png", box)
    return manifest


def write_mtd(root: Path, n_free: int = 10, n_per_defect: int = 2, size: tuple[int, int] = SIZE) -> Manifest:
    """Magnetic Tile Defects as in its repository: ``MT_<Type>/Imgs/exp<k>_num_<n>.jpg`` (grayscale JPEG) with the
    same-stem ``.png`` mask beside each (0/255; all zero in MT_Free)."""
    root = Path(root)
    manifest: Manifest = {}
    for i in range(n_free):
        stem = f"exp{1 + i % 6}_num_{1000 + 37 * i}"
        path = write_image(root / "MT_Free" / "Imgs" / f"{stem}.jpg", size, mode="L")
        write_mask(root / "MT_Free" / "Imgs" / f"{stem}.png", (0, 0, 0, 0), size)
        manifest[path] = Expected(0, "good")
    for d, folder in enumerate(MTD_DEFECT_FOLDERS):
        for i in reversed(range(n_per_defect)):
            stem = f"exp{1 + i}_num_{5000 + 101 * d + i}"
            box = box_for(d * n_per_defect + i, size)
            write_mask(root / folder / "Imgs" / f"{stem}.png", box, size)
            path = write_image(root / folder / "Imgs" / f"{stem}.jpg", size, box, mode="L")
            manifest[path] = Expected(1, folder.removeprefix("MT_").lower(), f"{stem}.png", box)
    return manifest


def write_ksdd2(
    root: Path,
    n_train_normal: int = 6,
    n_train_defect: int = 2,
    n_test_normal: int = 3,
    n_test_defect: int = 3,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """KolektorSDD2 as extracted: ``{train,test}/NNNNN.png`` with ``NNNNN_GT.png`` beside each (0/255, all zero for a
    defect-free image). Defect and normal images are interleaved in the numbering, as in the release. The manifest
    holds every image; the training defect images are marked with the defect type "train_defect"."""
    manifest: Manifest = {}
    index = 0
    for split, n_normal, n_defect, first in (
        ("train", n_train_normal, n_train_defect, 10000),
        ("test", n_test_normal, n_test_defect, 20000),
    ):
        folder = Path(root) / split
        defect_at = set(range(1, 2 * n_defect, 2))  # every other image from the second one, while defects last
        for i in range(n_normal + n_defect):
            stem = f"{first + i}"
            if i in defect_at:
                box = box_for(index, size)
                index += 1
                write_mask(folder / f"{stem}_GT.png", box, size)
                path = write_image(folder / f"{stem}.png", size, box)
                kind = "train_defect" if split == "train" else "bad"
                manifest[path] = Expected(1, kind, f"{stem}_GT.png", box)
            else:
                write_mask(folder / f"{stem}_GT.png", (0, 0, 0, 0), size)
                manifest[write_image(folder / f"{stem}.png", size)] = Expected(0, "good")
    return manifest


# ------------------------------------------------------------------------------------------------ MVTec LOCO AD
LOCO_TYPES = ("logical_anomalies", "structural_anomalies")


def write_mvtec_loco(
    root: Path,
    category: str = "breakfast_box",
    n_train: int = 4,
    n_validation: int = 2,
    n_test_good: int = 2,
    n_per_type: int = 2,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """``<root>/<category>/{train,validation}/good/NNN.png``, ``test/{good,logical_anomalies,structural_anomalies}``,
    ``ground_truth/<type>/NNN/000.png[, 001.png]`` and ``defects_config.json``, as the release.

    Masks hold their defect's pixel value from defects_config.json (255, 254, ...), not just 255. The first image of
    each type has two mask files (two regions, merged by kdad): its Expected box is the bounding box of both, the
    second region's box is ``second_region()``."""
    base = Path(root) / category
    manifest: Manifest = {}
    for split, count in (("train", n_train), ("validation", n_validation), ("test", n_test_good)):
        for i in range(count):
            manifest[write_image(base / split / "good" / f"{i:03d}.png", size)] = Expected(0, "good")
    config = []
    for t, kind in enumerate(LOCO_TYPES):
        for i in reversed(range(n_per_type)):
            stem = f"{i:03d}"
            box = box_for(t * n_per_type + i, size)
            value = 255 - (t * n_per_type + i) % 4
            config.append(
                {
                    "defect_name": f"{kind}_{i}",
                    "pixel_value": value,
                    "saturation_threshold": 1.0,
                    "relative_saturation": True,
                }
            )
            write_mask(base / "ground_truth" / kind / stem / "000.png", box, size, value=value)
            bounds = box
            if i == 0:
                extra = second_region(size)
                write_mask(base / "ground_truth" / kind / stem / "001.png", extra, size, value=value - 1)
                bounds = (min(box[0], extra[0]), min(box[1], extra[1]), max(box[2], extra[2]), max(box[3], extra[3]))
            path = write_image(base / "test" / kind / f"{stem}.png", size, box)
            manifest[path] = Expected(1, kind, "000.png", bounds)
    (base / "defects_config.json").write_text(json.dumps(config, indent=2))
    return manifest


def second_region(size: tuple[int, int] = SIZE) -> tuple[int, int, int, int]:
    """The second annotated region of a LOCO fixture image: the image's bottom right corner."""
    width, height = size
    return width - 10, height - 8, width - 2, height - 2


# ------------------------------------------------------------------------------------------------ MVTec AD 2
AD2_LIGHTINGS = ("regular", "overexposed", "underexposed", "shift_1")


def write_mvtec_ad2(
    root: Path,
    category: str = "can",
    n_train: int = 4,
    n_validation: int = 2,
    n_test_good: int = 2,
    n_bad: int = 3,
    n_private: int = 2,
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """``<root>/<category>/{train,validation}/good/<id>_<lighting>.png``, ``test_public/{good,bad}``,
    ``test_public/ground_truth/bad/<stem>_mask.png`` (0/255) and unlabelled ``test_private{,_mixed}/*.png``."""
    base = Path(root) / category
    manifest: Manifest = {}

    def name(i: int) -> str:
        return f"{i:03d}_{AD2_LIGHTINGS[i % len(AD2_LIGHTINGS)]}"

    for split, count in (("train", n_train), ("validation", n_validation), ("test_public", n_test_good)):
        for i in range(count):
            manifest[write_image(base / split / "good" / f"{name(i)}.png", size)] = Expected(0, "good")
    for i in reversed(range(n_bad)):
        box = box_for(i, size)
        write_mask(base / "test_public" / "ground_truth" / "bad" / f"{name(i)}_mask.png", box, size)
        manifest[write_image(base / "test_public" / "bad" / f"{name(i)}.png", size, box)] = Expected(
            1, "bad", f"{name(i)}_mask.png", box
        )
    for split in ("test_private", "test_private_mixed"):
        for i in range(n_private):
            write_image(base / split / f"{i:03d}_{split}.png", size)  # not in the manifest: never a test image
    return manifest


# ------------------------------------------------------------------------------------------------ Real-IAD
def realiad_name(category: str, sample: int, label: str, view: int) -> str:
    """``<category>_<NNNN>_<OK | NG_<defect>>_C<view>_<timestamp>`` (no extension), as the release names files."""
    return f"{category}_{sample:04d}_{label}_C{view}_2023092{view}10{sample:04d}"


def _realiad_record(category: str, rel: Path, anomaly_class: str, mask_rel: Path | None) -> dict:
    """One record of a Real-IAD split file (the four fields of the release)."""
    mask_path = mask_rel.as_posix() if mask_rel else None
    return {"category": category, "anomaly_class": anomaly_class, "image_path": rel.as_posix(), "mask_path": mask_path}


def write_realiad(
    root: Path,
    categories: Sequence[str] = ("audiojack",),
    n_train: int = 2,
    n_test_ok: int = 1,
    defects: Sequence[str] = ("HS", "AK"),
    views: int = 5,
    json_dir: str = "realiad_jsons",
    size: tuple[int, int] = SIZE,
) -> Manifest:
    """``<root>/realiad_1024/<category>/{OK,NG/<defect>}/S<NNNN>/<name>.jpg`` (masks ``<name>.png`` next to the NG
    views) and ``<root>/<json_dir>/<category>.json`` with ``meta`` and the ``train`` / ``test`` record lists.

    One NG sample per defect; its last view has no mask (``mask_path`` null), which the reference loader counts as
    a normal view. The manifest maps each image to what kdad should read, plus ``Expected.mask_name``."""
    root = Path(root)
    manifest: Manifest = {}
    for category in categories:
        base = root / "realiad_1024" / category
        train: list[dict] = []
        test: list[dict] = []
        sample = 0

        for split, count in (("train", n_train), ("test", n_test_ok)):
            for _ in range(count):
                sample += 1
                for view in range(1, views + 1):
                    rel = Path("OK") / f"S{sample:04d}" / f"{realiad_name(category, sample, 'OK', view)}.jpg"
                    manifest[write_image(base / rel, size)] = Expected(0, "good")
                    (train if split == "train" else test).append(_realiad_record(category, rel, "OK", None))
        for d, defect in enumerate(defects):
            sample += 1
            for view in range(1, views + 1):
                stem = realiad_name(category, sample, f"NG_{defect}", view)
                folder = Path("NG") / defect / f"S{sample:04d}"
                if view == views:  # the defect is not visible from this view: no mask
                    manifest[write_image(base / folder / f"{stem}.jpg", size)] = Expected(0, "good")
                    test.append(_realiad_record(category, folder / f"{stem}.jpg", defect, None))
                    continue
                box = box_for(d * views + view, size)
                write_mask(base / folder / f"{stem}.png", box, size)
                manifest[write_image(base / folder / f"{stem}.jpg", size, box)] = Expected(
                    1, defect, f"{stem}.png", box
                )
                test.append(_realiad_record(category, folder / f"{stem}.jpg", defect, folder / f"{stem}.png"))
        split_file = root / json_dir / f"{category}.json"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        meta = {"prefix": f"{category}/", "normal_class": "OK", "pre_transform": False}
        split_file.write_text(json.dumps({"meta": meta, "train": train, "test": test}))
    return manifest
