"""Every data error names the offending file or folder and says what to do."""

from __future__ import annotations

import shutil
from pathlib import Path

import albumentations as A
import pytest
from fixtures import write_folder, write_image, write_mask, write_mvtec, write_mvtec3d, write_visa_raw

from kdad.data import (
    DatasetError,
    FolderDataModule,
    MVTec3DDataModule,
    MVTecDataModule,
    VisADataModule,
)


def _setup_error(module: object) -> str:
    with pytest.raises(DatasetError) as info:
        module.setup()  # type: ignore[attr-defined]
    return str(info.value)


@pytest.mark.parametrize("cls", [MVTecDataModule, VisADataModule, MVTec3DDataModule, FolderDataModule])
def test_missing_root(tmp_path: Path, cls: type) -> None:
    missing = tmp_path / "nowhere"
    message = _setup_error(cls(str(missing), "bottle"))
    assert str(missing) in message and "does not exist" in message and "data.root" in message


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "is a file" in _setup_error(MVTecDataModule(str(tmp_path / "file"), "bottle"))


def test_unknown_category_lists_found_and_official(tmp_path: Path) -> None:
    write_mvtec(tmp_path, categories=("bottle", "cable"))
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottel"))
    assert "'bottel'" in message and str(tmp_path) in message
    assert "found there: bottle, cable" in message and "toothbrush" in message


