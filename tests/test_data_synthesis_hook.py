"""Training-time pseudo-anomalies through the data module (the hook RD++, RD with Expert and AAND use)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures import write_mvtec

from kdad.data import MVTecDataModule
from kdad.data.synthesis import DraemSynthesizer, ProceduralTextureSource, SimplexNoisePatch


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mvtec")
    write_mvtec(path, ("bottle",), n_train=6, n_test_good=2, n_per_defect=2)
    return path


def _module(root: Path, **kwargs) -> MVTecDataModule:
    dm = MVTecDataModule(root=str(root), category="bottle", image_size=64, batch_size=3, **kwargs)
    dm.setup()
    return dm


def test_simplex_patches_come_with_clean_image_and_mask(root: Path) -> None:
    dm = _module(root, train_synthesis=SimplexNoisePatch(size_range=(10, 20)))
    item = dm.train_dataset[0]
    changed = (item["image_aug"] - item["image"]).abs().amax(0) > 1e-6
    inside = item["mask_aug"][0] > 0
    assert inside.any() and changed.any()
    assert not (changed & ~inside).any(), "pixels outside the patch must be untouched"
    assert "image_aug" not in dm.test_dataset[0], "test images are never synthesised"
    batch = next(iter(dm.train_dataloader()))
    assert batch["image_aug"].shape == batch["image"].shape and batch["mask_aug"].shape == (3, 1, 64, 64)


def test_synthesis_is_reproducible_and_new_each_draw(root: Path) -> None:
    first = _module(root, train_synthesis=SimplexNoisePatch(), seed=3).train_dataset
    second = _module(root, train_synthesis=SimplexNoisePatch(), seed=3).train_dataset
    a, b = first[1], second[1]
    assert torch.equal(a["image_aug"], b["image_aug"])
    again = first[1]  # the next epoch's draw of the same image
    assert not torch.equal(a["mask_aug"], again["mask_aug"])


def test_draem_restricted_to_per_category_foreground(root: Path) -> None:
    synth = DraemSynthesizer(ProceduralTextureSource(), clean_probability=0.0)
    dm = _module(root, train_synthesis=synth, foreground={"bottle": {"method": "disc"}, "default": {"method": "none"}})
    assert dm.foreground_spec == {"method": "disc"}
    for index in range(len(dm.train_dataset)):
        item = dm.train_dataset[index]
        assert not ((item["mask_aug"] > 0) & (item["foreground"] == 0)).any()
    assert dm.describe()["foreground"] == {"method": "disc"}
    unrestricted = _module(root, train_synthesis=synth, foreground={"default": {"method": "none"}})
    assert unrestricted.foreground_spec is None and "foreground" not in unrestricted.train_dataset[0]
