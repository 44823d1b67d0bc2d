"""The teacher-feature cache (kdad.blocks.feature_cache, speed.teacher_cache): same results with and without it, its
switch-off reasons, the memory / disk choice, and that it serves the bound clean batch only."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import lightning as L
import pytest
import torch
from helpers import compose_config
from torch import nn

from kdad.blocks.feature_cache import FeatureStore, TeacherCache, data_reasons, teacher_reasons
from kdad.blocks.teacher import Teacher
from kdad.errors import ConfigError
from kdad.runner.train import build_modules


def _train_and_test(method: str, mode: str, root: Path, tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple:
    """Seeded tiny run (64 px, 2 epochs, 8 training images in batches of 3: the last batch is smaller, so a cached
    image may come back in a batch of another size) through Lightning's fit and test loops."""
    cfg = compose_config(
        [
            f"method={method}",
            "data=mvtec",
            f"data.root={root}",
            "data.category=bottle",
            "data.image_size=64",
            "data.batch_size=3",
            "data.eval_batch_size=4",
            "data.calibration_split=0",
            "logger=none",
            "method.overlay_count=0",
            f"speed.teacher_cache={mode}",
            *extra,
        ],
        tmp_path / mode,
    )
    datamodule, module = build_modules(cfg, verbose=False)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp_path / mode / "run"),
    )
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module.test_metrics, module.teacher_cache.last


@pytest.mark.parametrize(("method", "teacher"), [("stfpm", "teacher"), ("rd", "teacher"), ("rd_expert", "expert")])
def test_metrics_are_the_same_with_and_without_the_cache(
    method: str, teacher: str, mvtec_root: Path, tmp_path: Path
) -> None:
    """Bit-identical here; the stated tolerance is fp32 rounding of the teacher's features (a cached image's features
    come from a batch of another size), which AUROCs and AUPROs would show as differences of < 1e-6."""
    off, off_info = _train_and_test(method, "off", mvtec_root, tmp_path)
    on, on_info = _train_and_test(method, "auto", mvtec_root, tmp_path)
    assert off_info == {"summary": "teacher cache: off (speed.teacher_cache=off)", "stats": {}}
    stats = on_info["stats"][teacher]
    # 8 images computed once (the first epoch), then served from memory for the whole second epoch
    assert stats["computed"] == 8 and stats["hits"] == 8 and not stats["on_disk"]
    assert on_info["summary"].startswith(f"teacher cache: on ({teacher}: memory (cpu)")
    if method == "rd_expert":  # the trainable teacher is never cached, and the line says why
        assert set(on_info["stats"]) == {"expert"} and "not teacher: trainable teacher" in on_info["summary"]
    assert set(on) == set(off)
    for key, value in off.items():
        assert on[key] == pytest.approx(value, abs=1e-6), key


# ------------------------------------------------------------------------------------------ switch-off reasons
class _Dataset:
    def __init__(self, transform=None) -> None:
        self.transform = transform


class _Model(nn.Module):
    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return Teacher("resnet18", weights="none")


def _batch() -> dict:
    return {"image": torch.randn(2, 3, 32, 32), "image_path": ["a.png", "b.png"]}


def _decide(model: nn.Module, mode: str = "auto", dataset=None, batch=None, capacity: int = 4) -> TeacherCache:
    cache = TeacherCache(mode)
    cache.decide(model, batch or _batch(), _Dataset() if dataset is None else dataset, capacity, None)
    return cache


def test_safe_case_caches_the_frozen_teacher(teacher: Teacher) -> None:
    cache = _decide(_Model(teacher))
    assert set(cache.stores) == {"teacher"} and not cache.reasons


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("augmentations", "train augmentations change the teacher's input every epoch"),
        ("no_paths", "training batches carry no image_path"),
        ("unknown_dataset", "does not say whether it augments"),
        ("unknown_size", "the training set's size is unknown"),
        ("trainable", "trainable teacher (frozen=False)"),
        ("train_mode", "teacher in train mode (BatchNorm statistics would update)"),
        ("gradients", "teacher parameters require gradients"),
        ("no_teacher", "no teacher block"),
    ],
)
def test_each_unsafe_case_switches_the_cache_off_with_its_reason(case: str, reason: str, teacher: Teacher) -> None:
    model: nn.Module = _Model(teacher)
    dataset, batch, capacity = _Dataset(), _batch(), 4
    if case == "augmentations":
        dataset = _Dataset(A.Compose([A.HorizontalFlip()]))
    elif case == "no_paths":
        del batch["image_path"]
    elif case == "unknown_dataset":
        dataset = object()
    elif case == "unknown_size":
        capacity = 0
    elif case == "trainable":
        model = _Model(Teacher("resnet18", weights="none", frozen=False))
    elif case == "train_mode":
        model = _Model(Teacher("resnet18", weights="none"))
        model.teacher.body.train()  # behind the frozen Teacher's back: BatchNorm would update
    elif case == "gradients":
        model = _Model(Teacher("resnet18", weights="none"))
        model.teacher.body.conv1.weight.requires_grad_(True)
    elif case == "no_teacher":
        model = _Model(nn.Conv2d(3, 3, 1))
    cache = _decide(model, dataset=dataset, batch=batch, capacity=capacity)
    assert not cache.stores and cache.summary.startswith("teacher cache: off (") and reason in cache.summary
    assert "\n" not in cache.summary
    with pytest.raises(ConfigError, match="speed.teacher_cache=on"):
        _decide(model, mode="on", dataset=dataset, batch=batch, capacity=capacity)


