"""The embedded synthetic benchmark generator (kdad.data.synthetic): layout, masks, determinism, caching."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdad.data import synthetic
from kdad.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECTS,
    BenchmarkParams,
    ensure_synthetic_benchmark,
    render_synthetic_image,
)

SMALL = {"image_size": 64, "n_train": 4, "n_test_good": 3, "n_test_per_defect": 2, "seed": 0}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    greater = (positives[:, None] > negatives[None]).mean()
    ties = (positives[:, None] == negatives[None]).mean()
    return float(greater + 0.5 * ties)


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every category at 64 px with a handful of images (about a second)."""
    return ensure_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), **SMALL)


def test_categories_mix_textures_and_objects_with_several_defects() -> None:
    assert len(SYNTHETIC_CATEGORIES) >= 6
    kinds = [synthetic._REGISTRY[name].kind for name in SYNTHETIC_CATEGORIES]
    assert kinds.count("texture") >= 3 and kinds.count("object") >= 3
    assert all(len(SYNTHETIC_DEFECTS[name]) >= 3 for name in SYNTHETIC_CATEGORIES)
    assert "weave" in SYNTHETIC_CATEGORIES  # the default category of conf/data/synthetic.yaml


def test_layout_is_exactly_mvtec(small_benchmark: Path) -> None:
    assert small_benchmark.name == BenchmarkParams(**SMALL).folder_name()
    assert sorted(p.name for p in small_benchmark.iterdir() if not p.name.startswith(".")) == sorted(
        [*SYNTHETIC_CATEGORIES, "params.json"]
    )
    for category in SYNTHETIC_CATEGORIES:
        folder = small_benchmark / category
        expected = {"manifest.json"}
        expected |= {f"train/good/{i:03d}.png" for i in range(SMALL["n_train"])}
        expected |= {f"test/good/{i:03d}.png" for i in range(SMALL["n_test_good"])}
        for defect in SYNTHETIC_DEFECTS[category]:
            expected |= {f"test/{defect}/{i:03d}.png" for i in range(SMALL["n_test_per_defect"])}
            expected |= {f"ground_truth/{defect}/{i:03d}_mask.png" for i in range(SMALL["n_test_per_defect"])}
        assert set(_files(folder)) == expected, category
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["params"] == BenchmarkParams(**SMALL).to_json()
        assert manifest["counts"]["train/good"] == SMALL["n_train"]
        assert manifest["defects"] == list(SYNTHETIC_DEFECTS[category])


def test_images_rgb_and_masks_binary_aligned_and_non_empty(small_benchmark: Path) -> None:
    size = SMALL["image_size"]
    for category in SYNTHETIC_CATEGORIES:
        for image_path in (small_benchmark / category / "test").rglob("*.png"):
            with Image.open(image_path) as image:
                assert image.mode == "RGB" and image.size == (size, size)
            defect = image_path.parent.name
            if defect == "good":
                continue
            with Image.open(small_benchmark / category / "ground_truth" / defect / f"{image_path.stem}_mask.png") as m:
                assert m.mode == "L" and m.size == (size, size)
                mask = np.asarray(m)
            assert set(np.unique(mask)) <= {0, 255}
            assert (mask > 0).sum() >= 3, f"{category}/{defect}/{image_path.name} has an empty mask"


def test_files_are_what_render_returns(small_benchmark: Path) -> None:
    category, defect = "bolt", SYNTHETIC_DEFECTS["bolt"][0]
    image, mask = render_synthetic_image(category, defect, 1, SMALL["image_size"], SMALL["seed"])
    assert np.array_equal(np.asarray(Image.open(small_benchmark / category / "test" / defect / "001.png")), image)
    written = np.asarray(Image.open(small_benchmark / category / "ground_truth" / defect / "001_mask.png"))
    assert np.array_equal(written > 0, mask)


def test_normal_images_vary(small_benchmark: Path) -> None:
    for category in SYNTHETIC_CATEGORIES:
        images = [
            np.asarray(Image.open(p), np.float32) for p in sorted((small_benchmark / category).rglob("good/*.png"))
        ]
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                assert np.abs(images[i] - images[j]).mean() > 2.0, f"{category}: normal images {i} and {j} nearly equal"


def test_defects_not_separable_by_global_statistics(tmp_path: Path) -> None:
    # Exposure and illumination vary per image, so mean brightness or contrast cannot tell defective
    # images from good ones: their AUROC stays near chance in every category.
    base = ensure_synthetic_benchmark(tmp_path, image_size=64, n_train=1, n_test_good=12, n_test_per_defect=4)
    for category in SYNTHETIC_CATEGORIES:
        stats: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for path in (base / category / "test").rglob("*.png"):
            pixels = np.asarray(Image.open(path), np.float32)
            stats[path.parent.name != "good"].append((pixels.mean(), pixels.std()))
        good, bad = np.array(stats[False]), np.array(stats[True])
        for column, statistic in enumerate(("mean", "std")):
            auroc = _auroc(good[:, column], bad[:, column])
            assert 0.1 < auroc < 0.9, f"{category}: {statistic} intensity separates defects (AUROC {auroc:.2f})"


def test_generation_is_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_synthetic_benchmark(tmp_path / "a", ["weave", "hexnut"], **SMALL)
    monkeypatch.setattr(synthetic, "_THREADS", 1)  # nor does the number of rendering threads matter
    second = ensure_synthetic_benchmark(tmp_path / "b", ["weave", "hexnut"], **SMALL)
    assert _files(first) == _files(second)


