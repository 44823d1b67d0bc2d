"""Unified (multi-class) training, issue 22: one model over several categories, tested and thresholded per category.

Tiny runs (64 px, 1 epoch, a few images) on an MVTec fixture tree and on the embedded benchmark, through the real
configs; per-category thresholds in scores.csv, the checkpoint, kdad.predict and kdad.export; the bad inputs.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_mvtec
from helpers import compose_config
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from kdad.data import MVTecDataModule, UnifiedDataModule, build_datamodule
from kdad.data.errors import DatasetError
from kdad.data.unified import BalancedCategorySampler, folder_name
from kdad.runner.compare import is_unified
from kdad.runner.predict import PredictError, predict
from kdad.runner.report import find_runs
from kdad.runner.train import run

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ("bottle", "cable", "grid")
SMALL = ["data.image_size=64", "trainer.max_epochs=1", "logger=csv", "data.batch_size=4", "data.eval_batch_size=8"]
# the embedded benchmark, a texture and an object (the object has a foreground rule for AAND and RD with Expert)
EMBEDDED = ["data=synthetic", "data.category=[weave,hexnut]", "data.unified=true", "data.n_train=6"]
EMBEDDED += ["data.n_test_good=2", "data.n_test_per_defect=1", "review_cases=0"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unified-mvtec")
    write_mvtec(root, CATEGORIES, n_train=8, n_test_good=3, n_per_defect=2)
    return root


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("unified-synthetic")


def _unified(root: Path, categories: str = "[grid,bottle,cable]") -> list[str]:
    return ["data=mvtec", f"data.root={root}", f"data.category={categories}", "data.unified=true"]


def _predict_cfg(run_dir: Path, inputs: str, output: Path, **options: object):
    cfg = OmegaConf.load(REPO / "conf/predict.yaml")
    for key in ("defaults", "hydra"):
        del cfg[key]
    cfg.merge_with({"run_dir": str(run_dir), "input": inputs, "output": str(output), "progress": False, **options})
    return cfg


# ------------------------------------------------------------------------------------------------ names and config
def test_run_folder_names_are_readable_and_deterministic(tmp_path: Path) -> None:
    assert folder_name(["grid", "bottle", "grid"], unified=True) == "unified-bottle+grid"
    assert folder_name("all", unified=True) == "unified-all"
    assert folder_name("bottle") == "bottle"
    long = [f"category_with_a_long_name_{i}" for i in range(6)]
    name = folder_name(long, unified=True)
    assert name.startswith("unified-6-categories-") and len(name) < 40
    assert folder_name(list(reversed(long)), unified=True) == name
    cfg = compose_config([*_unified(tmp_path), "method=rd"], tmp_path)
    assert cfg.run_dir == f"{tmp_path}/runs/default/mvtec/unified-bottle+cable+grid/rd/seed0"
    cfg = compose_config(["data=synthetic", "data.category=all", "data.unified=true"], tmp_path)
    assert cfg.run_dir.endswith("synthetic/unified-all/rd/seed0")


def test_compare_runner_recognises_unified_variants() -> None:
    assert is_unified(["method=rd", "data.unified=true"])
    assert not is_unified(["method=rd"]) and not is_unified(["data.unified=true", "data.unified=false"])
    spec = OmegaConf.load(REPO / "conf/compare/unified.yaml")
    assert {is_unified(list(v)) for v in spec.variants.values()} == {True, False}
    assert len(spec.categories) >= 4


# ------------------------------------------------------------------------------------------------ data
def test_unified_data_module_tags_every_sample_and_mixes_categories(tree: Path, tmp_path: Path) -> None:
    cfg = compose_config([*_unified(tree), *SMALL], tmp_path)
    datamodule = build_datamodule(cfg.data)
    assert isinstance(datamodule, UnifiedDataModule) and datamodule.categories == sorted(CATEGORIES)
    datamodule.setup()
    # calibration hold-out per category (threshold=normal_quantile): 8 training images -> 7 + 1 each
    assert len(datamodule.train_dataset) == 3 * 7 and len(datamodule.calibration_dataset) == 3
    assert len(datamodule.test_dataset) == 3 * (3 + 2 * 2)
    assert {s.category for s in datamodule.calibration_dataset.samples} == set(CATEGORIES)
    batch = next(iter(datamodule.train_dataloader()))
    assert len(set(batch["category"])) > 1  # batches mix categories
    described = datamodule.describe()
    assert described["categories"] == sorted(CATEGORIES) and described["unified"] is True
    assert described["counts"]["train"]["total"] == 21


def test_balanced_sampling_gives_every_category_the_same_share() -> None:
    categories = ["a"] * 30 + ["b"] * 6 + ["c"] * 3
    sampler = BalancedCategorySampler(categories, torch.Generator().manual_seed(0))
    first, second = list(sampler), list(sampler)
    assert len(first) == len(categories) and first != second  # each epoch draws anew
    counts = np.bincount([ord(categories[i]) - ord("a") for i in first])
    assert counts.tolist() == [13, 13, 13]
    again = list(BalancedCategorySampler(categories, torch.Generator().manual_seed(0)))
    assert again == first  # seeded


def test_per_category_foreground_reaches_the_synthesis(synthetic_root: Path, tmp_path: Path) -> None:
    """RD with Expert's foreground rule: GrabCut for the object, none for the texture; one batch carries both."""
    cfg = compose_config([*EMBEDDED, f"data.root={synthetic_root}", "method=rd_expert", *SMALL], tmp_path)
    datamodule = build_datamodule(cfg.data)
    datamodule.setup()
    assert datamodule.describe()["foreground"] == {"hexnut": {"method": "grabcut", "iterations": 11}, "weave": None}
    dataset = datamodule.train_dataset
    by_category = {s.category: i for i, s in enumerate(dataset.samples)}
    texture, hexnut = dataset[by_category["weave"]], dataset[by_category["hexnut"]]
    assert bool((texture["foreground"] == 1).all())  # the whole image: restricts nothing
    assert 0 < float(hexnut["foreground"].mean()) < 1
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["foreground"].shape[0] == batch["image"].shape[0]


