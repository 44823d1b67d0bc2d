"""MVTec LOCO AD, MVTec AD 2 and Real-IAD: finders over each release's layout (merged LOCO region masks, AD 2's public
test set, Real-IAD's JSON split files and camera views), the evaluation groups they declare (LOCO's logical and
structural anomalies, Real-IAD's samples), category sweeps, foreground tables, bad input through the command's entry
point, and one tiny run of each benchmark -- on trees written by tests/fixtures.py in each release's layout."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from fixtures import LOCO_TYPES, second_region, write_mask, write_mvtec_ad2, write_mvtec_loco, write_realiad
from helpers import assert_command_refuses, compose_config
from PIL import Image

from kdad.data import (
    MVTEC_AD2_CATEGORIES,
    MVTEC_LOCO_CATEGORIES,
    REALIAD_CATEGORIES,
    DatasetError,
    MVTecAD2DataModule,
    MVTecLOCODataModule,
    RealIADDataModule,
)
from kdad.methods.base import AnomalyModule, AnomalyOutput, unit_metrics
from kdad.metrics import image_auroc, max_per_unit
from kdad.records import TestRecord as Record  # not a test class
from kdad.runner import sweep

CONF = Path(__file__).resolve().parents[1] / "conf"
FAST = ["method=rd", "trainer.max_epochs=1", "data.image_size=64", "data.batch_size=4", "logger=none"]
FAST += ["review_cases=0"]
OFFICIAL = {"mvtec_loco": MVTEC_LOCO_CATEGORIES, "mvtec_ad2": MVTEC_AD2_CATEGORIES, "realiad": REALIAD_CATEGORIES}
CATEGORY = {"mvtec_loco": "breakfast_box", "mvtec_ad2": "can", "realiad": "audiojack"}
WRITERS = {"mvtec_loco": write_mvtec_loco, "mvtec_ad2": write_mvtec_ad2, "realiad": write_realiad}


# ------------------------------------------------------------------------------------------------ MVTec LOCO AD
def test_loco_reads_splits_and_merges_every_region_mask(tmp_path: Path) -> None:
    manifest = write_mvtec_loco(tmp_path, "juice_bottle")
    module = MVTecLOCODataModule(str(tmp_path), "juice_bottle", image_size=32, val_source="train_split")
    assert module.describe()["counts"] == {
        "train": {"total": 4, "good": 4},
        "validation": {"total": 2, "good": 2},  # the shipped validation/good, training set left whole
        "test": {"total": 6, "good": 2, "logical_anomalies": 2, "structural_anomalies": 2},
    }
    assert [s.image_path.parts[-3] for s in module.val_dataset.samples] == ["validation", "validation"]
    test = module.test_dataset
    for index, sample in enumerate(test.samples):
        expected = manifest[sample.image_path]
        assert (sample.label, sample.defect_type) == (expected.label, expected.defect_type)
        mask = test.load_mask(index)
        if sample.label == 0:
            assert sample.mask_files == () and mask.sum() == 0
            continue
        folder = tmp_path / "juice_bottle" / "ground_truth" / sample.defect_type / sample.image_path.stem
        assert sample.mask_files == tuple(sorted(folder.iterdir()))  # every file of the image's mask folder
        assert set(np.unique(mask)) == {0, 1}  # pixel values 255, 254, ... binarised
        scale_x, scale_y = 32 / 64, 32 / 48
        regions = [expected.box] if len(sample.mask_files) == 1 else [_first_box(sample), second_region()]
        for left, top, right, bottom in regions:  # the union: each region is in the one mask
            assert mask[
                int(top * scale_y) + 1 : int(bottom * scale_y) - 1, int(left * scale_x) + 1 : int(right * scale_x) - 1
            ].all()
    assert sum(len(s.mask_files) == 2 for s in test.samples) == 2


def _first_box(sample) -> tuple[int, int, int, int]:
    """The region of a LOCO fixture mask file, read back from the file."""
    ys, xs = np.nonzero(np.asarray(Image.open(sample.mask_files[0])))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_loco_masks_keep_their_region_values_and_merge_before_resizing(tmp_path: Path) -> None:
    write_mvtec_loco(tmp_path)
    values = {
        int(v) for p in (tmp_path / "breakfast_box" / "ground_truth").rglob("*.png") for v in np.unique(Image.open(p))
    }
    assert values - {0} and not values - {0} <= {255}  # as released: the defects' pixel values, not only 255
    module = MVTecLOCODataModule(str(tmp_path), "breakfast_box", image_size=16, mask_resize="bilinear_threshold")
    for index, sample in enumerate(module.test_dataset.samples):
        if len(sample.mask_files) == 2:
            union = np.zeros((48, 64), bool)
            for path in sample.mask_files:
                union |= np.asarray(Image.open(path)) > 0
            resized = Image.fromarray(union.astype(np.uint8) * 255).resize((16, 16), Image.Resampling.BILINEAR)
            assert (module.test_dataset.load_mask(index) == (np.asarray(resized) >= 128)).all()


def test_loco_cached_merged_mask_follows_each_of_its_files(tmp_path: Path) -> None:
    write_mvtec_loco(tmp_path / "data")
    cache = tmp_path / "cache"

    def merged() -> np.ndarray:
        module = MVTecLOCODataModule(str(tmp_path / "data"), "breakfast_box", image_size=16, cache_dir=str(cache))
        index = next(i for i, s in enumerate(module.test_dataset.samples) if len(s.mask_files) == 2)
        return module.test_dataset.load_mask(index), module.test_dataset.samples[index]

    before, sample = merged()
    write_mask(sample.mask_files[1], (0, 0, 8, 8), value=254)  # the second region file moves: a new merged mask
    os.utime(sample.mask_files[1], ns=(1, 1))
    after, _ = merged()
    assert after[0, 0] == 1 and before[0, 0] == 0


def test_loco_declares_its_groups_and_protocol(tmp_path: Path) -> None:
    write_mvtec_loco(tmp_path)
    module = MVTecLOCODataModule(str(tmp_path), "breakfast_box", image_size=16)
    assert module.defect_groups == {"logical": ("logical_anomalies",), "structural": ("structural_anomalies",)}
    protocol = module.describe()["protocol"]
    assert protocol["groups"]["logical"] == "test/good + test/logical_anomalies" and "sPRO" in protocol["not_computed"]


class _Brightness(torch.nn.Module):
    """Scores an image by its brightest pixel: the fixtures' defects are bright boxes on darker noise."""

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        maps = images.mean(1)
        return AnomalyOutput(maps.amax((1, 2)), maps)


