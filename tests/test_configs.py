"""Every config kdad ships composes: each experiment preset (and its method builds), each method with each benchmark,
each option of the other groups; and the pseudo-anomalies of every method x benchmark pair are pinned."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
from helpers import CONF_DIR, compose_config
from omegaconf import OmegaConf
from PIL import Image

from kdad.methods.base import AnomalyModule

CONF = Path(CONF_DIR)


def _options(group: str) -> list[str]:
    """The selectable configs of a group (``_base`` files are shared parts, not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in CONF.glob("experiment/**/*.yaml"))
METHODS = _options("method")
BENCHMARKS = _options("data")
# groups with plain options (hydra/launcher needs its plugins; method and data are covered pair by pair)
OTHER_GROUPS = ["callbacks", "checkpoint", "foreground", "logger", "paths", "synthesis", "teacher", "trainer"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paths.data_dir holding one DTD-like texture: the paper presets point their texture source at it, and a
    folder texture source refuses a missing folder when it is built."""
    root = tmp_path_factory.mktemp("data")
    (root / "dtd" / "images" / "banded").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(root / "dtd" / "images" / "banded" / "banded_0001.jpg")
    return root


def test_every_preset_is_found() -> None:
    assert {"paper/aand_mvtec", "paper/rd_mvtec", "paper/stfpm_mvtec", "paper/rd_expert_visa"} <= set(EXPERIMENTS)


@pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_preset_composes_and_builds(experiment: str, data_dir: Path, tmp_path: Path) -> None:
    """Cheap (no training, random teacher weights), but the method, the data module and the synthesizer are built
    exactly as a run of the preset builds them."""
    cfg = compose_config([f"experiment={experiment}", "teacher.weights=none", f"paths.data_dir={data_dir}"], tmp_path)
    if experiment.startswith("paper/"):  # paper/<method>_<benchmark> (CONTRIBUTING.md)
        assert cfg.method.name == experiment.removeprefix("paper/").rsplit("_", 1)[0]
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert isinstance(hydra.utils.instantiate(cfg.method), AnomalyModule)
    datamodule = hydra.utils.instantiate(cfg.data)
    assert datamodule.category == cfg.data.category


@pytest.mark.parametrize("data", BENCHMARKS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_composes_with_every_benchmark(method: str, data: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", f"data={data}", "trainer.max_epochs=10"], tmp_path)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["method"]["name"] == method and resolved["trainer"]["max_epochs"] == 10
    assert resolved["method"]["validation"] == resolved["checkpoint"]["validation"]  # conf/method/_base.yaml


@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds(method: str, tmp_path: Path) -> None:
    assert isinstance(hydra.utils.instantiate(compose_config([f"method={method}"], tmp_path).method), AnomalyModule)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in OTHER_GROUPS for o in _options(g)])
def test_every_option_of_the_other_groups_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True)


# ------------------------------------------------------------------------------------------------ pseudo-anomalies
# What each method trains on, per benchmark: the synthesizer's constructor arguments and the per-category
# foreground table handed to the data module. Captured from the configs before the synthesis group was split into
# recipes (conf/synthesis) and foreground masks per benchmark (conf/foreground); a change here changes training.
TEXTURES = {"_target_": "kdad.data.synthesis.make_texture_source", "root": None}
DRAEM_AAND = {
    "_target_": "kdad.data.synthesis.DraemSynthesizer",
    "texture_source": TEXTURES,
    "beta_range": [0.0, 0.8],
    "clean_probability": 0.2,
    "texture_augmenters": 3,
    "max_retries": 10,
}
DRAEM_RD_EXPERT = {
    "_target_": "kdad.data.synthesis.DraemSynthesizer",
    "texture_source": TEXTURES,
    "beta_range": [0.0, 0.8],
    "clean_probability": 0.0,
    "texture_augmenters": 0,
    "max_retries": 0,
    "min_mask_pixels": 0,
}
SIMPLEX = {
    "_target_": "kdad.data.synthesis.SimplexNoisePatch",
    "size_range": [10, 32],
    "amplitude": 0.2,
    "octaves": 6,
    "persistence": 0.6,
    "frequency": 32.0,
    "calibration": "opensimplex",
}

NONE = {"method": "none"}
GRABCUT_11 = {"method": "grabcut", "iterations": 11}


def _threshold(threshold: int, sigma: float, invert: bool = False) -> dict:
    return {"method": "threshold", "threshold": threshold, "sigma": sigma} | ({"invert": True} if invert else {})


AAND_FOREGROUND = {
    "synthetic": {
        "default": NONE,
        "hexnut": _threshold(50, 4),
        "tablet": _threshold(50, 4),
        "gelcap": {"method": "grabcut"},
        "bolt": {"method": "grabcut"},
    },
    "mvtec": {
        "default": NONE,
        "capsule": _threshold(150, 2.05, invert=True),
        "screw": _threshold(150, 2.0, invert=True),
        "zipper": _threshold(150, 2.0, invert=True),
        "hazelnut": _threshold(50, 2.0),
        "metal_nut": _threshold(50, 2.93),
        "pill": _threshold(50, 2.56),
        "toothbrush": _threshold(50, 2.0),
        "bottle": {"method": "disc", "radius": 0.45},
        "cable": {"method": "disc", "radius": 0.45},
    },
    "visa": {
        "default": NONE,
        **{c: _threshold(150, 1.6) for c in ("candle", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2")},
        "pcb1": _threshold(150, 1.6),
        "pcb2": _threshold(100, 1.6),
        "pcb3": _threshold(100, 1.6),
        "pipe_fryum": _threshold(100, 1.6),
        "pcb4": _threshold(50, 1.6),
        "capsules": _threshold(100, 1.6, invert=True),
    },
    "mvtec3d": {
        "default": _threshold(50, 2.5),
        "foam": {"method": "rect", "fraction": [0.7, 0.7]},
        "tire": {"method": "rect", "fraction": [0.7, 0.7]},
    },
    "folder": {"default": NONE},
}
RD_EXPERT_FOREGROUND = {
    "synthetic": {"default": NONE, **{c: GRABCUT_11 for c in ("hexnut", "tablet", "gelcap", "bolt")}},
    "mvtec": {
        "default": NONE,
        **{c: GRABCUT_11 for c in ("bottle", "cable", "hazelnut", "metal_nut", "pill", "toothbrush", "zipper")},
        "capsule": {"method": "otsu", "sigma": 0, "invert": True},
        "screw": {"method": "otsu", "sigma": 0, "invert": True},
    },
    "visa": {"default": GRABCUT_11},
    "mvtec3d": {"default": GRABCUT_11},
    "folder": {"default": NONE},
}
NO_FOREGROUND = dict.fromkeys(AAND_FOREGROUND)
# method -> (synthesizer arguments, foreground table per benchmark)
PSEUDO_ANOMALIES = {
    "rd": (None, NO_FOREGROUND),
    "stfpm": (None, NO_FOREGROUND),
    "dskd": (None, NO_FOREGROUND),
    "rdpp": (SIMPLEX, NO_FOREGROUND),
    "rd_expert": (DRAEM_RD_EXPERT, RD_EXPERT_FOREGROUND),
    "rdpp_expert": (DRAEM_RD_EXPERT, RD_EXPERT_FOREGROUND),
    "aand": (DRAEM_AAND, AAND_FOREGROUND),
}


@pytest.mark.parametrize("data", list(AAND_FOREGROUND))
@pytest.mark.parametrize("method", list(PSEUDO_ANOMALIES))
def test_pseudo_anomalies_of_every_method_and_benchmark_are_pinned(method: str, data: str, tmp_path: Path) -> None:
    synthesizer, foreground = PSEUDO_ANOMALIES[method][0], PSEUDO_ANOMALIES[method][1][data]
    cfg = compose_config([f"method={method}", f"data={data}"], tmp_path)
    resolved = OmegaConf.to_container(cfg.data, resolve=True)
    assert resolved["train_synthesis"] == synthesizer
    assert resolved["foreground"] == foreground
    datamodule = hydra.utils.instantiate(cfg.data)
    built = datamodule.train_synthesis
    expected_class = synthesizer["_target_"].rpartition(".")[2] if synthesizer else None
    assert (type(built).__name__ if built is not None else None) == expected_class
    table = OmegaConf.to_container(OmegaConf.create(datamodule.foreground_by_category))
    assert table == (foreground or {})
