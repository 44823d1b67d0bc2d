"""Exports (kdad.deploy.export), run folders as models (kdad.runner.trained) and checkpoint loading with weights_only.

One real RD training of one step (64 px, tiny MVTec tree) goes the whole way: run folder -> load_trained_run ->
ONNX / OpenVINO / TorchScript -> metadata.json -> kdad.deploy's inferencer. Every other method is exported from a
module built from its real config without training (random students are as good as trained ones for parity), with
ONNX parity against kdad's torch eval path.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from fixtures import write_mvtec
from helpers import compose_config

from kdad.deploy import Metadata, MetadataError, load_inferencer
from kdad.deploy.export import ExportError, export_run
from kdad.imaging import read_rgb
from kdad.metrics.thresholds import Thresholds, manual_threshold
from kdad.runner.train import run
from kdad.runner.trained import TrainedRun, TrainedRunError, load_trained_run

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.image_size=64", "logger=csv", "review_cases=0"]
METHODS = ("rd", "stfpm", "rdpp", "dskd", "rd_expert", "rdpp_expert", "aand")


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    write_mvtec(root, ("bottle",), n_train=8, n_test_good=2, n_per_defect=2)
    return root


def _data(root: Path) -> list[str]:
    return ["data=mvtec", f"data.root={root}", "data.category=bottle"]


@pytest.fixture(scope="module")
def rd_run(mvtec_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished RD run folder: one training step, tested, thresholds stored."""
    tmp = tmp_path_factory.mktemp("rd_run")
    cfg = compose_config([*_data(mvtec_root), *SMALL, "trainer.max_steps=1", "data.batch_size=4"], tmp)
    run(cfg, quiet=True)
    return Path(cfg.run_dir)


@pytest.fixture(scope="module")
def trained(rd_run: Path) -> TrainedRun:
    return load_trained_run(rd_run)


def _test_images(root: Path, count: int = 3) -> list[Path]:
    return sorted((root / "bottle" / "test").rglob("*.png"))[:count]


# ------------------------------------------------------------------------------------------ load_trained_run
def test_trained_run_holds_the_tested_checkpoint_and_thresholds(rd_run: Path, trained: TrainedRun) -> None:
    metrics = json.loads((rd_run / "metrics.json").read_text())
    assert trained.run_dir == rd_run and trained.checkpoint == rd_run / "checkpoints" / "last.ckpt"
    assert trained.config.method.name == "rd" and not trained.module.training
    # A checkpoint kdad's training wrote, full resume state included, is plain data: weights_only=True loads it.
    state = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    assert {"optimizer_states", "loops", "callbacks", "state_dict", "kdad"} <= set(state)
    loaded = trained.module.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state["state_dict"].items())
    assert any(key.startswith("model.teacher.") for key in loaded)  # the frozen teacher, rebuilt
    if metrics.get("thresholds") is None:
        assert trained.thresholds is None
    else:
        assert trained.thresholds.to_dict() == metrics["thresholds"]
    by_checkpoint = load_trained_run(ckpt_path=trained.checkpoint)  # run folder = the checkpoint's ../..
    assert by_checkpoint.run_dir == rd_run and by_checkpoint.checkpoint == trained.checkpoint


def test_thresholds_fall_back_to_metrics_json_of_the_same_checkpoint(rd_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(rd_run, copy, ignore=shutil.ignore_patterns("exported"))
    last = copy / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    state["kdad"].pop("thresholds", None)
    torch.save(state, last)
    metrics = json.loads((copy / "metrics.json").read_text())
    record = manual_threshold(0.5, score_min=0.1, score_max=0.9)
    metrics["thresholds"] = Thresholds(image=record).to_dict()
    (copy / "metrics.json").write_text(json.dumps(metrics))
    assert load_trained_run(copy).thresholds == Thresholds(image=record)
    # Another checkpoint than the tested one: metrics.json's thresholds belong to other weights.
    other = copy / "checkpoints" / "epoch0.ckpt"
    shutil.copy(last, other)
    assert load_trained_run(copy, ckpt_path=other).thresholds is None


def test_missing_run_folder_config_and_checkpoint_are_named(rd_run: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainedRunError, match="run folder .*nowhere does not exist"):
        load_trained_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainedRunError, match=r"empty/config_resolved.yaml not found"):
        load_trained_run(tmp_path / "empty")
    copy = tmp_path / "run"
    shutil.copytree(rd_run, copy, ignore=shutil.ignore_patterns("exported", "checkpoints"))
    with pytest.raises(TrainedRunError, match=r"last.ckpt not found"):
        load_trained_run(copy)
    with pytest.raises(TrainedRunError, match=r"other.ckpt does not exist"):
        load_trained_run(copy, ckpt_path=copy / "other.ckpt")


