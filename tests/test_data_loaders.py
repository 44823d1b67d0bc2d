"""Data modules: validation sources, loaders (seeded shuffle, eval order, workers), describe, Lightning.

On the shared ``mvtec_root`` (tests/conftest.py): bottle, 8 training images, 3 good + 2 defect types x 3 test images.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import lightning as L
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

from kdad.data import DatasetError, MVTecDataModule
from kdad.data.synthesis import SimplexNoisePatch


def _paths(loader: torch.utils.data.DataLoader) -> list[str]:
    return [path for batch in loader for path in batch["image_path"]]


def test_val_source_none(mvtec_root: Path) -> None:
    module = MVTecDataModule(mvtec_root, "bottle", image_size=16)
    assert module.val_dataset is None and module.val_dataloader() == []
    assert len(module.train_dataset) == 8


def test_val_source_train_split_holds_out_seeded_normals(mvtec_root: Path) -> None:
    module = MVTecDataModule(mvtec_root, "bottle", image_size=16, val_source="train_split", val_split=0.3)
    train = {s.image_path for s in module.train_dataset.samples}
    val = {s.image_path for s in module.val_dataset.samples}
    assert len(train) == 6 and len(val) == 2 and not train & val
    assert all(s.label == 0 for s in module.val_dataset.samples)
    assert module.val_dataset.transform is None
    same = MVTecDataModule(mvtec_root, "bottle", image_size=16, val_source="train_split", val_split=0.3)
    other = MVTecDataModule(mvtec_root, "bottle", image_size=16, val_source="train_split", val_split=0.3, seed=1)
    assert {s.image_path for s in same.val_dataset.samples} == val
    assert {s.image_path for s in other.val_dataset.samples} != val
    assert module.describe()["counts"]["validation"] == {"total": 2, "good": 2}


def test_val_source_test(mvtec_root: Path) -> None:
    module = MVTecDataModule(mvtec_root, "bottle", image_size=16, val_source="test")
    assert module.val_dataset is module.test_dataset
    assert _paths(module.val_dataloader()) == _paths(module.test_dataloader())
    assert module.describe()["counts"]["validation"] == module.describe()["counts"]["test"]


def test_train_loader_shuffles_with_seed_eval_loaders_in_order(mvtec_root: Path) -> None:
    def train_order(seed: int) -> list[str]:
        return _paths(MVTecDataModule(mvtec_root, "bottle", image_size=16, batch_size=3, seed=seed).train_dataloader())

    assert train_order(0) == train_order(0)
    assert train_order(0) != train_order(1)
    assert sorted(train_order(0)) == sorted(train_order(1))
    module = MVTecDataModule(mvtec_root, "bottle", image_size=16, batch_size=3, eval_batch_size=5)
    loader = module.test_dataloader()
    assert loader.batch_size == 5 and not loader.drop_last
    assert _paths(loader) == [str(s.image_path) for s in module.test_dataset.samples]
    assert len(_paths(module.train_dataloader())) == 8  # no drop_last in training either


def test_batches_collate(mvtec_root: Path) -> None:
    batch = next(iter(MVTecDataModule(mvtec_root, "bottle", image_size=16, eval_batch_size=8).test_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16) and batch["mask"].shape == (8, 1, 16, 16)
    assert batch["label"].dtype == torch.int64 and batch["has_mask"].dtype == torch.bool
    assert len(batch["image_path"]) == 8 and len(batch["defect_type"]) == 8


def test_two_workers_with_augmentations(tmp_path: Path, mvtec_root: Path) -> None:
    def make() -> MVTecDataModule:
        return MVTecDataModule(
            mvtec_root,
            "bottle",
            image_size=16,
            batch_size=2,
            num_workers=2,
            cache_dir=str(tmp_path / "cache"),
            train_augmentations=[A.HorizontalFlip(p=0.5), A.Rotate(limit=10, p=0.5)],
        )

    loader = make().train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    epochs = [list(loader) for _ in range(2)]  # two epochs on the same persistent workers
    for batches in epochs:
        assert sum(len(b["image_path"]) for b in batches) == 8
        assert all(b["image"].shape[1:] == (3, 16, 16) for b in batches)
    # same seed, same augmented batches: worker seeding is reproducible
    again = list(make().train_dataloader())
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(epochs[0], again, strict=True))
    assert sum(len(b["image_path"]) for b in make().test_dataloader()) == 9


def test_auto_workers_where_data_preparation_would_stall_the_model(mvtec_root: Path) -> None:
    def make(**kwargs: object) -> MVTecDataModule:
        return MVTecDataModule(mvtec_root, "bottle", image_size=16, num_workers="auto", pin_memory="auto", **kwargs)

    plain, synthesising = make(), make(train_synthesis=SimplexNoisePatch())
    # CPU (no trainer yet, or a CPU trainer): one training worker only when pseudo-anomalies are synthesised
    assert [plain.loader_workers(True), plain.loader_workers(False)] == [0, 0]
    synthesising.trainer = SimpleNamespace(accelerator=CPUAccelerator())
    assert [synthesising.loader_workers(True), synthesising.loader_workers(False)] == [1, 0]
    loader = synthesising.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers and not loader.pin_memory
    assert synthesising.test_dataloader().num_workers == 0
    # a GPU trainer: workers for every loader, pinned memory
    plain.trainer = SimpleNamespace(accelerator=CUDAAccelerator())
    expected = min(8, max(1, (os.cpu_count() or 2) - 1))
    assert [plain.loader_workers(True), plain.loader_workers(False)] == [expected, expected]
    assert plain.test_dataloader().pin_memory
    with pytest.raises(DatasetError, match="num_workers"):
        MVTecDataModule(mvtec_root, "bottle", num_workers=-1)


def test_train_augmentations_accept_a_compose(mvtec_root: Path) -> None:
    compose = A.Compose([A.HorizontalFlip(p=1.0)])
    module = MVTecDataModule(mvtec_root, "bottle", image_size=16, train_augmentations=compose)
    assert module.train_dataset.transform is compose and module.test_dataset.transform is None


def test_describe(mvtec_root: Path) -> None:
    info = MVTecDataModule(mvtec_root, "bottle", image_size=24, interpolation="bicubic").describe()
    assert info["benchmark"] == "mvtec" and info["category"] == "bottle" and info["root"] == str(mvtec_root)
    assert (info["image_size"], info["interpolation"], info["mask_resize"]) == (24, "bicubic", "nearest")
    assert info["normalisation"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert info["counts"]["train"] == {"total": 8, "good": 8}
    assert info["has_pixel_masks"] is True


class _TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.seen = {"val": 0, "test": 0}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.conv(batch["image"]).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.seen["val"] += len(batch["image"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.seen["test"] += len(batch["image"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("val_source", "validated"), [("none", 0), ("test", 9)])
def test_lightning_fit_and_test(mvtec_root: Path, val_source: str, validated: int) -> None:
    module = MVTecDataModule(mvtec_root, "bottle", image_size=16, batch_size=4, val_source=val_source)
    model = _TinyModule()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=module)
    trainer.test(model, datamodule=module, verbose=False)
    assert model.seen == {"val": validated, "test": 9}
