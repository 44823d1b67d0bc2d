"""The decode cache: hits in memory and on disk, invalidation, atomic writes, preload, corrupt files."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_image, write_mask, write_mvtec

from kdad.data import AnomalyDataset, DatasetError, DecodeCache, MVTecDataModule, Sample


def _dataset(tmp_path: Path, cache: DecodeCache, n: int = 3, **kwargs: object) -> AnomalyDataset:
    """n defect images with masks, written on first use and reused by later datasets of the same test."""
    samples = []
    for i in range(n):
        image, mask = tmp_path / "img" / f"{i}.png", tmp_path / "img" / f"{i}_mask.png"
        if not image.exists():
            write_image(image, box=(2, 2, 10, 10))
            write_mask(mask, (2, 2, 10, 10))
        samples.append(Sample(image, mask, 1, "x"))
    return AnomalyDataset(samples, image_size=16, cache=cache, **kwargs)


def test_memory_cache_decodes_once(tmp_path: Path) -> None:
    cache = DecodeCache()
    dataset = _dataset(tmp_path, cache)
    first = [dataset[i] for i in range(len(dataset))]
    assert cache.stats.decodes == 6 and cache.stats.memory_hits == 0  # 3 images + 3 masks
    second = [dataset[i] for i in range(len(dataset))]
    assert cache.stats.decodes == 6 and cache.stats.memory_hits == 6
    for a, b in zip(first, second, strict=True):
        assert (a["image"] == b["image"]).all() and (a["mask"] == b["mask"]).all()


def test_disk_cache_serves_a_later_run(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    first_run = _dataset(tmp_path, DecodeCache(directory))
    expected = [first_run[i]["image"] for i in range(3)]
    assert len(list(directory.rglob("*.npy"))) == 6
    later = DecodeCache(directory)  # a new process: empty memory
    second_run = _dataset(tmp_path, later)
    images = [second_run[i]["image"] for i in range(3)]
    assert later.stats.decodes == 0 and later.stats.disk_hits == 6
    assert all((a == b).all() for a, b in zip(expected, images, strict=True))


def test_changed_file_is_decoded_again(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    cache = DecodeCache(directory)
    dataset = _dataset(tmp_path, cache, n=1)
    before = dataset.load_image(0).copy()
    path = dataset.samples[0].image_path
    write_image(path, box=(0, 0, 64, 48))  # all bright now
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse-mtime file systems
    after = dataset.load_image(0)
    assert cache.stats.decodes == 2
    assert not np.array_equal(before, after) and after.min() >= 240
    # a fresh process sees the new content too, not the stale disk entry
    assert np.array_equal(_dataset(tmp_path, DecodeCache(directory), n=1).load_image(0), after)


def test_variants_do_not_collide(tmp_path: Path) -> None:
    cache = DecodeCache(tmp_path / "cache")
    path = write_image(tmp_path / "a.png")
    mask = write_mask(tmp_path / "a_mask.png", (3, 3, 9, 9))
    sample = [Sample(path, mask, 1, "x")]
    shapes = set()
    for size, interpolation, mode in [
        (16, "bilinear", "nearest"),
        (16, "bicubic", "bilinear_threshold"),
        (8, "bilinear", "nearest"),
    ]:
        dataset = AnomalyDataset(sample, image_size=size, interpolation=interpolation, mask_resize=mode, cache=cache)
        shapes.add(dataset.load_image(0).shape)
        dataset.load_mask(0)
    assert cache.stats.decodes == 6 and shapes == {(16, 16, 3), (8, 8, 3)}


def test_writes_are_atomic_and_concurrent_writers_agree(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    path = write_image(tmp_path / "a.png")
    caches = [DecodeCache(directory) for _ in range(6)]  # six "processes" racing on one entry
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(
            target=lambda c=c: results.append(
                AnomalyDataset([Sample(path, None, 0, "good")], 16, cache=c).load_image(0)
            )
        )
        for c in caches
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(results[0], r) for r in results)
    assert len(list(directory.rglob("*.npy"))) == 1
    assert not list(directory.rglob("*.tmp"))


def test_corrupt_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    dataset = _dataset(tmp_path, DecodeCache(directory), n=1)
    good = dataset.load_image(0).copy()
    for entry in directory.rglob("*.npy"):
        entry.write_bytes(b"garbage")
    cache = DecodeCache(directory)
    assert np.array_equal(_dataset(tmp_path, cache, n=1).load_image(0), good)
    assert cache.stats.decodes == 1


def test_unwritable_cache_dir_warns_and_keeps_working(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    cache = DecodeCache(blocker / "cache")
    with pytest.warns(RuntimeWarning, match="cannot write"):
        image = _dataset(tmp_path, cache, n=1).load_image(0)
    assert image.shape == (16, 16, 3)


def test_cached_arrays_are_read_only(tmp_path: Path) -> None:
    image = _dataset(tmp_path, DecodeCache(), n=1).load_image(0)
    with pytest.raises(ValueError):
        image[0, 0, 0] = 1


def test_pickling_for_spawned_workers(tmp_path: Path) -> None:
    memory_only = DecodeCache()
    _dataset(tmp_path, memory_only, n=1)[0]
    assert len(pickle.loads(pickle.dumps(memory_only))) == 2  # no disk: workers get the arrays
    on_disk = DecodeCache(tmp_path / "cache")
    _dataset(tmp_path, on_disk, n=1)[0]
    clone = pickle.loads(pickle.dumps(on_disk))
    assert len(clone) == 0  # workers re-read the disk entries instead of receiving copies
    _dataset(tmp_path, clone, n=1)[0]
    assert clone.stats.decodes == 2 and clone.stats.disk_hits == 2


def test_preload_fills_the_cache(tmp_path: Path) -> None:
    cache = DecodeCache()
    dataset = _dataset(tmp_path, cache, n=4)
    dataset.preload(num_threads=2)
    assert cache.stats.decodes == 8
    [dataset[i] for i in range(4)]
    assert cache.stats.decodes == 8 and cache.stats.memory_hits == 8


def test_datamodule_preload_and_second_run_from_disk(tmp_path: Path) -> None:
    write_mvtec(tmp_path / "mvtec")
    cache_dir = str(tmp_path / "cache")
    first = MVTecDataModule(str(tmp_path / "mvtec"), "bottle", image_size=16, cache_dir=cache_dir)
    first.setup()
    assert first.cache.stats.decodes == 5 + 8 + 6  # train + test images + defect masks
    second = MVTecDataModule(str(tmp_path / "mvtec"), "bottle", image_size=16, cache_dir=cache_dir)
    second.setup()
    assert second.cache.stats.decodes == 0 and second.cache.stats.disk_hits == 19
    [second.train_dataset[i] for i in range(len(second.train_dataset))]
    assert second.cache.stats.decodes == 0


def test_corrupt_image_reported_at_preload(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    broken = [
        tmp_path / "bottle" / "train" / "good" / "000.png",
        tmp_path / "bottle" / "test" / "good" / "0001.png",
    ]
    for path in broken:
        path.write_bytes(path.read_bytes()[:60])  # truncated: the header survives, the pixels do not
    module = MVTecDataModule(str(tmp_path), "bottle", image_size=16)
    with pytest.raises(DatasetError) as info:
        module.setup()
    message = str(info.value)
    assert "2 file(s) could not be loaded" in message
    assert all(str(path) in message for path in broken)


def test_corrupt_image_reported_at_load_without_preload(tmp_path: Path) -> None:
    write_mvtec(tmp_path)
    broken = tmp_path / "bottle" / "train" / "good" / "000.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    module = MVTecDataModule(str(tmp_path), "bottle", image_size=16, preload=False)
    module.setup()  # indexing does not decode
    index = [str(s.image_path) for s in module.train_dataset.samples].index(str(broken))
    with pytest.raises(DatasetError, match=f"cannot decode image {broken}"):
        module.train_dataset[index]
