"""The synthetic benchmark's data module (the generator itself is tested in its own file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdad.data import DatasetError, SyntheticDataModule
from kdad.data.embedded import SYNTHETIC_CATEGORIES, SYNTHETIC_DEFECTS


def _module(root: Path, category: str = "weave", **kwargs: object) -> SyntheticDataModule:
    return SyntheticDataModule(
        root=str(root),
        category=category,
        n_train=3,
        n_test_good=2,
        n_test_per_defect=1,
        generation_size=64,
        image_size=32,
        **kwargs,
    )


def test_generates_then_reads_as_mvtec(tmp_path: Path) -> None:
    module = _module(tmp_path)
    module.prepare_data()
    info = module.describe()
    assert info["benchmark"] == "synthetic" and Path(info["root"]).parent == tmp_path
    assert info["counts"]["train"] == {"total": 3, "good": 3}
    assert info["counts"]["test"] == {"total": 2 + 4, "good": 2, **{d: 1 for d in SYNTHETIC_DEFECTS["weave"]}}
    assert module.has_pixel_masks
    for index, sample in enumerate(module.test_dataset.samples):
        item = module.test_dataset[index]
        assert item["image"].shape == (3, 32, 32)
        assert (item["mask"].sum() > 0) == (sample.label == 1)


def test_second_module_reuses_generated_data(tmp_path: Path) -> None:
    first = _module(tmp_path)
    first.setup()
    stamps = {p: p.stat().st_mtime_ns for p in Path(first.describe()["root"]).rglob("*.png")}
    second = _module(tmp_path, seed=3)  # training seed differs, generation parameters do not
    second.setup()
    assert {p: p.stat().st_mtime_ns for p in Path(second.describe()["root"]).rglob("*.png")} == stamps


def test_categories_and_unknown_category(tmp_path: Path) -> None:
    assert SyntheticDataModule.available_categories(tmp_path) == list(SYNTHETIC_CATEGORIES)
    with pytest.raises(DatasetError, match="unknown synthetic category 'nope'.*weave"):
        _module(tmp_path, category="nope").setup()
    assert not any(tmp_path.iterdir())  # nothing generated for a bad name


def test_invalid_generation_parameters(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=str(tmp_path)):
        SyntheticDataModule(root=str(tmp_path), category="weave", n_train=0).setup()