def _test(datamodule) -> AnomalyModule:
    module = AnomalyModule(_Brightness(), optimizer=torch.optim.Adam)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return module


def test_loco_groups_are_each_evaluated_on_good_plus_their_anomalies(tmp_path: Path) -> None:
    write_mvtec_loco(tmp_path)
    # Logical anomalies that look locally normal (no bright box): undetectable by brightness, unlike structural ones.
    for image in (tmp_path / "breakfast_box" / "test" / "logical_anomalies").iterdir():
        Image.fromarray(np.full((48, 64, 3), 30, np.uint8)).save(image)
    module = _test(MVTecLOCODataModule(str(tmp_path), "breakfast_box", image_size=32))
    metrics = module.test_metrics
    records = module.test_records

    def auroc(types: tuple[str, ...]) -> float:
        chosen = [r for r in records if r.label == 0 or r.defect_type in types]
        return image_auroc([r.score for r in chosen], [r.label for r in chosen])

    assert metrics["structural/image_auroc"] == auroc(("structural_anomalies",)) == 1.0
    assert metrics["logical/image_auroc"] == auroc(("logical_anomalies",)) == 0.0
    assert metrics["image_auroc"] == auroc(LOCO_TYPES) == 0.5
    assert {"logical/pixel_aupro", "structural/pixel_auroc"} <= set(metrics)
    assert module.test_images_seen == 6  # the groups do not count images twice


