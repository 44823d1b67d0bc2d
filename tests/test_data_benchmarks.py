"""Each benchmark's finder: right samples, labels, defect types, masks paired by stem; layouts and splits."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fixtures import (
    write_folder,
    write_mvtec,
    write_mvtec3d,
    write_visa_converted,
    write_visa_raw,
)
from helpers import check_against_manifest, check_mask_pixels
from omegaconf import OmegaConf

import kdad.data
from kdad.data import (
    DATA_MODULES,
    FolderDataModule,
    MVTec3DDataModule,
    MVTecDataModule,
    VisADataModule,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_registry_names() -> None:
    assert set(DATA_MODULES) == {
        *("mvtec", "visa", "mvtec3d", "folder", "synthetic"),
        *("btad", "mpdd", "mtd", "ksdd2"),
        *("mvtec_loco", "mvtec_ad2", "realiad"),
    }


@pytest.mark.parametrize("name", sorted(DATA_MODULES))
def test_registered_under_its_config_name(name: str) -> None:
    """Every data module: its registry name is its name, conf/data/<name>.yaml builds it (exported from kdad.data),
    and conf/foreground/<name>.yaml gives the synthesis its foreground table."""
    cls = DATA_MODULES[name]
    assert cls.name == name and getattr(kdad.data, cls.__name__) is cls
    assert OmegaConf.load(CONF / "data" / f"{name}.yaml")._target_ == f"kdad.data.{cls.__name__}"
    assert (CONF / "foreground" / f"{name}.yaml").is_file()


def test_mvtec_finds_samples_and_pairs_masks_by_stem(tmp_path: Path) -> None:
    manifest = write_mvtec(tmp_path, categories=("bottle", "grid"), image_mode="L")
    (tmp_path / "bottle" / "train" / "good" / "._000.png").write_bytes(b"macOS resource fork")
    (tmp_path / "bottle" / "license.txt").write_text("not a category")
    (tmp_path / "notes").mkdir()
    assert MVTecDataModule.available_categories(tmp_path) == ["bottle", "grid"]
    module = MVTecDataModule(str(tmp_path), "bottle", image_size=32)
    train, test = module.train_dataset.samples, module.test_dataset.samples
    assert len(train) == 5 and all(s.label == 0 and s.defect_type == "good" for s in train)
    assert module.describe()["counts"]["test"] == {
        "total": 8,
        "broken_large": 3,
        "contamination": 3,
        "good": 2,
    }
    check_against_manifest(train + test, manifest)
    for sample in test:
        if sample.label == 1:
            assert sample.mask_path.name == f"{sample.image_path.stem}_mask.png"
    assert module.has_pixel_masks
    check_mask_pixels(module, manifest)


@pytest.mark.parametrize(
    ("cls", "write", "category"),
    [(MVTecDataModule, write_mvtec, "bottle"), (VisADataModule, write_visa_converted, "candle")],
)
def test_mvtec_layout_without_ground_truth_has_image_labels_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cls: type, write, category: str
) -> None:
    # Users' own data in the MVTec layout often has no masks: image-level metrics, as data=folder without mask_dir.
    manifest = write(tmp_path, with_masks=False)
    assert not (tmp_path / category / "ground_truth").exists()
    with caplog.at_level(logging.WARNING):
        module = cls(str(tmp_path), category, image_size=16)
        test = module.test_dataset
        module.describe()
    check_against_manifest(test.samples, manifest)
    assert {s.label for s in test.samples} == {0, 1} and all(s.mask_path is None for s in test.samples)
    assert not module.has_pixel_masks and not module.describe()["has_pixel_masks"]
    items = [test[i] for i in range(len(test))]
    assert [int(item["label"]) for item in items] == [s.label for s in test.samples]
    assert not any(bool(item["has_mask"]) for item in items)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert (
        str(tmp_path / category) in warnings[0] and "no ground_truth/ folder: image-level metrics only" in warnings[0]
    )


def test_visa_raw_layout(tmp_path: Path) -> None:
    manifest = write_visa_raw(tmp_path, categories=("candle", "pcb1"))
    assert VisADataModule.available_categories(tmp_path) == ["candle", "pcb1"]
    module = VisADataModule(str(tmp_path), "pcb1", image_size=32, mask_resize="bilinear_threshold")
    assert module.layout == "raw" and module.describe()["layout"] == "raw"
    train, test = module.train_dataset.samples, module.test_dataset.samples
    assert all("pcb1" in s.image_path.parts for s in train + test)
    assert all(s.image_path.suffix == ".JPG" for s in train + test)
    assert module.describe()["counts"] == {
        "train": {"total": 5, "good": 5},
        "test": {"total": 5, "bad": 3, "good": 2},
    }
    check_against_manifest(train + test, manifest)
    # class ids 1..3 are binarised: every anomalous mask is {0, 1} and non-empty
    for index, sample in enumerate(test):
        item = module.test_dataset[index]
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert (item["mask"].sum() > 0) == (sample.label == 1)
    check_mask_pixels(module, manifest)


@pytest.mark.parametrize("mask_suffix", ["", "_mask"])
def test_visa_converted_layout(tmp_path: Path, mask_suffix: str) -> None:
    manifest = write_visa_converted(tmp_path, "capsules", mask_suffix=mask_suffix)
    module = VisADataModule(str(tmp_path), "capsules", image_size=32)
    assert module.layout == "converted"
    test = module.test_dataset.samples
    assert module.describe()["counts"]["test"] == {"total": 5, "bad": 3, "good": 2}
    check_against_manifest(module.train_dataset.samples + test, manifest)
    check_mask_pixels(module, manifest)


def test_visa_prefers_converted_layout_when_both_exist(tmp_path: Path) -> None:
    write_visa_raw(tmp_path, categories=("candle",))
    write_visa_converted(tmp_path / "converted", "candle")
    (tmp_path / "candle" / "train").symlink_to(tmp_path / "converted" / "candle" / "train")
    (tmp_path / "candle" / "test").symlink_to(tmp_path / "converted" / "candle" / "test")
    (tmp_path / "candle" / "ground_truth").symlink_to(tmp_path / "converted" / "candle" / "ground_truth")
    assert VisADataModule(str(tmp_path), "candle").layout == "converted"


def test_mvtec3d_rgb_only(tmp_path: Path) -> None:
    manifest = write_mvtec3d(tmp_path, "bagel")
    assert MVTec3DDataModule.available_categories(tmp_path) == ["bagel"]
    module = MVTec3DDataModule(str(tmp_path), "bagel", image_size=32)
    samples = module.train_dataset.samples + module.test_dataset.samples
    assert all(s.image_path.parent.name == "rgb" and s.image_path.suffix == ".png" for s in samples)
    assert module.describe()["counts"] == {
        "train": {"total": 4, "good": 4},
        "test": {"total": 6, "crack": 2, "good": 2, "hole": 2},
    }
    assert module.val_dataset is None
    check_against_manifest(samples, manifest)
    check_mask_pixels(module, manifest)


def test_mvtec3d_train_split_uses_shipped_validation(tmp_path: Path) -> None:
    write_mvtec3d(tmp_path, "bagel")
    module = MVTec3DDataModule(str(tmp_path), "bagel", image_size=16, val_source="train_split")
    assert len(module.train_dataset) == 4  # training set left whole
    assert [s.image_path.parts[-4] for s in module.val_dataset.samples] == ["validation", "validation"]


def test_folder_with_defect_subfolders_and_masks(tmp_path: Path) -> None:
    manifest = write_folder(tmp_path, n_normal=10, defects=("scratch", "dent"), with_masks=True)
    module = FolderDataModule(str(tmp_path), mask_dir="mask", image_size=32)
    train, test = module.train_dataset.samples, module.test_dataset.samples
    assert len(train) == 8 and len(test) == 2 + 4  # 20% of the 10 normals held out as test normals
    assert {s.image_path.suffix for s in train + test} >= {".JPG", ".jpeg", ".bmp", ".TIFF", ".tif", ".png"}
    assert not {s.image_path for s in train} & {s.image_path for s in test}
    assert module.describe()["counts"]["test"] == {"total": 6, "dent": 2, "good": 2, "scratch": 2}
    assert module.category == "custom" and module.has_pixel_masks
    check_against_manifest(train + test, manifest)
    check_mask_pixels(module, manifest)


def test_folder_defect_images_directly_in_abnormal_dir(tmp_path: Path) -> None:
    manifest = write_folder(tmp_path, defects=None, n_per_defect=3)
    module = FolderDataModule(str(tmp_path), category="screws", mask_dir="mask", image_size=16)
    anomalies = [s for s in module.test_dataset.samples if s.label == 1]
    assert len(anomalies) == 3 and {s.defect_type for s in anomalies} == {"defect"}
    check_against_manifest(module.test_dataset.samples, manifest)
    assert module.describe()["category"] == "screws"


def test_folder_without_masks_has_no_pixel_ground_truth(tmp_path: Path) -> None:
    write_folder(tmp_path, with_masks=False)
    module = FolderDataModule(str(tmp_path), image_size=16)
    assert not module.has_pixel_masks
    assert not any(bool(module.test_dataset[i]["has_mask"]) for i in range(len(module.test_dataset)))


def test_folder_test_normal_dir_and_seeded_hold_out(tmp_path: Path) -> None:
    write_folder(tmp_path, n_normal=10, n_test_normal=3)
    with_dir = FolderDataModule(str(tmp_path), test_normal_dir="good_test", image_size=16)
    assert len(with_dir.train_dataset) == 10
    assert sum(s.label == 0 for s in with_dir.test_dataset.samples) == 3

    def held_out(**kwargs: object) -> set[Path]:
        module = FolderDataModule(str(tmp_path), image_size=16, preload=False, **kwargs)
        return {s.image_path for s in module.test_dataset.samples if s.label == 0}

    assert held_out() == held_out(seed=5)  # the training seed does not move the test set
    assert held_out() != held_out(test_split_seed=1)
    assert len(held_out(normal_test_split=0.5)) == 5


def test_folder_absolute_paths(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", with_masks=False)
    (tmp_path / "elsewhere").mkdir()
    module = FolderDataModule(
        str(tmp_path / "elsewhere"),
        normal_dir=str(tmp_path / "data" / "good"),
        abnormal_dir=str(tmp_path / "data" / "defect"),
        image_size=16,
    )
    assert len(module.train_dataset) == 8


def test_samples_paired_by_stem_not_by_sorted_position(tmp_path: Path) -> None:
    write_mvtec(tmp_path, defects=("crack",), n_per_defect=4)
    images = sorted(p.name for p in (tmp_path / "bottle" / "test" / "crack").iterdir())
    masks = sorted(p.name for p in (tmp_path / "bottle" / "ground_truth" / "crack").iterdir())
    positional = {Path(i).stem: Path(m).stem for i, m in zip(images, masks, strict=True)}
    by_stem = {stem: f"{stem}_mask" for stem in ("000", "0001", "002", "0003")}
    assert positional != by_stem  # the fixture's names defeat sorted-order pairing
    module = MVTecDataModule(str(tmp_path), "bottle", image_size=16)
    assert {s.image_path.stem: s.mask_path.stem for s in module.test_dataset.samples if s.label == 1} == by_stem