def test_off_mode_and_bad_mode(teacher: Teacher) -> None:
    cache = _decide(_Model(teacher), mode="off")
    assert not cache.stores and cache.summary == "teacher cache: off (speed.teacher_cache=off)"
    with pytest.raises(ConfigError):
        TeacherCache("sometimes")


def test_reason_helpers() -> None:
    assert data_reasons(_Dataset(), _batch()) == []
    frozen = Teacher("resnet18", weights="none")
    frozen.train()  # a frozen Teacher stays in eval mode whatever train() is called with
    assert teacher_reasons(frozen) == []


def test_default_config_turns_the_cache_on_where_safe(tmp_path: Path) -> None:
    cfg = compose_config(["data.image_size=64"], tmp_path)
    assert cfg.speed.teacher_cache == "auto"
    _, module = build_modules(cfg, verbose=False)
    assert module.teacher_cache.mode == "auto" and module.teacher_cache.memory_gb == cfg.speed.teacher_cache_memory_gb


# ------------------------------------------------------------------------------------------ serving, memory vs disk
def _bound(teacher: Teacher, budget_gb: float, tmp_path: Path, capacity: int = 4) -> TeacherCache:
    cache = TeacherCache("auto", memory_gb=budget_gb, directory=tmp_path / "disk")
    cache.decide(_Model(teacher), _batch(), _Dataset(), capacity, None)
    return cache


@pytest.mark.parametrize("budget_gb", [4.0, 0.0])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_memory_or_disk_by_budget_and_features_served_per_image(
    budget_gb: float, memory_format: torch.memory_format, teacher: Teacher, tmp_path: Path
) -> None:
    teacher.to(memory_format=memory_format)  # speed.channels_last: the teacher's features come out channels-last
    cache = _bound(teacher, budget_gb, tmp_path)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = teacher(images)
    paths = ["a", "b", "c", "d"]
    for rows in ([0, 1], [2, 3]):  # epoch 1: every image computed once
        batch = {"image": images[rows], "image_path": [paths[i] for i in rows]}
        cache.bind(batch)
        teacher(batch["image"])
        cache.unbind()
    store = cache.stores["teacher"]
    assert store.on_disk == (budget_gb == 0.0) and store.computed == 4
    assert ("disk (memory-mapped" in cache.summary) == store.on_disk and "for 4 images" in cache.summary
    assert store.bytes == sum(f[0].numel() * 4 for f in reference) * 4
    if store.on_disk:
        assert all(path.is_file() for path in store._files)
    # epoch 2, shuffled, another batch size: served from the store, per image, in the batch's order
    order = [3, 0, 2]
    batch = {"image": images[order], "image_path": [paths[i] for i in order]}
    cache.bind(batch)
    served = teacher(batch["image"])
    other = teacher(batch["image"].clone())  # any other tensor (a synthetic copy, say) is computed
    cache.unbind()
    assert store.hits == 3
    for level, ref in zip(served, reference, strict=True):
        assert torch.allclose(level, ref[order], atol=1e-5)
        assert level.is_contiguous(memory_format=memory_format)  # the teacher's own layout, in memory or on disk
    for level, ref in zip(other, reference, strict=True):
        assert torch.allclose(level, ref[order], atol=1e-5)
    files = list(store._files)
    cache.reset()
    assert cache.last["stats"]["teacher"]["hits"] == 3 and not any(path.exists() for path in files)


def test_a_partly_stored_batch_computes_the_rest_in_order(teacher: Teacher, tmp_path: Path) -> None:
    cache = _bound(teacher, 4.0, tmp_path)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = teacher(images)
    first = {"image": images[:1], "image_path": ["a"]}
    cache.bind(first)
    teacher(first["image"])
    batch = {"image": images, "image_path": ["a", "b", "c"]}  # a stored, b and c new (a DDP process's new shard)
    cache.bind(batch)
    served = teacher(batch["image"])
    cache.unbind()
    store = cache.stores["teacher"]
    assert store.hits == 1 and store.computed == 3
    for level, ref in zip(served, reference, strict=True):
        assert torch.allclose(level, ref, atol=1e-5)


def test_bfloat16_features_round_trip_through_the_disk_store(tmp_path: Path) -> None:
    store = FeatureStore("teacher", 3, None)
    features = [torch.randn(2, 4, 5, 5).to(torch.bfloat16), torch.randn(2, 8, 3, 3).to(torch.bfloat16)]
    assert store.allocate(features, budget=0, disk_dir=tmp_path) == 0 and store.on_disk
    store.store([2, 0], features)
    back = store.gather([0, 2])
    assert all(b.dtype == torch.bfloat16 for b in back)
    assert torch.equal(back[0][0], features[0][1]) and torch.equal(back[1][1], features[1][0])
    store.release()
    assert not store.directory.exists()