# ------------------------------------------------------------------------------------------------ MVTec AD 2
def test_ad2_reads_test_public_and_leaves_the_private_sets_out(tmp_path: Path) -> None:
    manifest = write_mvtec_ad2(tmp_path, "walnuts")
    module = MVTecAD2DataModule(str(tmp_path), "walnuts", image_size=16, val_source="train_split")
    assert module.describe()["counts"] == {
        "train": {"total": 4, "good": 4},
        "validation": {"total": 2, "good": 2},
        "test": {"total": 5, "bad": 3, "good": 2},
    }
    samples = module.test_dataset.samples
    assert all(s.image_path.parts[-3] == "test_public" for s in samples)
    for sample in samples:
        expected = manifest[sample.image_path]
        assert (sample.label, sample.defect_type) == (expected.label, expected.defect_type)
        assert (sample.mask_path.name if sample.mask_path else None) == expected.mask_name
    assert "test_private" in module.describe()["protocol"]["test"]


@pytest.mark.parametrize("split", ["test_private", "test_private_mixed", "test"])
def test_ad2_unlabelled_test_sets_are_refused_with_the_predict_command(tmp_path: Path, split: str) -> None:
    write_mvtec_ad2(tmp_path)
    with pytest.raises(DatasetError) as refused:
        MVTecAD2DataModule(str(tmp_path), "can", test_split=split)
    if split != "test":
        assert "no labels" in str(refused.value) and "kdad.predict" in str(refused.value)
        assert f"input={tmp_path / 'can' / split}" in str(refused.value)


# ------------------------------------------------------------------------------------------------ Real-IAD
def test_realiad_reads_the_json_split_with_its_views(tmp_path: Path) -> None:
    manifest = write_realiad(tmp_path, ("audiojack", "pcb"))
    assert RealIADDataModule.available_categories(tmp_path) == ["audiojack", "pcb"]
    module = RealIADDataModule(str(tmp_path), "pcb", image_size=16)
    described = module.describe()
    assert described["counts"] == {
        "train": {"total": 10, "good": 10},
        "test": {"total": 15, "AK": 4, "HS": 4, "good": 7},  # 5 OK views + the 2 NG views without a mask
    }
    assert described["split_file"] == str(tmp_path / "realiad_jsons" / "pcb.json") and described["test_samples"] == 3
    for sample in module.train_dataset.samples + module.test_dataset.samples:
        expected = manifest[sample.image_path]
        assert "pcb" in sample.image_path.parts and sample.image_path.suffix == ".jpg"
        assert (sample.label, sample.defect_type) == (expected.label, expected.defect_type)
        assert (sample.mask_path.name if sample.mask_path else None) == expected.mask_name
        if sample.mask_path is not None:
            assert sample.mask_path.parent == sample.image_path.parent  # the mask lies next to its view
    units = module.test_units()
    assert sorted(set(units.values())) == ["NG/AK/S0005", "NG/HS/S0004", "OK/S0003"]
    assert sum(unit == "NG/HS/S0004" for unit in units.values()) == 5  # the five views of one sample


@pytest.mark.parametrize("layout", ["nested", "single_view"])
def test_realiad_json_folder_is_found_or_set(tmp_path: Path, layout: str) -> None:
    folder = {"nested": "realiad_jsons/realiad_jsons", "single_view": "realiad_jsons_sv"}[layout]
    write_realiad(tmp_path, json_dir=folder, views=1 if layout == "single_view" else 5)
    settings = {"json_dir": folder} if layout == "single_view" else {}
    module = RealIADDataModule(str(tmp_path), "audiojack", image_size=16, **settings)
    assert module.describe()["split_file"] == str(tmp_path / folder / "audiojack.json")
    if layout == "single_view":
        assert len(module.test_dataset) == len(set(module.test_units().values()))