# ------------------------------------------------------------------------------------------------ end to end
def test_unified_rd_run_reports_every_category_and_predict_uses_their_thresholds(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_config([*_unified(tree), *SMALL], tmp_path)
    run(cfg)
    run_dir = Path(cfg.run_dir)
    assert run_dir == tmp_path / "runs/default/mvtec/unified-bottle+cable+grid/rd/seed0"
    printed = capsys.readouterr().out
    for row in (*CATEGORIES, "**mean**"):
        assert f"| {row} |" in printed
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["variant"] == "rd unified" and saved["unified"] is True
    assert saved["data"]["categories"] == sorted(CATEGORIES) and saved["test_images"] == 21
    per_category = saved["per_category"]
    assert list(per_category) == sorted(CATEGORIES)
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "image_f1"):
        values = [per_category[c]["metrics"][key] for c in CATEGORIES]
        assert saved["metrics"][key] == pytest.approx(float(np.mean(values)))
        assert all(saved["metrics"][f"{c}/{key}"] == per_category[c]["metrics"][key] for c in CATEGORIES)
    assert set(saved["per_defect"]) == set(CATEGORIES)
    assert saved["thresholds_per_category"] is True
    thresholds = {c: per_category[c]["thresholds"]["image"]["value"] for c in CATEGORIES}
    assert all(per_category[c]["thresholds"]["image"]["n"] == 1 for c in CATEGORIES)  # its own held-out image

    # scores.csv: the category of every row, decided by its own category's threshold
    rows = list(csv.DictReader((run_dir / "scores.csv").open()))
    assert len(rows) == 21 and {r["category"] for r in rows} == set(CATEGORIES)
    for r in rows:
        assert r["decision"] == ("NOK" if float(r["score"]) > thresholds[r["category"]] else "OK")
    state = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert set(state["kdad"]["category_thresholds"]) == set(CATEGORIES) and "thresholds" not in state["kdad"]

    # results tables line up a unified run with per-category runs: a row per category
    results = find_runs([tmp_path / "runs"])
    assert sorted(r.category for r in results) == sorted(CATEGORIES) and {r.column for r in results} == {"rd unified"}

    # a finished unified run is not retrained (resumable and reusable like every run)
    assert run(cfg, quiet=True)["metrics"] == saved["metrics"]

    # kdad.predict: each image gets its category's decision, the category inferred from the path ...
    predicted = predict(_predict_cfg(run_dir, str(tree), tmp_path / "pred"), quiet=True)
    assert predicted.exit_code == 0 and predicted.total == 3 * (8 + 7 + 4)  # train, test, masks
    by_path = {r["image_path"]: r for r in rows}
    out = list(csv.DictReader((tmp_path / "pred/predictions.csv").open()))
    assert list(out[0])[:2] == ["path", "category"]
    tested = [r for r in out if r["path"] in by_path]
    assert len(tested) == 21
    for r in tested:
        assert r["category"] == by_path[r["path"]]["category"]
        assert r["decision"] == by_path[r["path"]]["decision"]
        assert float(r["score"]) == pytest.approx(float(by_path[r["path"]]["score"]), rel=1e-4)
    # ... or given: category= decides every input with that category's threshold
    forced = predict(_predict_cfg(run_dir, str(tree / "cable/test"), tmp_path / "forced", category="grid"), quiet=True)
    assert forced.exit_code == 0
    for r in csv.DictReader((tmp_path / "forced/predictions.csv").open()):
        assert r["category"] == "grid"
        assert r["decision"] == ("NOK" if float(r["score"]) > thresholds["grid"] else "OK")
    # an input below no category folder is refused before anything is predicted
    elsewhere = tmp_path / "shots"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes((tree / "bottle/test/good/000.png").read_bytes())
    with pytest.raises(PredictError, match="category=<name>"):
        predict(_predict_cfg(run_dir, str(elsewhere), tmp_path / "none"), quiet=True)
    with pytest.raises(PredictError, match="not one of the run's categories"):
        predict(_predict_cfg(run_dir, str(elsewhere), tmp_path / "none", category="screw"), quiet=True)

    # kdad.export: metadata.json holds the thresholds per category; the inferencer takes each image's category
    from kdad.deploy import load_inferencer
    from kdad.deploy.errors import MetadataError
    from kdad.deploy.export import export_run
    from kdad.imaging import read_rgb
    from kdad.runner.trained import load_trained_run

    trained = load_trained_run(run_dir)
    assert trained.categories == sorted(CATEGORIES) and trained.thresholds is None
    folder = export_run(trained, "onnx", check_images=2)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["thresholds"] is None and set(metadata["category_thresholds"]) == set(CATEGORIES)
    inferencer = load_inferencer(folder)
    picks = [r for r in rows if r["category"] in ("bottle", "grid")][:2] + [r for r in rows if r["category"] == "grid"][
        :2
    ]
    found = inferencer.predict_batch([read_rgb(r["image_path"]) for r in picks], [r["category"] for r in picks])
    assert [p.decision for p in found] == [r["decision"] for r in picks]
    with pytest.raises(MetadataError, match="no category given"):
        inferencer.predict_batch([read_rgb(picks[0]["image_path"])])