def test_truncated_and_non_checkpoint_files_are_refused(trained: TrainedRun, tmp_path: Path) -> None:
    data = trained.checkpoint.read_bytes()
    files = {"truncated.ckpt": data[: len(data) // 2], "text.ckpt": b"not a checkpoint\n", "empty.ckpt": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(TrainedRunError, match=rf"cannot load {tmp_path / name}: not a checkpoint"):
            load_trained_run(trained.run_dir, ckpt_path=tmp_path / name)
    torch.save({"weights": torch.ones(2)}, tmp_path / "plain.ckpt")
    with pytest.raises(TrainedRunError, match=rf"{tmp_path / 'plain.ckpt'} is not a Lightning checkpoint"):
        load_trained_run(trained.run_dir, ckpt_path=tmp_path / "plain.ckpt")


def test_checkpoints_of_another_method_teacher_or_model_are_refused(
    trained: TrainedRun, mvtec_root: Path, tmp_path: Path
) -> None:
    stfpm = hydra.utils.instantiate(compose_config(["method=stfpm", *SMALL], tmp_path).method)
    checkpoint = {"state_dict": stfpm.state_dict()}
    stfpm.on_save_checkpoint(checkpoint)  # what Lightning's checkpoint holds: frozen teacher out, kdad block in
    torch.save(checkpoint, tmp_path / "stfpm.ckpt")
    with pytest.raises(TrainedRunError, match=r"stfpm.ckpt does not fit .*method 'stfpm', not 'rd'"):
        load_trained_run(trained.run_dir, ckpt_path=tmp_path / "stfpm.ckpt")

    state = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    state["kdad"]["frozen"]["model.teacher."]["backbone"] = "resnet18"
    torch.save(state, tmp_path / "resnet.ckpt")
    with pytest.raises(TrainedRunError, match=r"resnet.ckpt does not fit .*expects teacher 'resnet18'"):
        load_trained_run(trained.run_dir, ckpt_path=tmp_path / "resnet.ckpt")

    state = torch.load(trained.checkpoint, map_location="cpu", weights_only=True)
    del state["state_dict"][next(k for k in state["state_dict"] if k.startswith("model.decoder."))]
    torch.save(state, tmp_path / "partial.ckpt")
    with pytest.raises(TrainedRunError, match=r"partial.ckpt does not fit the model .*Missing key"):
        load_trained_run(trained.run_dir, ckpt_path=tmp_path / "partial.ckpt")


class _Payload:
    """Pickles as a call of exec that writes a marker file: what a malicious checkpoint would run on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def test_weights_only_refuses_a_pickle_that_would_execute_code(trained: TrainedRun, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "kdad": _Payload(marker)}, evil)
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: a plain unpickling runs it
    assert marker.is_file()
    marker.unlink()
    with pytest.raises(TrainedRunError) as error:
        load_trained_run(trained.run_dir, ckpt_path=evil)
    message = str(error.value)
    assert f"refused to load {evil}" in message and "would execute code" in message and "weights_only=True" in message
    assert "exec" in message  # torch's reason: the callable it refused
    assert not marker.exists()

    # The command line reports it as a user error (exit status 2), and runs nothing either.
    result = subprocess.run(
        [sys.executable, "-m", "kdad.export", f"run_dir={trained.run_dir}", f"ckpt_path={evil}"],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert f"kdad: error: refused to load {evil}" in result.stderr
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt"]  # no Hydra output folders


# ------------------------------------------------------------------------------------------ export of the run
def _check_metadata(folder: Path, trained: TrainedRun, fmt: str) -> Metadata:
    metadata = Metadata.load(folder)
    assert metadata.format == fmt and (folder / metadata.model_file).is_file()
    assert metadata.method == "rd" and metadata.image_size == 64 and metadata.interpolation == "bilinear"
    assert metadata.teacher.backbone == "tf_efficientnet_lite0"
    assert metadata.normalization.applied_in_graph
    check = metadata.export_check
    assert check["passed"] and check["relative"] < 1e-4 and check["tolerance"] == 1e-3
    assert check["images"] == 3 and check["images_source"].startswith("test set")
    assert check["exporter"] == metadata.extra["exporter"]
    assert check["weights"]["not_in_eval_forward"] == {}  # RD's eval forward reads every weight
    expected = None if trained.thresholds is None else trained.thresholds.to_dict()
    if expected is None:
        assert metadata.thresholds is None
    else:
        assert metadata.image_threshold["value"] == expected["image"]["value"]
    return metadata


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_of_a_trained_run_predicts_in_the_standalone_inferencer(
    fmt: str, trained: TrainedRun, mvtec_root: Path
) -> None:
    folder = export_run(trained, fmt, check_images=3)
    assert folder == trained.run_dir / "exported" / fmt
    metadata = _check_metadata(folder, trained, fmt)
    if fmt == "openvino":
        assert (folder / "model.bin").is_file() and metadata.opset == 17
    inferencer = load_inferencer(folder)
    paths = _test_images(mvtec_root)
    predictions = inferencer.predict_paths(paths, batch_size=2)
    assert len(predictions) == len(paths)
    for path, prediction in zip(paths, predictions, strict=True):
        assert prediction.anomaly_map.shape == read_rgb(path).shape[:2]  # the original size
        assert (prediction.decision is None) == (metadata.thresholds is None)
    # The same numbers as kdad's torch path on the same pixels (the inferencer resizes with kdad.imaging).
    batch = inferencer.preprocess([read_rgb(p) for p in paths])
    with torch.no_grad():
        expected = trained.module.model((torch.from_numpy(batch) - _MEAN) / _STD).score.numpy()
    np.testing.assert_allclose([p.score for p in predictions], expected, rtol=1e-4, atol=1e-5)


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_torchscript_export_runs_with_torch_jit(trained: TrainedRun, tmp_path: Path) -> None:
    folder = export_run(trained, "torchscript", out_dir=tmp_path / "ts", check_images=3)
    metadata = _check_metadata(folder, trained, "torchscript")
    assert metadata.opset is None and metadata.model_file == "model.pt"
    loaded = torch.jit.load(str(folder / "model.pt"))
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        score, anomaly_map = loaded(images)
        expected = trained.module.model((images - _MEAN) / _STD)
    assert score.shape == (3,) and anomaly_map.shape == (3, 64, 64)  # another batch size than the trace's
    torch.testing.assert_close(score, expected.score, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(anomaly_map, expected.anomaly_map, rtol=1e-4, atol=1e-5)


def test_export_above_tolerance_leaves_no_metadata(trained: TrainedRun, tmp_path: Path) -> None:
    folder = tmp_path / "strict"
    with pytest.raises(ExportError, match=r"differs from kdad's torch model .*tolerance 1e-12"):
        export_run(trained, "onnx", out_dir=folder, check_images=1, tolerance=1e-12)
    assert (folder / "model.onnx").is_file()
    with pytest.raises(MetadataError, match="metadata.json not found"):
        load_inferencer(folder)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_run(trained, "tflite")


# ------------------------------------------------------------------------------------------ every method
@pytest.mark.parametrize("method", METHODS)
def test_onnx_export_of_every_method_matches_the_torch_model(method: str, mvtec_root: Path, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", *_data(mvtec_root), *SMALL], tmp_path)
    module = hydra.utils.instantiate(cfg.method).eval()
    unit = TrainedRun(run_dir=tmp_path, config=cfg, module=module, checkpoint=tmp_path / "none", thresholds=None)
    folder = export_run(unit, "onnx", check_images=3)
    metadata = Metadata.load(folder)
    check = metadata.export_check
    assert check["passed"] and check["relative"] < 1e-4, check
    assert metadata.thresholds is None and metadata.method == module.name
    # No thresholds: scores and maps only.
    inferencer = load_inferencer(folder)
    rgb = read_rgb(_test_images(mvtec_root, 1)[0])
    (prediction,) = inferencer.predict_batch([rgb])
    assert prediction.decision is None and prediction.normalized_score is None and prediction.mask is None
    assert inferencer.overlay(rgb, prediction).shape == rgb.shape
    unread = check["weights"]["not_in_eval_forward"]
    if method in ("rd_expert", "rdpp_expert"):
        # The expert is built from the config but only trains the teacher: its weights are not in the graph...
        expert = module.model.expert.state_dict().values()
        assert unread == {"expert": sum(t.numel() for t in expert if t.is_floating_point())}
    if method == "rd_expert":
        # ...which holds exactly as many weights as the export of the inference-only model (no expert at all).
        lean_cfg = compose_config(
            [f"method={method}", *_data(mvtec_root), *SMALL, "method.model.expert=null"], tmp_path
        )
        lean = hydra.utils.instantiate(lean_cfg.method).eval()
        lean_run = TrainedRun(tmp_path, lean_cfg, lean, tmp_path / "none", None)
        lean_folder = export_run(lean_run, "onnx", out_dir=tmp_path / "lean", check_images=1)
        assert Metadata.load(lean_folder).export_check["weights"]["graph"] == check["weights"]["graph"]
    if method not in ("rd_expert", "rdpp_expert"):
        assert unread == {}, unread


@pytest.mark.slow
def test_dynamo_exporter_and_the_command_line(trained: TrainedRun, tmp_path: Path) -> None:
    folder = export_run(trained, "onnx", out_dir=tmp_path / "dynamo", onnx_exporter="dynamo", check_images=3)
    metadata = Metadata.load(folder)
    assert metadata.extra["exporter"] == "torch.onnx.export(dynamo=True)" and metadata.export_check["passed"]
    assert metadata.opset >= 17  # the opset the file holds (the dynamo exporter may keep a newer one)

    out = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "kdad.export", f"run_dir={trained.run_dir}", f"out_dir={out}", "check_images=2"],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"as onnx to {out}" in result.stdout and "of the map range (tolerance 0.001)" in result.stdout
    assert Metadata.load(out).export_check["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli", "dynamo"]  # no Hydra output folders