def test_realiad_fuiad_training_anomalies_are_trained_on_and_counted(tmp_path: Path) -> None:
    write_realiad(tmp_path)
    split_file = tmp_path / "realiad_jsons" / "audiojack.json"
    data = json.loads(split_file.read_text())
    data["train"].append(next(r for r in data["test"] if r["mask_path"]))  # a FUIAD list's noisy training sample
    (tmp_path / "realiad_jsons_fuiad_0.1").mkdir()
    (tmp_path / "realiad_jsons_fuiad_0.1" / "audiojack.json").write_text(json.dumps(data))
    module = RealIADDataModule(str(tmp_path), "audiojack", image_size=16, json_dir="realiad_jsons_fuiad_0.1")
    train = module.train_dataset.samples
    assert module.describe()["counts"]["train"] == {"total": 11, "HS": 1, "good": 10}
    assert all(s.mask_path is None for s in train)


def test_samples_score_their_most_anomalous_view() -> None:
    scores, labels = max_per_unit([0.1, 0.9, 0.2, 0.3, 0.4], [0, 0, 1, 0, 1], ["a", "a", "b", "b", "c"])
    assert scores.tolist() == [0.9, 0.3, 0.4] and labels.tolist() == [False, True, True]
    records = [Record(str(i), "x", label, score) for i, (label, score) in enumerate([(0, 0.5), (1, 0.1), (1, 0.9)])]
    assert unit_metrics(records, {"1": "s", "2": "s"})["sample/image_auroc"] == 1.0  # views 1, 2: one sample
    assert unit_metrics(records, {})["sample/image_auroc"] == 0.5  # every view its own sample


def test_realiad_sample_metrics_differ_from_view_metrics(tmp_path: Path) -> None:
    write_realiad(tmp_path)
    # In each NG sample only the first view shows the defect brightly: per view some anomalies are missed, per sample
    # none (a sample is as anomalous as its most anomalous view).
    for view in (tmp_path / "realiad_1024" / "audiojack" / "NG").rglob("*_C[2-4]_*.jpg"):
        Image.fromarray(np.full((48, 64, 3), 30, np.uint8)).save(view)
    module = _test(RealIADDataModule(str(tmp_path), "audiojack", image_size=32))
    assert module.test_metrics["sample/image_auroc"] == 1.0
    assert module.test_metrics["image_auroc"] < 0.6
    assert "sample/pixel_auroc" not in module.test_metrics  # pixel metrics stay per view


# ------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("data", list(OFFICIAL))
def test_category_all_sweeps_the_release_categories(data: str, tmp_path: Path) -> None:
    root = tmp_path / data
    for category in OFFICIAL[data]:  # the folders the finders list categories by, nothing else
        folder = root / "realiad_1024" / category / "OK" if data == "realiad" else root / category / "train" / "good"
        folder.mkdir(parents=True)
    (root / "not_a_category" / "train" / "good").mkdir(parents=True)
    cfg = compose_config([f"data={data}", f"data.root={root}"], tmp_path)
    assert sweep.benchmark_categories(cfg, []) == sorted(OFFICIAL[data])
    comment = re.search(r"# Categories \(.*?\): (.*?)\ndefaults", (CONF / "data" / f"{data}.yaml").read_text(), re.S)
    assert comment.group(1).replace("#", "").split() == sorted(OFFICIAL[data])  # the config lists the same


@pytest.mark.parametrize(
    ("method", "data", "category", "expected"),
    [
        ("rd_expert", "mvtec_loco", "pushpins", None),
        ("rd_expert", "mvtec_loco", "screw_bag", {"method": "grabcut", "iterations": 11}),
        ("aand", "mvtec_loco", "juice_bottle", {"method": "grabcut"}),
        ("aand", "mvtec_ad2", "vial", None),
        ("rd_expert", "realiad", "pcb", {"method": "grabcut", "iterations": 11}),
        ("aand", "realiad", "toy", {"method": "grabcut"}),
        ("rd", "realiad", "toy", None),  # no pseudo-anomalies, no foreground
    ],
)
def test_foreground_tables_give_each_category_its_mask(method: str, data: str, category: str, expected, tmp_path):
    cfg = compose_config([f"method={method}", f"data={data}", f"data.category={category}"], tmp_path)
    import hydra

    assert hydra.utils.instantiate(cfg.data).foreground_spec == expected


