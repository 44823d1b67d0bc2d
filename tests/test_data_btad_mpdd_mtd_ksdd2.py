"""BTAD, MPDD, Magnetic Tile Defects and KSDD2: finders over each release's layout, the split and protocol each run
records, category sweeps, foreground tables, bad input through the command line, and training end to end -- on trees
written by tests/fixtures.py and on trees built here from the embedded benchmark's images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import (
    BTAD_EXTENSIONS,
    MPDD_DEFECTS,
    MTD_DEFECT_FOLDERS,
    write_btad,
    write_ksdd2,
    write_mpdd,
    write_mtd,
)
from helpers import assert_command_refuses, check_against_manifest, check_mask_pixels, compose_config
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image

from kdad.data import (
    DATA_MODULES,
    BTADDataModule,
    DatasetError,
    KSDD2DataModule,
    MagneticTileDataModule,
    MPDDDataModule,
)
from kdad.runner import sweep
from kdad.runner.train import run

REPO = Path(__file__).resolve().parents[1]
# What makes a test run short; none of it concerns the layout or the protocol.
FAST = [
    "method=rd",
    "trainer.max_epochs=1",
    "data.image_size=64",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "logger=none",
    "review_cases=0",
]
# The release's category lists (the sources are in kdad/data/<benchmark>.py's docstrings).
RELEASE_CATEGORIES = {
    "btad": ["01", "02", "03"],
    "mpdd": ["bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"],
    "mtd": ["magnetic_tile"],
    "ksdd2": ["ksdd2"],
}
WRITERS = {"btad": write_btad, "mpdd": write_mpdd, "mtd": write_mtd, "ksdd2": write_ksdd2}


# ------------------------------------------------------------------------------------------------ finders
@pytest.mark.parametrize("category", ["01", "02", "03"])
def test_btad_reads_each_category_with_its_release_extensions(tmp_path: Path, category: str) -> None:
    manifest = write_btad(tmp_path)
    module = BTADDataModule(str(tmp_path), category, image_size=32)
    train, test = module.train_dataset.samples, module.test_dataset.samples
    assert module.describe()["counts"] == {"train": {"total": 4, "good": 4}, "test": {"total": 5, "good": 2, "ko": 3}}
    check_against_manifest(train + test, manifest)
    check_mask_pixels(module, manifest)
    image_ext, mask_ext = BTAD_EXTENSIONS[category]
    assert module.describe()["extensions"] == {"images": [image_ext], "masks": [mask_ext]}
    # test/ok/0000 and test/ko/0000 share a stem: only the ko image gets the mask
    by_folder = {(s.image_path.parent.name, s.image_path.stem): s for s in test}
    assert by_folder[("ok", "0000")].mask_path is None
    assert by_folder[("ko", "0000")].mask_path == tmp_path / category / "ground_truth" / "ko" / f"0000{mask_ext}"


def test_btad_release_with_anomalib_style_png_conversion_reads_the_same(tmp_path: Path) -> None:
    # anomalib's BTech preparation converts the .bmp files to .png: pairing is by stem, so nothing changes.
    write_btad(tmp_path, categories=("03",))
    for path in list((tmp_path / "03").rglob("*.bmp")):
        Image.open(path).save(path.with_suffix(".png"))
        path.unlink()
    module = BTADDataModule(str(tmp_path), "03", image_size=16)
    assert module.describe()["counts"]["test"] == {"total": 5, "good": 2, "ko": 3}
    assert module.describe()["extensions"] == {"images": [".png"], "masks": [".png"]}


@pytest.mark.parametrize("category", ["bracket_brown", "metal_plate", "tubes"])
def test_mpdd_reads_the_mvtec_layout_with_its_defect_types(tmp_path: Path, category: str) -> None:
    manifest = write_mpdd(tmp_path, categories=(category,))
    module = MPDDDataModule(str(tmp_path), category, image_size=32)
    test = module.test_dataset.samples
    defects = MPDD_DEFECTS[category]
    assert module.describe()["counts"]["test"] == {
        "total": 2 + 2 * len(defects),
        "good": 2,
        **dict.fromkeys(defects, 2),
    }
    check_against_manifest(module.train_dataset.samples + test, manifest)
    check_mask_pixels(module, manifest)


def test_mtd_holds_out_seeded_test_normals_and_records_the_split(tmp_path: Path) -> None:
    manifest = write_mtd(tmp_path, n_free=10)
    module = MagneticTileDataModule(str(tmp_path), image_size=32)
    train, test = module.train_dataset.samples, module.test_dataset.samples
    assert module.describe()["counts"] == {
        "train": {"total": 8, "good": 8},
        "test": {"total": 12, "blowhole": 2, "break": 2, "crack": 2, "fray": 2, "good": 2, "uneven": 2},
    }
    assert not {s.image_path for s in train} & {s.image_path for s in test}
    assert all(s.image_path.suffix == ".jpg" for s in train + test)  # the .png files are masks, never images
    check_against_manifest(train + test, manifest)
    check_mask_pixels(module, manifest)
    split = module.describe()["normal_split"]
    assert split == {
        "source": "seeded",
        "normal_test_split": 0.2,
        "test_split_seed": 0,
        "train_list": None,
        "normal_images": 10,
        "train_normals": 8,
        "test_normals": 2,
    }

    def test_normals(**kwargs: object) -> set[str]:
        dm = MagneticTileDataModule(str(tmp_path), image_size=16, preload=False, **kwargs)
        return {s.image_path.name for s in dm.test_dataset.samples if s.label == 0}

    assert test_normals() == test_normals(seed=3)  # the training seed does not move the test set
    assert test_normals() != test_normals(test_split_seed=1)
    assert len(test_normals(normal_test_split=0.5)) == 5


def test_mtd_train_list_decides_the_split(tmp_path: Path) -> None:
    write_mtd(tmp_path, n_free=6)
    free = sorted(p.name for p in (tmp_path / "MT_Free" / "Imgs").glob("*.jpg"))
    (tmp_path / "mtd_train_filenames.txt").write_text("# DifferNet-style list\n" + "\n".join(free[1:5]) + "\n\n")
    module = MagneticTileDataModule(str(tmp_path), image_size=16, train_list="mtd_train_filenames.txt")
    assert sorted(s.image_path.name for s in module.train_dataset.samples) == free[1:5]
    normals = {s.image_path.name for s in module.test_dataset.samples if s.label == 0}
    assert normals == {free[0], free[5]}
    split = module.describe()["normal_split"]
    assert (split["source"], split["train_list"], split["train_normals"], split["test_normals"]) == (
        "train_list",
        "mtd_train_filenames.txt",
        4,
        2,
    )


def test_ksdd2_labels_by_mask_and_leaves_out_training_defects(tmp_path: Path) -> None:
    manifest = write_ksdd2(tmp_path)
    module = KSDD2DataModule(str(tmp_path), image_size=32)
    train, test = module.train_dataset.samples, module.test_dataset.samples
    assert module.describe()["counts"] == {"train": {"total": 6, "good": 6}, "test": {"total": 6, "bad": 3, "good": 3}}
    written_train_defects = {p for p, e in manifest.items() if e.defect_type == "train_defect"}
    assert len(written_train_defects) == 2 and not written_train_defects & {s.image_path for s in train}
    assert module.describe()["ignored_train_anomalies"] == 2
    assert not any(s.image_path.stem.endswith("_GT") for s in train + test)
    check_against_manifest(train + test, manifest)
    check_mask_pixels(module, manifest)


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("data", list(RELEASE_CATEGORIES))
def test_category_all_sweeps_the_release_categories(data: str, tmp_path: Path) -> None:
    root = tmp_path / data
    WRITERS[data](root)
    (root / "notes").mkdir()  # a stray folder is no category
    cfg = compose_config([f"data={data}", f"data.root={root}"], tmp_path)
    assert cfg.data.category == RELEASE_CATEGORIES[data][0]
    found = sweep.benchmark_categories(cfg, [])
    assert found == RELEASE_CATEGORIES[data]
    expanded = sweep.expand_all_categories(["data.category=all"], lambda: found)
    # Hydra reads the expanded list back as strings: BTAD's 01 stays "01", never the number 1
    override = OverridesParser.create().parse_overrides(expanded)[0]
    values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    assert values == found


AAND_FOREGROUND = {
    "btad": {
        "default": {"method": "none"},
        "01": {"method": "threshold", "threshold": 50, "sigma": 1.28},
        "03": {"method": "threshold", "threshold": 50, "sigma": 2.56},
    },
    "mpdd": {"default": {"method": "grabcut"}},
    "mtd": {"default": {"method": "none"}},
    "ksdd2": {"default": {"method": "none"}},
}
RD_EXPERT_FOREGROUND = {
    "btad": {
        "default": {"method": "none"},
        "01": {"method": "grabcut", "iterations": 11},
        "03": {"method": "grabcut", "iterations": 11},
    },
    "mpdd": {"default": {"method": "grabcut", "iterations": 11}},
    "mtd": {"default": {"method": "none"}},
    "ksdd2": {"default": {"method": "none"}},
}


@pytest.mark.parametrize("data", list(RELEASE_CATEGORIES))
@pytest.mark.parametrize(("method", "tables"), [("aand", AAND_FOREGROUND), ("rd_expert", RD_EXPERT_FOREGROUND)])
def test_foreground_tables_are_pinned(method: str, tables: dict, data: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", f"data={data}"], tmp_path)
    assert OmegaConf.to_container(cfg.data, resolve=True)["foreground"] == tables[data]


def test_btad_foreground_applies_per_category(tmp_path: Path) -> None:
    table = AAND_FOREGROUND["btad"]
    specs = {c: BTADDataModule(str(tmp_path), c, foreground=table).foreground_spec for c in ("01", "02", "03")}
    assert specs == {"01": table["01"], "02": None, "03": table["03"]}


# ------------------------------------------------------------------------------------------------ bad input
def _break(data: str, case: str, root: Path) -> tuple[Path, str, list[str]]:
    """Write ``data``'s miniature under ``root`` and break it as ``case`` says: (data.root, data.category, the
    fragments the error message must hold)."""
    WRITERS[data](root)
    category = RELEASE_CATEGORIES[data][0]
    if case == "root":
        return root / "nowhere", category, [f"{root}/nowhere", "does not exist", "data.root"]
    if case == "category":
        wrong = {"btad": "04", "mpdd": "bottle", "mtd": "tile", "ksdd2": "kolektor"}[data]
        return root, wrong, [f"unknown {data} category '{wrong}'", ", ".join(RELEASE_CATEGORIES[data])]
    # (split folder, an image and the mask it leaves behind, a mask and the defect image it leaves without one)
    folder, image, orphan, mask, unmasked = {
        "btad": (
            "01/test",
            "01/test/ko/0001.bmp", "01/ground_truth/ko/0001.png",
            "01/ground_truth/ko/0002.png", "01/test/ko/0002.bmp",
        ),
        "mpdd": (
            "bracket_black/train/good",
            "bracket_black/test/hole/001.png", "bracket_black/ground_truth/hole/001_mask.png",
            "bracket_black/ground_truth/scratches/000_mask.png", "bracket_black/test/scratches/000.png",
        ),
        "mtd": (
            "MT_Crack/Imgs",
            "MT_Fray/Imgs/exp1_num_5303.jpg", "MT_Fray/Imgs/exp1_num_5303.png",
            "MT_Break/Imgs/exp2_num_5102.png", "MT_Break/Imgs/exp2_num_5102.jpg",
        ),
        "ksdd2": ("test", "train/10003.png", "train/10003_GT.png", "test/20001_GT.png", "test/20001.png"),
    }[data]  # fmt: skip
    if case == "split_folder":
        shutil.rmtree(root / folder)
        return root, category, [str(root / folder), "does not exist"]
    if case == "mask_without_image":
        (root / image).unlink()
        return root, category, [f"mask {root / orphan} has no image", str((root / image).parent)]
    assert case == "image_without_mask"
    (root / mask).unlink()
    return root, category, [f"defect image {root / unmasked} has no mask", str((root / mask).parent)]


CASES = ["root", "category", "split_folder", "mask_without_image", "image_without_mask"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("data", list(RELEASE_CATEGORIES))
def test_bad_input_is_refused_at_setup_naming_the_path(data: str, case: str, tmp_path: Path) -> None:
    root, category, fragments = _break(data, case, tmp_path / "data")
    with pytest.raises(DatasetError) as refused:
        DATA_MODULES[data](str(root), category).setup()
    for fragment in fragments:
        assert fragment in str(refused.value), (fragment, str(refused.value))


# Each case once, each benchmark at least once: every command costs ~2 s (composition, model build).
@pytest.mark.parametrize(
    ("data", "case"),
    [
        ("btad", "root"),
        ("mpdd", "category"),
        ("mtd", "split_folder"),
        ("ksdd2", "mask_without_image"),
        ("btad", "image_without_mask"),
    ],
)
def test_bad_input_stops_the_command_before_training(
    data: str, case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Through the command's entry point (kdad.run.main, with the composed config): one message, exit status 2."""
    root, category, fragments = _break(data, case, tmp_path / "data")
    cfg = compose_config([f"data={data}", f"data.root={root}", f"data.category={category}", *FAST], tmp_path)
    assert_command_refuses(cfg, capsys, fragments)