# The shared test path (kdad.methods.base) serves every method: the default suite runs one single-optimiser method,
# RD with Expert (several optimisers, per-category foreground masks in the synthesis) and AAND (its own module, two
# stages); the others are `slow` (make test-slow), 15-45 s each on 2 cores.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "method",
    [
        "rd",
        "rd_expert",
        "aand",
        pytest.param("stfpm", marks=SLOW),
        pytest.param("rdpp", marks=SLOW),
        pytest.param("rdpp_expert", marks=SLOW),
        pytest.param("dskd", marks=SLOW),
    ],
)
def test_every_method_trains_unified_on_the_embedded_benchmark(method: str, synthetic_root: Path, tmp_path: Path):
    stages = ["method.stage1_epochs=1", "method.stage2_epochs=1", "trainer.max_epochs=2"] if method == "aand" else []
    cfg = compose_config(
        [
            *EMBEDDED,
            f"data.root={synthetic_root}",
            f"method={method}",
            *SMALL,
            *stages,
            "data.unified_sampling=balanced",
        ],
        tmp_path,
    )
    summary = run(cfg, quiet=True)
    assert Path(cfg.run_dir).name == "seed0" and Path(cfg.run_dir).parts[-3] == "unified-hexnut+weave"
    assert list(summary["per_category"]) == ["hexnut", "weave"]
    for category in ("hexnut", "weave"):
        assert 0.0 <= summary["metrics"][f"{category}/image_auroc"] <= 1.0
        assert summary["per_category"][category]["thresholds"]["image"]["n"] >= 1


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_user_errors_with_the_fix(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"names only 'bottle'.*data.category=all"):
        run(compose_config([*_unified(tree, "bottle"), *SMALL], tmp_path), quiet=True)
    with pytest.raises(DatasetError, match=r"names only 'bottle'"):
        run(compose_config([*_unified(tree, "[bottle,bottle]"), *SMALL], tmp_path), quiet=True)
    with pytest.raises(DatasetError, match=r"only with data.unified=true.*-m data.category=bottle,cable"):
        run(compose_config(["data=mvtec", f"data.root={tree}", "data.category=[bottle,cable]", *SMALL], tmp_path))
    with pytest.raises(DatasetError, match=r"category 'screw'.*Categories found there: bottle, cable, grid"):
        run(compose_config([*_unified(tree, "[bottle,screw]"), *SMALL], tmp_path), quiet=True)
    # a constructor's error reaches the command line through Hydra's InstantiationException (kdad.runner.cli)
    with pytest.raises(InstantiationException, match="unknown synthetic category"):
        build_datamodule(
            compose_config(["data=synthetic", "data.category=[weave,nope]", "data.unified=true"], tmp_path).data
        )
    with pytest.raises(InstantiationException, match="data.unified_sampling"):
        build_datamodule(compose_config([*_unified(tree), "data.unified_sampling=often"], tmp_path).data)


class _PerCategorySize(MVTecDataModule):
    """A benchmark module that keeps another input size for one category: nothing one model can take."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        if self.category == "grid":
            self.image_size = 2 * self.image_size


def test_categories_at_sizes_the_resize_policy_cannot_reconcile_are_refused(tree: Path) -> None:
    module = UnifiedDataModule(_PerCategorySize, category=["bottle", "grid"], root=str(tree), image_size=32)
    with pytest.raises(DatasetError, match=r"do not come out at one size.*bottle: 32x32.*grid: 64x64"):
        module.setup()


def test_command_line_reports_bad_unified_input_with_exit_status_2(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "kdad.run", "data.unified=true", "data.category=weave", "logger=none"]
    env = {"PATH": "/usr/bin:/bin", "KDAD_RUNS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("kdad: error: data.unified=true trains one model")