# ------------------------------------------------------------------------------------------------ command line
def _break(data: str, case: str, root: Path) -> tuple[list[str], list[str]]:
    """Write the miniature, break it as ``case`` says; (overrides, fragments the error message must hold)."""
    WRITERS[data](root)
    overrides = [f"data={data}", f"data.root={root}", f"data.category={CATEGORY[data]}"]
    if case == "root":
        return [*overrides[:1], f"data.root={root / 'nowhere'}", overrides[2]], [
            str(root / "nowhere"),
            "does not exist",
        ]
    if case == "category":
        return [*overrides[:2], "data.category=bottle"], ["unknown", "'bottle'", CATEGORY[data]]
    if data == "mvtec_loco":
        cat = root / "breakfast_box"
        if case == "split_folder":
            shutil.rmtree(cat / "ground_truth")
            return overrides, [str(cat / "ground_truth"), "does not exist"]
        (cat / "test" / "structural_anomalies" / "001.png").unlink()
        return overrides, [f"masks {cat / 'ground_truth' / 'structural_anomalies' / '001'} have no image"]
    if data == "mvtec_ad2":
        cat = root / "can"
        if case == "split_folder":
            shutil.rmtree(cat / "test_public")
            return overrides, [str(cat / "test_public"), "does not exist"]
        (cat / "test_public" / "bad" / "001_overexposed.png").unlink()
        mask = cat / "test_public" / "ground_truth" / "bad" / "001_overexposed_mask.png"
        return overrides, [f"mask {mask} has no image"]
    base = root / "realiad_1024" / "audiojack"
    if case == "split_folder":
        shutil.rmtree(root / "realiad_jsons")
        return overrides, [str(root / "realiad_jsons" / "audiojack.json"), "does not exist", "data.json_dir"]
    image = next(base.rglob("*NG_AK_C1_*.jpg"))
    image.unlink()
    return overrides, [f"mask {image.with_suffix('.png')} has no image", str(image)]


@pytest.mark.parametrize("case", ["root", "category", "split_folder", "mask_without_image"])
@pytest.mark.parametrize("data", list(OFFICIAL))
def test_bad_input_stops_the_command_before_training(
    data: str, case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Through the command's entry point (kdad.run.main, with the composed config): one message, exit status 2."""
    overrides, fragments = _break(data, case, tmp_path / "data")
    assert_command_refuses(compose_config([*overrides, *FAST], tmp_path), capsys, fragments)


def test_realiad_root_at_the_image_folder_gets_a_hint(tmp_path: Path) -> None:
    write_realiad(tmp_path)
    with pytest.raises(DatasetError, match="set data.root to the Real-IAD folder"):
        RealIADDataModule(str(tmp_path / "realiad_1024"), "audiojack").setup()


@pytest.mark.parametrize("data", list(OFFICIAL))
def test_miniature_trains_and_tests_from_the_command(data: str, tmp_path: Path) -> None:
    from kdad.run import main

    WRITERS[data](tmp_path / data)
    cfg = compose_config(
        [f"data={data}", f"data.root={tmp_path / data}", f"data.category={CATEGORY[data]}", *FAST], tmp_path
    )
    main(cfg)
    saved = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    metrics, described = saved["metrics"], saved["data"]
    assert described["benchmark"] == data and "protocol" in described
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["pixel_auroc"] <= 1.0
    groups = {"mvtec_loco": {"logical", "structural"}, "mvtec_ad2": set(), "realiad": {"sample"}}[data]
    assert {k.split("/")[0] for k in metrics if "/" in k} == groups
    rows = (Path(cfg.run_dir) / "scores.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == sum(v for k, v in described["counts"]["test"].items() if k != "total")