def test_ground_truth_folder_without_test_images_is_refused(tmp_path: Path) -> None:
    write_btad(tmp_path, categories=("02",))
    shutil.copytree(tmp_path / "02" / "ground_truth" / "ko", tmp_path / "02" / "ground_truth" / "scratch")
    module = BTADDataModule(str(tmp_path), "02")
    with pytest.raises(DatasetError, match=f"mask folder {tmp_path / '02/ground_truth/scratch'} has no test images"):
        module.setup()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One category of the embedded benchmark (MVTec layout, 64 px): the images the hand-built trees below reuse."""
    from kdad.data.embedded import ensure_synthetic_benchmark

    base = ensure_synthetic_benchmark(
        tmp_path_factory.mktemp("embedded"), ["weave"], image_size=64, n_train=6, n_test_good=2, n_test_per_defect=2
    )
    return base / "weave"


def _embedded_defects(embedded: Path) -> list[tuple[Path, Path]]:
    """(image, mask) of every generated defect image."""
    return [
        (image, embedded / "ground_truth" / folder.name / f"{image.stem}_mask.png")
        for folder in sorted(p for p in (embedded / "test").iterdir() if p.name != "good")
        for image in sorted(folder.glob("*.png"))
    ]


def _convert(source: Path, target: Path, mode: str | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(source)
    (image.convert(mode) if mode else image).save(target)  # the format follows the target's extension


def build_btad_01(embedded: Path, root: Path) -> Path:
    """BTAD category 01 as the docs describe it (bmp images, png masks, same stems, numbering per folder)."""
    category = root / "01"
    for i, image in enumerate(sorted((embedded / "train" / "good").glob("*.png"))):
        _convert(image, category / "train" / "ok" / f"{i:04d}.bmp")
    for i, image in enumerate(sorted((embedded / "test" / "good").glob("*.png"))):
        _convert(image, category / "test" / "ok" / f"{i:04d}.bmp")
    for i, (image, mask) in enumerate(_embedded_defects(embedded)):
        _convert(image, category / "test" / "ko" / f"{i:04d}.bmp")
        _convert(mask, category / "ground_truth" / "ko" / f"{i:04d}.png")
    return root


def build_magnetic_tile(embedded: Path, root: Path) -> Path:
    """The Magnetic Tile layout as the docs describe it: MT_<Type>/Imgs/exp<k>_num_<n>.jpg (grayscale) with the
    same-stem .png mask beside each, all zero in MT_Free; the generated defects dealt over the five defect folders."""
    normals = sorted((embedded / "train" / "good").glob("*.png")) + sorted((embedded / "test" / "good").glob("*.png"))
    for i, image in enumerate(normals):
        stem = f"exp{1 + i % 6}_num_{10 * i + 7}"
        _convert(image, root / "MT_Free" / "Imgs" / f"{stem}.jpg", "L")
        empty = Image.fromarray(np.zeros(Image.open(image).size[::-1], np.uint8))
        empty.save(root / "MT_Free" / "Imgs" / f"{stem}.png")
    for i, (image, mask) in enumerate(_embedded_defects(embedded)):
        folder = root / MTD_DEFECT_FOLDERS[i % len(MTD_DEFECT_FOLDERS)] / "Imgs"
        stem = f"exp{1 + i % 3}_num_{900 + i}"
        _convert(image, folder / f"{stem}.jpg", "L")
        _convert(mask, folder / f"{stem}.png")
    return root


def test_btad_tree_built_from_other_images_trains_from_the_command_line(embedded: Path, tmp_path: Path) -> None:
    root = build_btad_01(embedded, tmp_path / "btad")
    env = {
        **os.environ,
        "KDAD_RUNS_DIR": str(tmp_path / "runs"),
        "KDAD_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "kdad.run", "data=btad", f"data.root={root}", "data.category=01", *FAST]
    command.append("trainer.enable_progress_bar=false")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / "runs/default/btad/01/rd/seed0/metrics.json").read_text())
    data = saved["data"]
    assert (data["benchmark"], data["category"], data["extensions"]) == (
        "btad",
        "01",
        {"images": [".bmp"], "masks": [".png"]},
    )
    assert data["counts"]["test"] == {"total": 10, "good": 2, "ko": 8}
    assert data["counts"]["train"]["total"] + data["counts"]["calibration"]["total"] == 6
    assert "train/ok" in data["protocol"]["split"] and "ground_truth/ko" in data["protocol"]["masks"]
    assert 0.0 <= saved["metrics"]["pixel_auroc"] <= 1.0


def test_magnetic_tile_tree_built_from_other_images_trains(embedded: Path, tmp_path: Path) -> None:
    root = build_magnetic_tile(embedded, tmp_path / "mtd")
    cfg = compose_config(["data=mtd", f"data.root={root}", "data.category=magnetic_tile", *FAST], tmp_path)
    summary = run(cfg)
    assert 0.0 <= summary["metrics"]["pixel_auroc"] <= 1.0
    data = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())["data"]
    assert data["normal_split"]["normal_images"] == 8 and data["normal_split"]["test_normals"] == 2
    assert data["counts"]["test"] == {
        "total": 10,
        "good": 2,
        "blowhole": 2,
        "break": 2,
        "crack": 2,
        "fray": 1,
        "uneven": 1,
    }


@pytest.mark.parametrize("data", ["mpdd", "ksdd2"])
def test_miniature_trains_and_tests(data: str, tmp_path: Path) -> None:
    root = tmp_path / data
    WRITERS[data](root)
    category = RELEASE_CATEGORIES[data][0]
    cfg = compose_config([f"data={data}", f"data.root={root}", f"data.category={category}", *FAST], tmp_path)
    summary = run(cfg)
    assert 0.0 <= summary["metrics"]["pixel_auroc"] <= 1.0
    saved = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())["data"]
    assert saved["benchmark"] == data and "protocol" in saved
    if data == "ksdd2":
        assert saved["ignored_train_anomalies"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("data", ["btad", "mtd"])
def test_built_trees_train_with_every_data_setting_at_its_default(data: str, embedded: Path, tmp_path: Path) -> None:
    """No override beyond data, data.root and data.category (256 px): only the schedule and the logger are shortened."""
    build = {"btad": build_btad_01, "mtd": build_magnetic_tile}[data]
    root = build(embedded, tmp_path / data)
    category = RELEASE_CATEGORIES[data][0]
    cfg = compose_config(
        [f"data={data}", f"data.root={root}", f"data.category={category}", "trainer.max_epochs=1", "logger=none"],
        tmp_path,
    )
    assert cfg.data.image_size == 256
    assert 0.0 <= run(cfg)["metrics"]["image_auroc"] <= 1.0
