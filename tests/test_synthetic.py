"""The embedded synthetic benchmark generator (kdad.data.embedded): layout, masks, determinism, caching."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from kdad.data.embedded import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECTS,
    BenchmarkParams,
    ensure_synthetic_benchmark,
    render_synthetic_image,
)
from kdad.data.embedded import benchmark as embedded_benchmark
from kdad.data.embedded import category as embedded_category
from kdad.data.embedded.render import View, make_view

SMALL = {"image_size": 64, "n_train": 4, "n_test_good": 3, "n_test_per_defect": 2, "seed": 0}
TINY_256 = {"image_size": 256, "n_train": 1, "n_test_good": 1, "n_test_per_defect": 1, "seed": 0}

# Fingerprints recorded with the locked numeric libraries; other versions may round pixels differently.
LOCKED_VERSIONS = {"numpy": "2.4.6", "opencv-python-headless": "5.0.0.93"}
LOCKED_FINGERPRINTS = {
    64: {
        "weave": "3ca6a5f0b9815807dc960cf4e0b90bed03fa88840af086a0ce9491126ee70f89",
        "woodgrain": "8b3b9db81c02f4ff7040879193419ce53bc8988415d4f3b9cb979624f26bdd80",
        "leatherette": "b3f709629ac97b5fac5d8af13bff5f490c11e8a8e762e1bad297cd4fda436363",
        "mesh": "4e77525e93f4a64caf060b65ee5e28723b7f721908b6a6db1e33a7213285bbfd",
        "hexnut": "0091f246a32a5ea0ce75d5d1c03ef203941d72c5d0df52cc9206770477c73e45",
        "tablet": "56b55ae1bd472b29359e71c891980ddb4019845287186724c45285fdde2ad859",
        "gelcap": "60dd9586b577d49e70a50ab1d7df8170e5de89079d50b6b83d8aa46c48dc4e2d",
        "bolt": "d9baaebb0b18d0f971004d4efd0cf853ef62893fc4e2ac81e942f9549f70f50d",
    },
    256: {
        "weave": "ef00b9a45613a2cd57ea3cc9110d3493364778b41b5dbc5d343cf77277808da8",
        "woodgrain": "1303b095bd878fb963cc1656be1b6876625645cdcb95eb0d839cb0ef1e575ea6",
        "leatherette": "e2e764124bd9de5ec09128443e3712f676e292d88bc05cc24e0033a677f72c39",
        "mesh": "c20ba0d31c523bdeb78b951b565c4ad6abb5534d80e7b7f803085a39aff505a2",
        "hexnut": "3528d44e07924eff6eea337c78de3b6fb1c8940b8ebae0bb7a676bf2f482fd11",
        "tablet": "317be6ec24c98761da4f636e51edff50acad2738eead1c82b33b186f2f2d6dad",
        "gelcap": "6584b3d299bafd155b47de2bc1c38a20caf410e0e83398f05d0fd474c9cd6ac1",
        "bolt": "9f33714ef8cc6df5e093974e89724ad6769a06667b290225c4a2819e3fc74145",
    },
}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _manifest(category_dir: Path) -> dict:
    return json.loads((category_dir / "manifest.json").read_text())


def _pil_fingerprint(category_dir: Path) -> str:
    """The documented fingerprint recomputed from the files with Pillow (independently of the generator)."""
    lines = []
    for path in sorted(p for p in category_dir.rglob("*.png")):
        pixels = np.asarray(Image.open(path))
        digest = hashlib.sha256(f"{pixels.shape} {pixels.dtype}\n".encode() + pixels.tobytes()).hexdigest()
        lines.append((str(path.relative_to(category_dir).as_posix()), digest))
    return hashlib.sha256("".join(f"{rel} {digest}\n" for rel, digest in sorted(lines)).encode()).hexdigest()


def _shrink_every_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """Numerics under which no attempt ever gives a visible defect: every warped mask keeps one pixel at most."""
    mask = View.mask

    def one_pixel(self: View, alpha: np.ndarray) -> np.ndarray:
        full = mask(self, alpha)
        kept = np.zeros_like(full)
        kept.flat[np.flatnonzero(full)[:1]] = True
        return kept

    monkeypatch.setattr(View, "mask", one_pixel)


@contextlib.contextmanager
def _no_runtime_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


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
    kinds = [embedded_benchmark._REGISTRY[name].kind for name in SYNTHETIC_CATEGORIES]
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
    monkeypatch.setattr(embedded_benchmark, "_THREADS", 1)  # nor does the number of rendering threads matter
    second = ensure_synthetic_benchmark(tmp_path / "b", ["weave", "hexnut"], **SMALL)
    assert _files(first) == _files(second)


def test_manifest_records_a_stable_fingerprint_and_the_library_versions(small_benchmark: Path, tmp_path: Path) -> None:
    again = ensure_synthetic_benchmark(tmp_path, ["gelcap", "mesh"], **SMALL)
    opencv = next(f"{d}=={v}" for d in embedded_benchmark._OPENCV_DISTRIBUTIONS if (v := _installed(d)))
    for category in SYNTHETIC_CATEGORIES:
        manifest = _manifest(small_benchmark / category)
        assert manifest["fingerprint"] == _pil_fingerprint(small_benchmark / category), category
        assert manifest["dependencies"] == {"numpy": np.__version__, "opencv": cv2.__version__, "opencv_wheel": opencv}
        assert manifest["fallback_placements"] == len(manifest["fallback_files"])
    for category in ("gelcap", "mesh"):
        assert _manifest(again / category)["fingerprint"] == _manifest(small_benchmark / category)["fingerprint"]


@pytest.mark.skipif(
    {name: _installed(name) for name in LOCKED_VERSIONS} != LOCKED_VERSIONS,
    reason=f"fingerprints were recorded with {LOCKED_VERSIONS}",
)
def test_fingerprints_match_the_locked_environment(small_benchmark: Path, tmp_path: Path) -> None:
    # Pins every pixel of the benchmark (at 64 px and the default 256 px): a change here needs a new
    # GENERATOR_VERSION, or a deliberate upgrade of the locked NumPy/OpenCV with new values.
    tiny = ensure_synthetic_benchmark(tmp_path, **TINY_256)
    for size, base in ((64, small_benchmark), (256, tiny)):
        found = {category: _manifest(base / category)["fingerprint"] for category in SYNTHETIC_CATEGORIES}
        assert found == LOCKED_FINGERPRINTS[size], size
        assert all(_manifest(base / category)["fallback_placements"] == 0 for category in SYNTHETIC_CATEGORIES)


@pytest.mark.parametrize("size", [64, 256])
def test_no_draw_fails_when_numerics_hide_every_defect(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # As with an OpenCV build that rounds a 3 px imprint below half coverage: every attempt is too small, so
    # each defect takes the fallback spot, which must be big enough and really change the pixels it labels.
    _shrink_every_mask(monkeypatch)
    # Every attempt costs a full defect draw and the fallback is the same after any number of them.
    monkeypatch.setattr(embedded_category, "MAX_ATTEMPTS", 3)
    stamp = embedded_category._stamp
    for category in SYNTHETIC_CATEGORIES:
        for defect in SYNTHETIC_DEFECTS[category]:
            with embedded_category.fallback_tally() as tally:
                image, mask = render_synthetic_image(category, defect, 0, size)
            monkeypatch.setattr(embedded_category, "_stamp", lambda normal, mask: normal)
            normal, same_mask = render_synthetic_image(category, defect, 0, size)  # same pose and sensor noise
            monkeypatch.setattr(embedded_category, "_stamp", stamp)
            where = f"{category}/{defect} at {size} px"
            assert len(tally) == 1 and np.array_equal(mask, same_mask), where
            assert mask.sum() >= embedded_category.min_defect_pixels(size), where
            change = np.abs(image.astype(np.int16) - normal.astype(np.int16)).max(-1)
            assert change[mask].min() >= 30, f"{where}: a masked pixel barely differs from the normal image"
            # Only the spot changed (and its surroundings within the sensor blur's 3 px kernel radius): the dropped
            # attempt left nothing unlabelled.
            near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
            assert not change[~near].any(), where


def test_fallback_spot_lands_on_the_last_attempt_or_else_on_the_part() -> None:
    size = 64
    view = make_view(size, size, 0.0, shift=(10.0, -5.0), mirror=False)
    normal = np.full((size, size, 3), 0.5, np.float32)

    def spot_centre(last: np.ndarray) -> tuple[float, float]:
        nothing = np.zeros((size, size), np.float32)
        with embedded_category.fallback_tally() as tally:
            image, mask = embedded_category.place_defect(
                view, size, lambda: (last, nothing), lambda d: d, lambda: normal
            )
        assert len(tally) == 1 and mask.sum() >= embedded_category.min_defect_pixels(size)
        assert (np.abs(image - normal).max(-1)[mask] >= 0.3).all() and np.array_equal(image[~mask], normal[~mask])
        ys, xs = np.nonzero(mask)
        return float(xs.mean()), float(ys.mean())

    # An attempt that changed nothing: the spot goes where the canvas centre (the part) lands.
    assert spot_centre(normal) == pytest.approx((31.5 + 10, 31.5 - 5))
    # One that changed a corner pixel: there, moved in just enough to keep the whole spot in the image.
    corner = normal.copy()
    corner[0, 0] = 0.9
    radius = embedded_category.fallback_radius(size)
    assert spot_centre(corner) == pytest.approx((radius, radius))


def test_fallback_placements_are_counted_in_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _shrink_every_mask(monkeypatch)
    base = ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)
    manifest = _manifest(base / "tablet")
    expected = [f"test/{d}/{i:03d}.png" for d in SYNTHETIC_DEFECTS["tablet"] for i in range(SMALL["n_test_per_defect"])]
    assert manifest["fallback_placements"] == len(expected) and manifest["fallback_files"] == expected
    assert manifest["fingerprint"] == _pil_fingerprint(base / "tablet")


def _drifted_sensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """What other library versions look like to the cache: the same draws, slightly different pixels."""
    sensor = embedded_benchmark.apply_sensor
    monkeypatch.setattr(embedded_benchmark, "apply_sensor", lambda rng, img: sensor(rng, img) ^ np.uint8(1))


def test_reusing_a_category_drawn_by_other_versions_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)
    folder = base / "tablet"
    _drifted_sensor(monkeypatch)
    # Same versions as recorded: nothing is rendered at load time, whatever the pixels would be.
    monkeypatch.setattr(embedded_benchmark, "_probe", lambda *args: pytest.fail("probed although the versions match"))
    with _no_runtime_warning():
        ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)
    monkeypatch.undo()

    other = {"numpy": "1.26.4", "opencv": "5.1.0", "opencv_wheel": "opencv-python-headless==5.1.0.95"}
    monkeypatch.setattr(embedded_benchmark, "dependency_versions", lambda: other)
    monkeypatch.setattr(embedded_benchmark, "_PROBED", {})
    with _no_runtime_warning():  # other versions, same pixels: the probe passes silently
        ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)

    monkeypatch.setattr(embedded_benchmark, "_PROBED", {})
    _drifted_sensor(monkeypatch)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with pytest.warns(RuntimeWarning) as caught:
        ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)
        ensure_synthetic_benchmark(tmp_path, ["tablet"], **SMALL)  # one warning per process and folder
    assert len(caught) == 1
    message = str(caught[0].message)
    assert str(folder) in message and "numpy 1.26.4" in message and f"numpy {np.__version__}" in message
    assert f"delete {folder}" in message and "--verify" in message
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamps  # reported, not silently replaced


def test_verify_reports_drift_and_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_synthetic_benchmark(tmp_path, ["tablet", "bolt"], **SMALL)
    argv = ["--root", str(tmp_path), "--image-size", "64", "--n-train", "4", "--n-test-good", "3",
            "--n-test-per-defect", "2", "--verify"]  # fmt: skip
    assert embedded_benchmark.main([*argv, "--categories", "tablet,bolt"]) == 0
    assert capsys.readouterr().out.count(": ok (fingerprint") == 2

    base = tmp_path / BenchmarkParams(**SMALL).folder_name()
    folder = base / "tablet"
    with monkeypatch.context() as patched:
        _drifted_sensor(patched)
        problems = embedded_benchmark.verify_category(folder, BenchmarkParams(**SMALL))
        assert f"{folder}: this kdad draws different pixels with the same numpy" in problems[0]
        patched.setattr(embedded_benchmark, "dependency_versions", lambda: {"numpy": "1.26.4", "opencv": "5.1.0"})
        problems = embedded_benchmark.verify_category(folder, BenchmarkParams(**SMALL))
    assert len(problems) == 2 and f"{folder}: generated with numpy {np.__version__}" in problems[0]
    assert "the installed numpy 1.26.4, opencv 5.1.0 draw different pixels" in problems[0]
    assert f"delete {folder}" in problems[1]

    damaged = base / "bolt" / "test" / "good" / "000.png"
    Image.fromarray(255 - np.asarray(Image.open(damaged))).save(damaged)
    assert embedded_benchmark.main([*argv, "--categories", "bolt,hexnut"]) == 1
    out = capsys.readouterr().out
    assert f"{base / 'bolt'}: files differ from the fingerprint" in out
    assert f"{base / 'hexnut'} is missing" in out and "2 of 2 categories differ or are missing" in out


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
    host = embedded_benchmark._host()
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
    write_sample = embedded_benchmark._write_sample

    def failing(*args: object) -> tuple[dict[str, str], bool]:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # what a Ctrl-C in the middle of writing looks like
        return write_sample(*args)

    monkeypatch.setattr(embedded_benchmark, "_THREADS", 1)
    monkeypatch.setattr(embedded_benchmark, "_write_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_benchmark(tmp_path, ["leatherette"], **SMALL)
    base = tmp_path / BenchmarkParams(**SMALL).folder_name()
    assert not (base / "leatherette").exists()
    assert not list(base.glob(".tmp__*"))
    monkeypatch.setattr(embedded_benchmark, "_write_sample", write_sample)
    ensure_synthetic_benchmark(tmp_path, ["leatherette"], **SMALL)
    assert embedded_benchmark.is_complete(base / "leatherette", BenchmarkParams(**SMALL))


def test_concurrent_generations_agree_and_work_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    generated: list[str] = []
    generate = embedded_benchmark.generate_category

    def counting(name: str, params: BenchmarkParams, dest: Path) -> embedded_benchmark.Generation:
        generated.append(name)
        return generate(name, params, dest)

    monkeypatch.setattr(embedded_benchmark, "generate_category", counting)
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
    assert embedded_benchmark.is_complete(results[0] / "mesh", BenchmarkParams(**SMALL))
    assert not list(results[0].glob(".tmp__*"))
    if embedded_benchmark.fcntl is not None:
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
    code = embedded_benchmark.main(
        ["--root", str(tmp_path), "--categories", "tablet,bolt", "--image-size", "48", "--n-train", "2",
         "--n-test-good", "1", "--n-test-per-defect", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    base = next(tmp_path.iterdir())
    assert code == 0 and str(base) in out and "took" in out
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["bolt", "tablet"]
