"""python -m kdad.predict (kdad.runner.predict): predictions of a finished run on new files of any size and mode.

One tiny run is trained per module (64 px, 1 epoch); the mixed folder (sizes, modes, formats, a corrupt file,
same-named files in different sub-folders) is predicted once by the real command line in a subprocess, and the
other tests reuse that output or predict in-process.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import compose_config
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict
from PIL import Image

from kdad.deploy.postprocess import Prediction
from kdad.errors import ConfigError
from kdad.runner.predict import (
    CSV_COLUMNS,
    PredictError,
    PredictionWriter,
    PredictSummary,
    Records,
    find_images,
    predict,
    predict_images,
)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")
TINY_RUN = [
    "data.image_size=64",
    "data.n_train=8",
    "data.n_test_good=4",
    "data.n_test_per_defect=2",
    "trainer.max_epochs=1",
    "logger=none",
]
CORRUPT = "broken/corrupt.png"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kdad.runner.train import run

    cfg = compose_config(TINY_RUN, tmp_path_factory.mktemp("train"))
    run(cfg, quiet=True)
    return Path(cfg.run_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A folder of every mode and format; returns it and {relative path: (width, height)} of the readable files."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def rgb(height: int, width: int) -> np.ndarray:
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)

    files = {
        "a.png": Image.fromarray(rgb(50, 70)),
        "sub/a.png": Image.fromarray(rgb(200, 300)),  # same name, other folder
        "sub/gray.PNG": Image.fromarray(rgb(64, 48)[..., 0]),
        "sub/rgba.png": Image.fromarray(np.dstack([rgb(40, 40), np.full((40, 40), 100, np.uint8)])),
        "deep/sixteen.png": Image.fromarray(rng.integers(0, 65536, (33, 45), dtype=np.uint16)),
        "photo.JPG": Image.fromarray(rgb(90, 60)),
        "scan.bmp": Image.fromarray(rgb(31, 17)),
        "scan.tiff": Image.fromarray(rgb(25, 80)),
    }
    for name, image in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    assert Image.open(folder / "deep/sixteen.png").mode == "I;16"
    (folder / "broken").mkdir()
    (folder / CORRUPT).write_bytes((folder / "a.png").read_bytes()[:60])  # truncated
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub/._a.png").write_bytes(b"macOS resource fork")  # hidden: skipped
    return folder, {name: image.size for name, image in files.items()}


def predict_cfg(**options: Any) -> DictConfig:
    """conf/predict.yaml composed like the command line, with ``options`` set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="predict")
    with open_dict(cfg):
        cfg.progress = False
        for key, value in options.items():
            cfg[key] = None if value is None else str(value) if isinstance(value, Path) else value
    return cfg


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def cli_output(run_dir: Path, images: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The real command on the mixed folder, from an empty working folder: (completed process, output, cwd)."""
    cwd = tmp_path_factory.mktemp("cwd")
    output = tmp_path_factory.mktemp("cli") / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kdad.predict",
            f"run_dir={run_dir}",
            f"input={images[0]}",
            f"output={output}",
            "batch_size=3",
            "workers=2",
        ],
        cwd=cwd,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, output, cwd


# ------------------------------------------------------------------------------------------------ torch backend
def test_cli_predicts_every_readable_file_and_lists_the_corrupt_one(cli_output: tuple, images: tuple) -> None:
    result, output, cwd = cli_output
    folder, sizes = images
    assert result.returncode == 1, result.stderr  # some files failed
    assert "Predicted 8 of 9 images with torch" in result.stdout and "1 failed" in result.stdout
    assert f"Failed: {folder / CORRUPT}" in result.stdout and "images/s" in result.stdout
    rows = {Path(row["path"]).relative_to(folder).as_posix(): row for row in read_rows(output / "predictions.csv")}
    assert set(rows) == {*sizes, CORRUPT}
    assert rows[CORRUPT]["error"] and rows[CORRUPT]["score"] == ""
    assert (output / "failed.txt").read_text().startswith(f"{folder / CORRUPT}\t")
    for name, (width, height) in sizes.items():
        row = rows[name]
        assert row["error"] == "" and row["decision"] in ("OK", "NOK"), name
        assert (int(row["width"]), int(row["height"])) == (width, height), name
        assert 0.0 <= float(row["normalized_score"]) <= 1.0
        assert (float(row["normalized_score"]) > 0.5) == (row["decision"] == "NOK")
        assert row["mask"] == f"masks/{name}.png" and row["overlay"] == f"overlays/{name}.png"
        mask, overlay = Image.open(output / row["mask"]), Image.open(output / row["overlay"])
        assert mask.size == overlay.size == (width, height), name
        assert mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert overlay.mode == "RGB"
    assert not list(cwd.iterdir())  # hydra.run.dir=., no .hydra/ and no log file


def test_torch_scores_follow_the_runs_own_preprocessing(run_dir: Path, cli_output: tuple) -> None:
    """The CSV's score is the model's on read_rgb -> resize_rgb -> the data layer's normalize, in one batch."""
    import torch

    from kdad.data.dataset import normalize
    from kdad.imaging import read_rgb, resize_rgb
    from kdad.runner.trained import load_trained_run

    trained = load_trained_run(run_dir=run_dir)
    rows = [row for row in read_rows(cli_output[1] / "predictions.csv") if not row["error"]]
    size, interpolation = trained.config.data.image_size, trained.config.data.interpolation
    batch = torch.stack([normalize(resize_rgb(read_rgb(row["path"]), size, interpolation)) for row in rows])
    with torch.inference_mode():
        scores = trained.module.model(batch).score.numpy()
    np.testing.assert_allclose([float(row["score"]) for row in rows], scores, rtol=1e-5, atol=1e-6)


def test_single_image_into_the_run_folder_and_a_glob(run_dir: Path, images: tuple, tmp_path: Path) -> None:
    folder, sizes = images
    single = predict(predict_cfg(run_dir=run_dir, input=folder / "sub/a.png"), quiet=True)
    assert (single.total, single.exit_code) == (1, 0)
    assert single.output.parent == run_dir / "predictions" and single.output.name.startswith("a_")  # the default
    (row,) = read_rows(single.csv)
    assert row["mask"] == "masks/a.png.png" and Image.open(single.output / row["mask"]).size == sizes["sub/a.png"]

    pattern = f"{folder}/**/*.png"  # recursive glob: relative paths below the glob's folder
    many = predict(predict_cfg(run_dir=run_dir, input=pattern, output=tmp_path / "glob", batch_size=2), quiet=True)
    rows = read_rows(tmp_path / "glob/predictions.csv")
    expected = sorted([*(name for name in sizes if name.endswith(".png")), CORRUPT])
    assert [Path(row["path"]).relative_to(folder).as_posix() for row in rows] == expected
    assert (many.exit_code, len(many.failed)) == (1, 1)
    assert (tmp_path / "glob/masks/sub/a.png.png").is_file() and (tmp_path / "glob/masks/a.png.png").is_file()


def test_run_without_thresholds_gives_scores_only(
    run_dir: Path, images: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import kdad.runner.trained as trained_module

    load = trained_module.load_trained_run
    monkeypatch.setattr(trained_module, "load_trained_run", lambda **kw: replace(load(**kw), thresholds=None))
    folder, _ = images
    with caplog.at_level(logging.WARNING, logger="kdad"):
        summary = predict(predict_cfg(run_dir=run_dir, input=folder / "sub", output=tmp_path / "old"), quiet=True)
    assert "no stored thresholds" in caplog.text
    rows = read_rows(tmp_path / "old/predictions.csv")
    assert len(rows) == 3 and summary.exit_code == 0 and summary.ok == summary.nok == 0
    assert all(row["score"] and not (row["decision"] or row["normalized_score"] or row["mask"]) for row in rows)
    assert not (tmp_path / "old/masks").exists()
    assert Image.open(tmp_path / "old" / rows[0]["overlay"]).size == (300, 200)  # coloured per image
    assert "3 scored (no thresholds)" in summary.report()


# ------------------------------------------------------------------------------------------------ exported backends
def test_onnx_backend_writes_the_same_csv_as_torch(run_dir: Path, images: tuple, cli_output: tuple) -> None:
    from kdad.deploy.export import export_run
    from kdad.runner.trained import load_trained_run

    export_run(load_trained_run(run_dir=run_dir), "onnx", check_images=2)
    output = cli_output[1].parent / "onnx"
    summary = predict(
        predict_cfg(run_dir=run_dir, input=images[0], output=output, backend="onnx", batch_size=4), quiet=True
    )
    assert summary.exit_code == 1 and summary.backend == "onnx"
    torch_rows, onnx_rows = read_rows(cli_output[1] / "predictions.csv"), read_rows(output / "predictions.csv")
    assert len(torch_rows) == len(onnx_rows) == 9
    for expected, got in zip(torch_rows, onnx_rows, strict=True):
        for column in ("score", "normalized_score"):
            if expected[column]:
                assert float(got[column]) == pytest.approx(float(expected[column]), rel=1e-4, abs=1e-5), column
        exact = ("path", "decision", "width", "height", "mask", "overlay")
        assert {key: got[key] for key in exact} == {key: expected[key] for key in exact}
        assert bool(got["error"]) == bool(expected["error"])
        if expected["mask"]:
            torch_mask = np.asarray(Image.open(cli_output[1] / expected["mask"]))
            onnx_mask = np.asarray(Image.open(output / got["mask"]))
            assert np.mean(torch_mask == onnx_mask) > 0.99  # pixels within float noise of the threshold may flip


def test_missing_export_tells_how_to_make_it(run_dir: Path, images: tuple) -> None:
    cfg = predict_cfg(run_dir=run_dir, input=images[0], backend="openvino")
    with pytest.raises(PredictError, match=r"python -m kdad.export run_dir=.* format=openvino"):
        predict(cfg, quiet=True)


# ------------------------------------------------------------------------------------------------ user errors
def test_input_without_images_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kdad.predict import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exit_info:
        main(predict_cfg(run_dir=tmp_path, input=tmp_path / "empty"))
    assert exit_info.value.code == 2
    assert f"kdad: error: no images found in input={tmp_path / 'empty'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"input": "x.png"}, PredictError, "run_dir=<run folder>"),
        ({"run_dir": "."}, PredictError, "input=<image"),
        ({"run_dir": ".", "input": "x.png", "backend": "tensorrt"}, ConfigError, "unknown backend 'tensorrt'"),
        ({"run_dir": ".", "input": "x.png", "batch_size": 0}, ConfigError, "batch_size must be a positive"),
        ({"run_dir": ".", "input": "/no/such/file.png"}, PredictError, "does not exist"),
    ],
)
def test_bad_options_are_user_errors(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        predict(predict_cfg(**options), quiet=True)


def test_find_images_recurses_ignores_case_and_hidden_files(images: tuple) -> None:
    folder, sizes = images
    found = find_images(str(folder))
    assert [image.relative.as_posix() for image in found] == sorted([*sizes, CORRUPT])
    assert find_images(str(folder), exclude=folder / "sub")[0].relative.as_posix() == "a.png"
    assert len(find_images(str(folder), exclude=folder / "sub")) == len(found) - 3


# ------------------------------------------------------------------------------------------------ interruption
class _StopAtSecondBatch:
    """A model that scores 1.0 per image and is interrupted (Ctrl-C) on its second batch."""

    name = "fake"
    records = Records(image={"value": 0.5, "score_min": 0.0, "score_max": 1.0}, pixel=None)

    def __init__(self) -> None:
        self.calls = 0

    def prepare(self, rgb: np.ndarray) -> None:
        return None

    def forward(self, rgbs: list, prepared: list) -> list:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return [
            lambda rgb=rgb: Prediction(1.0, 0.75, "NOK", np.zeros(rgb.shape[:2], np.float32), None, rgb.shape[:2])
            for rgb in rgbs
        ]


def test_interrupted_command_keeps_the_rows_already_predicted(images: tuple, tmp_path: Path) -> None:
    folder, _ = images
    readable = [image for image in find_images(str(folder)) if image.relative.as_posix() != CORRUPT]
    writer = PredictionWriter(tmp_path)
    summary = PredictSummary(output=tmp_path, backend="fake")
    with pytest.raises(KeyboardInterrupt):
        predict_images(readable, _StopAtSecondBatch(), writer, summary, batch_size=3, workers=2, progress=False)
    writer.close()
    rows = read_rows(tmp_path / "predictions.csv")
    assert [row["path"] for row in rows] == [str(image.path) for image in readable[:3]]
    assert all(row["decision"] == "NOK" and row["overlay"] for row in rows)