def test_category_does_not_depend_on_generation_order(tmp_path: Path) -> None:
    together = ensure_synthetic_benchmark(tmp_path / "a", ["mesh", "tablet", "weave"], **SMALL)
    alone = ensure_synthetic_benchmark(tmp_path / "b", ["weave"], **SMALL)
    assert _files(together / "weave") == _files(alone / "weave")
    assert not (alone / "mesh").exists()


def test_params_hash_separates_sizes_and_counts(tmp_path: Path) -> None:
    names = {
        BenchmarkParams(**{**SMALL, field: value}).folder_name()
        for field, value in [("image_size", 64), ("image_size", 72), ("n_train", 5), ("n_test_good", 4),
                             ("n_test_per_defect", 3), ("seed", 1)]
    }  # fmt: skip
    assert len(names) == 6
    a = ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)
    b = ensure_synthetic_benchmark(tmp_path, ["tablet"], **{**SMALL, "image_size": 72})
    assert a != b and a.parent == b.parent == tmp_path
    with Image.open(b / "tablet" / "train" / "good" / "000.png") as image:
        assert image.size == (72, 72)


def test_existing_category_is_reused(tmp_path: Path) -> None:
    base = ensure_synthetic_benchmark(tmp_path, ["gelcap"], **SMALL)
    stamps = {p: p.stat().st_mtime_ns for p in (base / "gelcap").rglob("*")}
    assert ensure_synthetic_benchmark(tmp_path, ["gelcap", "bolt"], **SMALL) == base
    assert {p: p.stat().st_mtime_ns for p in (base / "gelcap").rglob("*")} == stamps
    assert (base / "bolt" / "manifest.json").is_file()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_leftovers_of_a_crashed_run_are_cleaned_and_regenerated(tmp_path: Path) -> None:
    reference = _files(ensure_synthetic_benchmark(tmp_path / "ref", ["weave"], **SMALL) / "weave")
    base = tmp_path / "cache" / BenchmarkParams(**SMALL).folder_name()
    host = synthetic._host()
    crashed = base / f".tmp__weave__{host}__{_dead_pid()}__0000dead"
    abandoned = base / ".tmp__weave__some-other-host__4242__0000beef"  # another machine, long ago
    running = base / f".tmp__weave__{host}__{os.getpid()}__00001ive"  # a live generation: left alone
    for temp in (crashed, abandoned, running):
        (temp / "train" / "good").mkdir(parents=True)
        (temp / "train" / "good" / "000.png").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(abandoned, (old, old))
    # A category folder without a manifest (e.g. copied by hand, interrupted) is not complete either.
    (base / "weave" / "train" / "good").mkdir(parents=True)
    (base / "weave" / "train" / "good" / "000.png").write_bytes(b"partial")

    assert ensure_synthetic_benchmark(tmp_path / "cache", ["weave"], **SMALL) == base
    assert _files(base / "weave") == reference
    assert not crashed.exists() and not abandoned.exists() and running.exists()


def test_interrupted_generation_leaves_no_complete_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    write_sample = synthetic._write_sample

    def failing(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # what a Ctrl-C in the middle of writing looks like
        write_sample(*args)

    monkeypatch.setattr(synthetic, "_THREADS", 1)
    monkeypatch.setattr(synthetic, "_write_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_benchmark(tmp_path, ["leatherette"], **SMALL)
    base = tmp_path / BenchmarkParams(**SMALL).folder_name()
    assert not (base / "leatherette").exists()
    assert not list(base.glob(".tmp__*"))
    monkeypatch.setattr(synthetic, "_write_sample", write_sample)
    ensure_synthetic_benchmark(tmp_path, ["leatherette"], **SMALL)
    assert synthetic.is_complete(base / "leatherette", BenchmarkParams(**SMALL))


def test_concurrent_generations_agree_and_work_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generated: list[str] = []
    generate = synthetic.generate_category

    def counting(name: str, params: BenchmarkParams, dest: Path) -> dict[str, int]:
        generated.append(name)
        return generate(name, params, dest)

    monkeypatch.setattr(synthetic, "generate_category", counting)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_synthetic_benchmark(tmp_path, ["mesh"], **SMALL)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert synthetic.is_complete(results[0] / "mesh", BenchmarkParams(**SMALL))
    assert not list(results[0].glob(".tmp__*"))
    if synthetic.fcntl is not None:
        assert generated == ["mesh"]


def test_unknown_category_and_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic category 'carpet'.*weave.*bolt"):
        ensure_synthetic_benchmark(tmp_path, ["weave", "carpet"], **SMALL)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="n_train"):
        ensure_synthetic_benchmark(tmp_path, ["weave"], **{**SMALL, "n_train": 0})
    with pytest.raises(ValueError, match="image_size"):
        ensure_synthetic_benchmark(tmp_path, ["weave"], **{**SMALL, "image_size": 8})
    with pytest.raises(ValueError, match="unknown defect"):
        render_synthetic_image("weave", "flip")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = synthetic.main(
        ["--root", str(tmp_path), "--categories", "tablet,bolt", "--image-size", "48", "--n-train", "2",
         "--n-test-good", "1", "--n-test-per-defect", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    base = next(tmp_path.iterdir())
    assert code == 0 and str(base) in out and "took" in out
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["bolt", "tablet"]