def test_root_pointing_at_a_category_folder_gets_a_hint(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    message = _setup_error(MVTecDataModule(str(tmp_path / "bottle"), "bottle"))
    assert "set data.root to its parent" in message


def test_category_folder_without_train_good(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    shutil.rmtree(tmp_path / "bottle" / "train")
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle"))
    assert str(tmp_path / "bottle" / "train" / "good") in message and "MVTec layout" in message


def test_missing_test_folder(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    shutil.rmtree(tmp_path / "bottle" / "test")
    assert str(tmp_path / "bottle" / "test") in _setup_error(MVTecDataModule(str(tmp_path), "bottle"))


def test_empty_train_set(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    for path in (tmp_path / "bottle" / "train" / "good").iterdir():
        path.unlink()
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle"))
    assert "no training images" in message and str(tmp_path / "bottle") in message


def test_empty_test_set(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    shutil.rmtree(tmp_path / "bottle" / "test")
    (tmp_path / "bottle" / "test").mkdir()
    assert "no test images" in _setup_error(MVTecDataModule(str(tmp_path), "bottle"))


def test_hold_out_leaves_no_training_image(tmp_path: Path) -> None:
    write_mvtec(tmp_path, n_train=1)
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle", val_source="train_split"))
    assert "cannot hold out" in message and str(tmp_path / "bottle") in message


def test_defect_image_without_mask(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    (tmp_path / "bottle" / "ground_truth" / "contamination" / "0001_mask.png").unlink()
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle"))
    assert str(tmp_path / "bottle" / "test" / "contamination" / "0001.png") in message
    assert "'0001_mask.<ext>'" in message and str(tmp_path / "bottle" / "ground_truth" / "contamination") in message


def test_defect_folder_without_ground_truth_folder(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    shutil.rmtree(tmp_path / "bottle" / "ground_truth" / "broken_large")
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle"))
    assert str(tmp_path / "bottle" / "ground_truth" / "broken_large") in message


def test_ambiguous_masks(tmp_path: Path) -> None:
    write_folder(tmp_path, defects=("scratch",), n_per_defect=1)
    write_mask(tmp_path / "mask" / "scratch" / "000_mask.png", (1, 1, 4, 4))  # next to 000.png
    message = _setup_error(FolderDataModule(str(tmp_path), mask_dir="mask"))
    assert "several masks" in message and "000_mask.png" in message


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    mask = tmp_path / "bottle" / "ground_truth" / "crack" / "002_mask.png"
    write_mvtec(tmp_path, defects=("crack",))
    write_mask(mask, (1, 1, 5, 5), size=(32, 24))
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle", preload=False))
    assert str(mask) in message and "32x24" in message and "64x48" in message
    assert str(tmp_path / "bottle" / "test" / "crack" / "002.png") in message


def test_undecodable_mask_header(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    mask = tmp_path / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    write_mvtec(tmp_path, defects=("crack",))
    mask.write_bytes(b"not a png at all")
    message = _setup_error(MVTecDataModule(str(tmp_path), "bottle", preload=False))
    assert str(mask) in message and "corrupt" in message


@pytest.mark.parametrize(
    ("option", "value"),
    [("interpolation", "nearest"), ("mask_resize", "bicubic"), ("val_source", "validation")],
)
def test_unknown_option_values(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(DatasetError, match=f"unknown {option} '{value}': choose one of"):
        MVTecDataModule(str(tmp_path), "bottle", **{option: value})


def test_bad_val_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="val_split"):
        MVTecDataModule(str(tmp_path), "bottle", val_source="train_split", val_split=1.5)


# ------------------------------------------------------------------------------------------------ VisA
def test_visa_neither_layout_explains_both(tmp_path: Path) -> None:
    (tmp_path / "candle" / "Data").mkdir(parents=True)
    message = _setup_error(VisADataModule(str(tmp_path), "candle"))
    assert "split_csv/1cls.csv" in message and "train/good" in message and str(tmp_path) in message


def test_visa_unknown_category(tmp_path: Path) -> None:
    write_visa_raw(tmp_path, categories=("candle",))
    message = _setup_error(VisADataModule(str(tmp_path), "candel"))
    assert "found there: candle" in message and "pipe_fryum" in message


def test_visa_csv_lists_a_missing_image(tmp_path: Path) -> None:
    write_visa_raw(tmp_path, categories=("candle",))
    missing = tmp_path / "candle" / "Data" / "Images" / "Normal" / "0001.JPG"
    missing.unlink()
    message = _setup_error(VisADataModule(str(tmp_path), "candle"))
    assert str(missing) in message and "1cls.csv line" in message


def test_visa_anomaly_without_mask(tmp_path: Path) -> None:
    write_visa_raw(tmp_path, categories=("candle",))
    mask = tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "002.png"
    mask.unlink()
    message = _setup_error(VisADataModule(str(tmp_path), "candle"))
    assert str(mask) in message and "002.JPG" in message


def test_visa_csv_with_wrong_header(tmp_path: Path) -> None:
    write_visa_raw(tmp_path, categories=("candle",))
    csv_path = tmp_path / "split_csv" / "1cls.csv"
    csv_path.write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(DatasetError, match="lacks the column"):
        VisADataModule.available_categories(tmp_path)


# ------------------------------------------------------------------------------------------------ MVTec 3D
def test_mvtec3d_defect_without_gt(tmp_path: Path) -> None:
    write_mvtec3d(tmp_path)
    (tmp_path / "bagel" / "test" / "hole" / "gt" / "0001.png").unlink()
    message = _setup_error(MVTec3DDataModule(str(tmp_path), "bagel"))
    assert str(tmp_path / "bagel" / "test" / "hole" / "rgb" / "0001.png") in message


def test_mvtec3d_without_any_gt_folder_is_still_an_error(tmp_path: Path) -> None:
    # Unlike the MVTec layout, MVTec 3D-AD is only read as shipped (gt/ in every defect folder): a missing gt/
    # is a broken extraction, not image-level data (that belongs in the MVTec layout or data=folder).
    write_mvtec3d(tmp_path)
    for gt in (tmp_path / "bagel" / "test").glob("*/gt"):
        shutil.rmtree(gt)
    message = _setup_error(MVTec3DDataModule(str(tmp_path), "bagel"))
    assert str(tmp_path / "bagel" / "test" / "crack" / "gt") in message


def test_mvtec3d_missing_validation_for_train_split(tmp_path: Path) -> None:
    write_mvtec3d(tmp_path)
    shutil.rmtree(tmp_path / "bagel" / "validation")
    message = _setup_error(MVTec3DDataModule(str(tmp_path), "bagel", val_source="train_split"))
    assert str(tmp_path / "bagel" / "validation" / "good" / "rgb") in message


# ------------------------------------------------------------------------------------------------ folder
def test_folder_missing_normal_dir(tmp_path: Path) -> None:
    write_folder(tmp_path)
    message = _setup_error(FolderDataModule(str(tmp_path), normal_dir="normal"))
    assert str(tmp_path / "normal") in message and "data.normal_dir" in message


def test_folder_empty_normal_dir(tmp_path: Path) -> None:
    write_folder(tmp_path)
    shutil.rmtree(tmp_path / "good")
    (tmp_path / "good").mkdir()
    message = _setup_error(FolderDataModule(str(tmp_path)))
    assert "no training images" in message and str(tmp_path / "good") in message


def test_folder_missing_abnormal_dir(tmp_path: Path) -> None:
    write_folder(tmp_path)
    message = _setup_error(FolderDataModule(str(tmp_path), abnormal_dir="bad"))
    assert str(tmp_path / "bad") in message and "data.abnormal_dir" in message


def test_folder_mixed_abnormal_layout(tmp_path: Path) -> None:
    write_folder(tmp_path, defects=("scratch",))
    write_image(tmp_path / "defect" / "loose.png")
    message = _setup_error(FolderDataModule(str(tmp_path)))
    assert str(tmp_path / "defect") in message and "both directly and in sub-folders" in message


def test_folder_empty_abnormal_dir(tmp_path: Path) -> None:
    write_folder(tmp_path)
    shutil.rmtree(tmp_path / "defect")
    (tmp_path / "defect" / "scratch").mkdir(parents=True)
    assert "no defect images" in _setup_error(FolderDataModule(str(tmp_path)))


def test_folder_defect_image_without_mask(tmp_path: Path) -> None:
    write_folder(tmp_path, defects=("scratch", "dent"))
    (tmp_path / "mask" / "dent" / "000.png").unlink()
    message = _setup_error(FolderDataModule(str(tmp_path), mask_dir="mask"))
    assert str(tmp_path / "defect" / "dent" / "000.png") in message and "no mask" in message


def test_folder_mask_dir_not_mirroring(tmp_path: Path) -> None:
    write_folder(tmp_path, defects=("scratch", "dent"))
    shutil.rmtree(tmp_path / "mask" / "dent")
    message = _setup_error(FolderDataModule(str(tmp_path), mask_dir="mask"))
    assert str(tmp_path / "mask" / "dent") in message and "mirror" in message


def test_train_augmentations_must_be_albumentations_transforms(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train_augmentations\[1\] is a dict"):
        MVTecDataModule(str(tmp_path), "bottle", train_augmentations=[A.HorizontalFlip(), {"p": 0.5}])
