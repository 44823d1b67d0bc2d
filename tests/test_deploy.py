"""The standalone inferencer (kdad.deploy) and the shared pixel decoding (kdad.imaging), without torch.

The models are tiny ONNX graphs built with onnx.helper that follow the export contract: input ``image``
float32 [N, 3, S, S] in [0, 1], ImageNet normalisation inside the graph, ``anomaly_map`` = channel mean
of |normalised image| [N, S, S], ``score`` = its spatial max [N]. A numpy reference recomputes both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from kdad.deploy import (
    DeployError,
    Metadata,
    MetadataError,
    Normalization,
    OnnxInferencer,
    OpenVINOInferencer,
    Teacher,
    binary_mask,
    decide,
    load_inferencer,
    normalize_scores,
    overlay,
    resize_map,
)
from kdad.imaging import ImageReadError, read_rgb, resize_rgb

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIZE = 16
IMAGE_RECORD = {"value": 1.5, "policy": "f1_max", "score_min": 0.5, "score_max": 2.5, "n_samples": 40}
PIXEL_RECORD = {"value": 1.2, "policy": "f1_max", "score_min": 0.0, "score_max": 2.2}
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
REPO = Path(__file__).resolve().parents[1]


def build_graph(path: Path, size: int = SIZE, input_name: str = "image", map_keepdims: int = 0) -> Path:
    """The contract graph: normalise, map = mean_c |x|, score = max_hw map (map_keepdims=1 breaks the map rank)."""
    image = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])
    map_dims = ["N", 1, size, size] if map_keepdims else ["N", size, size]
    outputs = [
        helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, map_dims),
    ]
    constants = [
        numpy_helper.from_array(MEAN.reshape(1, 3, 1, 1), "mean"),
        numpy_helper.from_array(STD.reshape(1, 3, 1, 1), "std"),
    ]
    score_axes = [1, 2, 3] if map_keepdims else [1, 2]
    nodes = [
        helper.make_node("Sub", [input_name, "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normalised"]),
        helper.make_node("Abs", ["normalised"], ["magnitude"]),
        helper.make_node("ReduceMean", ["magnitude"], ["anomaly_map"], axes=[1], keepdims=map_keepdims),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=score_axes, keepdims=0),
    ]
    graph = helper.make_graph(nodes, "contract", [image], outputs, initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_metadata(**changes: Any) -> Metadata:
    fields: dict[str, Any] = {
        "format": "onnx",
        "model_file": "model.onnx",
        "method": "rd",
        "teacher": Teacher(backbone="efficientnet_lite0", weights="package:efficientnet_lite0"),
        "image_size": SIZE,
        "interpolation": "bicubic",
        "normalization": Normalization(mean=tuple(MEAN.tolist()), std=tuple(STD.tolist())),
        "thresholds": {"image": dict(IMAGE_RECORD), "pixel": dict(PIXEL_RECORD)},
        "export_check": {"max_abs_score_deviation": 0.0, "max_abs_map_deviation": 0.0, "tolerance": 1e-4, "images": 4},
        "opset": 17,
    }
    fields.update(changes)
    return Metadata(**fields)


def make_export(folder: Path, graph: dict[str, Any] | None = None, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    build_graph(folder / "model.onnx", **(graph or {}))
    make_metadata(**changes).save(folder)
    return folder


def edit_metadata(folder: Path, edit: Any) -> Path:
    path = folder / "metadata.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def reference(rgb: np.ndarray, interpolation: str = "bicubic") -> tuple[float, np.ndarray]:
    """Score and model-resolution map computed with numpy + Pillow only, independently of kdad."""
    resized = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), PIL_FILTERS[interpolation]), dtype=np.float32)
    normalised = (resized / 255.0 - MEAN) / STD
    anomaly_map = np.abs(normalised).mean(axis=2)
    return float(anomaly_map.max()), anomaly_map


def random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return make_export(tmp_path / "exported" / "onnx")


# --------------------------------------------------------------------------- predictions


def test_predictions_match_numpy_reference_at_each_original_size(export: Path) -> None:
    images = [random_rgb(30, 40, 0), random_rgb(50, 25, 1), random_rgb(16, 16, 2), random_rgb(7, 90, 3)]
    predictions = load_inferencer(export).predict_batch(images)
    assert len(predictions) == len(images)
    for rgb, prediction in zip(images, predictions, strict=True):
        height, width = rgb.shape[:2]
        score, small_map = reference(rgb)
        assert prediction.score == pytest.approx(score, abs=1e-5)
        expected_normalized = min(max((score - 1.5) / (2.5 - 0.5) + 0.5, 0.0), 1.0)
        assert prediction.normalized_score == pytest.approx(expected_normalized, abs=1e-5)
        assert prediction.decision == ("NOK" if score > 1.5 else "OK")
        assert prediction.image_size == (height, width)
        assert prediction.anomaly_map.shape == (height, width) and prediction.anomaly_map.dtype == np.float32
        full_map = np.asarray(Image.fromarray(small_map).resize((width, height), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(prediction.anomaly_map, full_map, atol=1e-5)
        assert prediction.mask is not None and prediction.mask.dtype == np.uint8
        assert np.array_equal(prediction.mask, np.where(prediction.anomaly_map > 1.2, 255, 0))
    masks = np.concatenate([p.mask.ravel() for p in predictions])
    assert set(np.unique(masks)) == {0, 255}  # random images cross the pixel threshold somewhere


def test_interpolation_from_metadata_is_used(tmp_path: Path) -> None:
    rgb = random_rgb(61, 47, 4)
    bilinear = load_inferencer(make_export(tmp_path / "a", interpolation="bilinear")).predict_batch([rgb])[0]
    bicubic = load_inferencer(make_export(tmp_path / "b", interpolation="bicubic")).predict_batch([rgb])[0]
    assert bilinear.score == pytest.approx(reference(rgb, "bilinear")[0], abs=1e-5)
    assert bicubic.score == pytest.approx(reference(rgb, "bicubic")[0], abs=1e-5)
    assert bilinear.score != pytest.approx(bicubic.score, abs=1e-5)


def test_batching_does_not_change_predictions(export: Path) -> None:
    inferencer = load_inferencer(export)
    images = [random_rgb(20, 30, seed) for seed in range(3)]
    together = inferencer.predict_batch(images)
    alone = [inferencer.predict_batch([rgb])[0] for rgb in images]
    for a, b in zip(together, alone, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    assert inferencer.predict_batch([]) == []


def write_modes(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """One file per mode/format with its own size; the value is the RGB a correct decoder must produce."""
    rng = np.random.default_rng(5)
    folder.mkdir()
    rgb, gray = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), rng.integers(0, 256, (50, 25), dtype=np.uint8)
    rgba = rng.integers(0, 256, (21, 33, 4), dtype=np.uint8)
    files = {
        "rgb": (folder / "rgb.png", Image.fromarray(rgb)),
        "gray": (folder / "gray.png", Image.fromarray(gray)),
        "rgba": (folder / "rgba.png", Image.fromarray(rgba)),
        "bmp": (folder / "bitmap.bmp", Image.fromarray(random_rgb(12, 31, 6))),
        "tiff": (folder / "scan.tif", Image.fromarray(random_rgb(27, 45, 7))),
        "palette": (folder / "palette.png", Image.fromarray(random_rgb(36, 28, 8)).convert("P")),
        "jpeg": (folder / "photo.jpg", Image.fromarray(random_rgb(48, 64, 9))),
    }
    expected = {}
    for name, (path, image) in files.items():
        image.save(path)
        with Image.open(path) as stored:  # what Pillow decodes (JPEG is lossy), alpha dropped
            expected[name] = (path, np.asarray(stored.convert("RGB")))
    assert np.array_equal(expected["rgba"][1], rgba[..., :3])
    deep = folder / "deep.png"
    Image.fromarray(np.full((19, 17), 32896, dtype=np.uint16)).save(deep)  # 16-bit mid-grey
    assert Image.open(deep).mode == "I;16"
    expected["deep"] = (deep, np.full((19, 17, 3), 128, dtype=np.uint8))  # scaled, not clipped to white
    return expected


def test_modes_and_formats_give_maps_and_masks_at_each_original_size(export: Path, tmp_path: Path) -> None:
    cases = write_modes(tmp_path / "images")
    paths = [path for path, _ in cases.values()]
    predictions = load_inferencer(export).predict_paths(paths, batch_size=3)
    assert len(predictions) == len(cases)
    for (name, (_path, rgb)), prediction in zip(cases.items(), predictions, strict=True):
        height, width = rgb.shape[:2]
        assert prediction.image_size == (height, width), name
        assert prediction.anomaly_map.shape == (height, width), name
        assert prediction.mask is not None and prediction.mask.shape == (height, width), name
        assert set(np.unique(prediction.mask)) <= {0, 255}, name
        assert prediction.score == pytest.approx(reference(rgb)[0], abs=1e-5), name
    white = reference(np.full((19, 17, 3), 255, dtype=np.uint8))[0]
    assert predictions[-1].score != pytest.approx(white, abs=1e-3)  # the 16-bit image was not clipped


def test_unreadable_image_names_the_file(export: Path, tmp_path: Path) -> None:
    good, broken = tmp_path / "good.png", tmp_path / "broken.png"
    Image.fromarray(random_rgb(10, 10, 0)).save(good)
    broken.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ImageReadError, match=re.escape(str(broken))):
        load_inferencer(export).predict_paths([good, broken])
    with pytest.raises(ImageReadError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")


def test_non_rgb_arrays_are_refused(export: Path) -> None:
    inferencer = load_inferencer(export)
    with pytest.raises(ValueError, match=r"image 1 must be an RGB uint8 array"):
        inferencer.predict_batch([random_rgb(8, 8, 0), np.zeros((8, 8), dtype=np.uint8)])
    with pytest.raises(ValueError, match="float32"):
        inferencer.predict_batch([np.zeros((8, 8, 3), dtype=np.float32)])


def test_score_equal_to_threshold_is_ok_and_normalises_to_one_half(tmp_path: Path) -> None:
    rgb = random_rgb(24, 24, 11)
    score = load_inferencer(make_export(tmp_path / "probe")).predict_batch([rgb])[0].score
    at_threshold = {**IMAGE_RECORD, "value": score}
    prediction = load_inferencer(make_export(tmp_path / "exact", thresholds={"image": at_threshold, "pixel": None}))
    result = prediction.predict_batch([rgb])[0]
    assert result.score == score
    assert result.normalized_score == 0.5
    assert result.decision == "OK"
    assert result.mask is None  # no pixel threshold, no mask
    below = {**IMAGE_RECORD, "value": float(np.nextafter(np.float32(score), np.float32(0)))}
    stricter = load_inferencer(make_export(tmp_path / "below", thresholds={"image": below, "pixel": None}))
    assert stricter.predict_batch([rgb])[0].decision == "NOK"


def test_black_is_nok_and_grey_is_ok(export: Path) -> None:
    black, grey = np.zeros((20, 20, 3), dtype=np.uint8), np.full((20, 20, 3), 115, dtype=np.uint8)
    decisions = [p.decision for p in load_inferencer(export).predict_batch([black, grey])]
    assert decisions == ["NOK", "OK"]


# --------------------------------------------------------------------------- post-processing


def test_normalize_scores_follows_anomalib_min_max() -> None:
    record = {"value": 2.0, "score_min": 1.0, "score_max": 5.0, "policy": "f1_max"}
    assert normalize_scores(2.0, record) == 0.5
    assert normalize_scores(3.0, record) == 0.75
    assert normalize_scores(4.0, record) == 1.0
    assert normalize_scores(0.0, record) == 0.0
    assert normalize_scores(100.0, record) == 1.0 and normalize_scores(-100.0, record) == 0.0
    values = normalize_scores(np.array([[1.0, 2.0], [3.0, 9.0]], dtype=np.float32), record)
    assert isinstance(values, np.ndarray) and values.dtype == np.float32 and values.shape == (2, 2)
    np.testing.assert_array_equal(values, [[0.25, 0.5], [0.75, 1.0]])


def test_normalize_scores_with_empty_range_is_a_step_at_the_threshold() -> None:
    record = {"value": 1.0, "score_min": 1.0, "score_max": 1.0, "policy": "f1_max"}
    np.testing.assert_array_equal(normalize_scores(np.array([0.5, 1.0, 1.5]), record), [0.0, 0.5, 1.0])


def test_decision_is_strict() -> None:
    assert decide(2.0, 2.0) == "OK"
    assert decide(float(np.nextafter(2.0, 3.0)), 2.0) == "NOK"
    assert decide(1.0, 2.0) == "OK"
    with pytest.raises(ValueError, match="NaN"):
        decide(float("nan"), 2.0)


def test_resize_map_and_binary_mask() -> None:
    small = np.arange(16, dtype=np.float32).reshape(4, 4)
    full = resize_map(small, (8, 12))
    assert full.shape == (8, 12) and full.dtype == np.float32
    assert full.min() >= 0.0 and full.max() <= 15.0 and full[0, 0] < full[-1, -1]
    np.testing.assert_array_equal(resize_map(np.full((4, 4), 0.3, dtype=np.float32), (9, 5)), np.float32(0.3))
    mask = binary_mask(np.array([[1.0, 1.2, 1.3]], dtype=np.float32), 1.2)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 0, 255]])


def test_overlay_blends_heat_and_draws_the_mask_outline() -> None:
    rgb = np.full((10, 10, 3), 100, dtype=np.uint8)
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2:8, 2:8] = 1.0
    mask = np.where(heat > 0.5, 255, 0).astype(np.uint8)
    plain = overlay(rgb, heat, None, (0.0, 1.0))
    assert plain.shape == (10, 10, 3) and plain.dtype == np.uint8
    assert plain[5, 5, 0] > plain[0, 0, 0] and plain[5, 5, 2] < plain[0, 0, 2]  # hot = red, cold = blue
    outlined = overlay(rgb, heat, mask, (0.0, 1.0), outline_color=(0, 255, 0))
    assert tuple(outlined[2, 5]) == (0, 255, 0) and tuple(outlined[7, 2]) == (0, 255, 0)
    assert np.array_equal(outlined[4:6, 4:6], plain[4:6, 4:6]) and np.array_equal(outlined[0], plain[0])
    with pytest.raises(ValueError, match="overlay"):
        overlay(rgb, heat[:5], None, (0.0, 1.0))


def test_inferencer_overlay_has_the_original_size(export: Path) -> None:
    inferencer = load_inferencer(export)
    rgb = random_rgb(22, 35, 12)
    image = inferencer.overlay(rgb, inferencer.predict_batch([rgb])[0])
    assert image.shape == (22, 35, 3) and image.dtype == np.uint8 and not np.array_equal(image, rgb)


# --------------------------------------------------------------------------- metadata


def test_metadata_round_trip_keeps_extra_keys(tmp_path: Path) -> None:
    make_metadata().save(tmp_path)
    edit_metadata(tmp_path, lambda data: data.update(exporter_note="hello"))
    loaded = Metadata.load(tmp_path)
    assert loaded.image_threshold["n_samples"] == 40 and loaded.pixel_threshold == PIXEL_RECORD
    assert loaded.extra == {"exporter_note": "hello"}
    saved = loaded.save(tmp_path / "again.json")
    assert Metadata.load(saved) == loaded
    written = json.loads(saved.read_text())
    assert written["format_version"] == 1 and written["normalization"]["applied_in_graph"] is True
    assert written["output_names"] == ["score", "anomaly_map"] and written["exporter_note"] == "hello"


def test_newer_format_version_is_refused(export: Path) -> None:
    path = edit_metadata(export, lambda data: data.update(format_version=2))
    with pytest.raises(MetadataError, match=rf"{re.escape(str(path))} was written by a newer kdad \(format_version 2"):
        load_inferencer(export)


def _delete(dotted: str) -> Any:
    def edit(data: dict[str, Any]) -> None:
        *parents, key = dotted.split(".")
        for parent in parents:
            data = data[parent]
        del data[key]

    return edit


@pytest.mark.parametrize(
    "key", ["image_size", "format_version", "teacher.backbone", "normalization.mean", "thresholds.image.score_max"]
)
def test_metadata_missing_key_names_file_and_key(export: Path, key: str) -> None:
    path = edit_metadata(export, _delete(key))
    with pytest.raises(MetadataError, match=rf"{re.escape(str(path))}: missing required key '{key}'"):
        Metadata.load(export)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_size", "256", "key 'image_size' must be a positive integer"),
        ("image_size", True, "key 'image_size' must be a positive integer"),
        ("format", "tflite", "key 'format' has unknown value 'tflite'"),
        ("interpolation", "lanczos", "key 'interpolation' has unknown value 'lanczos'"),
        ("model_file", "../model.onnx", "key 'model_file' must be a file name inside the export folder"),
        ("model_file", "model.xml", "key 'model_file' must end with .onnx"),
        ("output_names", ["score"], "key 'output_names' must be"),
        ("opset", "17", "key 'opset' must be an integer or null"),
        ("created", "yesterday", "key 'created' must be an ISO 8601 timestamp"),
        ("normalization", {"mean": [0, 0, 0], "std": [1, 1, 1], "applied_in_graph": False}, "applied_in_graph"),
        ("thresholds", {"image": {**IMAGE_RECORD, "value": "high"}, "pixel": None}, "'thresholds.image.value'"),
        ("thresholds", {"image": {**IMAGE_RECORD, "score_min": 3.0}, "pixel": None}, "score_min 3.0 > score_max"),
        ("export_check", [], "key 'export_check' must be an object"),
    ],
)
def test_metadata_wrong_values_name_file_and_key(export: Path, key: str, value: Any, message: str) -> None:
    path = edit_metadata(export, lambda data: data.update({key: value}))
    with pytest.raises(MetadataError, match=f"{re.escape(str(path))}: .*{message}"):
        Metadata.load(export)


def test_metadata_not_json_or_absent(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=f"{re.escape(str(tmp_path / 'metadata.json'))} not found"):
        load_inferencer(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(MetadataError, match="is not valid JSON"):
        Metadata.load(tmp_path)


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="image_size"):
        make_metadata(image_size=0).save(tmp_path)
    assert not (tmp_path / "metadata.json").exists()


# --------------------------------------------------------------------------- model files


def test_truncated_model_raises_deploy_error_naming_the_file(export: Path) -> None:
    model = export / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(DeployError, match=re.escape(str(model))):
        load_inferencer(export)


def test_missing_or_empty_model_file(export: Path) -> None:
    model = export / "model.onnx"
    model.write_bytes(b"")
    with pytest.raises(DeployError, match=f"model file {re.escape(str(model))} is empty"):
        load_inferencer(export)
    model.unlink()
    with pytest.raises(DeployError, match=f"model file {re.escape(str(model))} is missing"):
        load_inferencer(export)


def test_graph_not_matching_metadata_is_refused(tmp_path: Path) -> None:
    renamed = make_export(tmp_path / "renamed", graph={"input_name": "pixels"})
    with pytest.raises(
        DeployError, match=rf"{re.escape(str(renamed / 'model.onnx'))} does not match .*no input named 'image'"
    ):
        load_inferencer(renamed)
    rank = make_export(tmp_path / "rank", graph={"map_keepdims": 1})
    with pytest.raises(DeployError, match="output 'anomaly_map' has rank 4, expected 3"):
        load_inferencer(rank)
    other_size = make_export(tmp_path / "size", graph={"size": 32})
    with pytest.raises(DeployError, match=r"input 'image' has shape \[\?, 3, 32, 32\], expected \[\?, 3, 16, 16\]"):
        load_inferencer(other_size)


def test_torchscript_export_is_refused_with_a_pointer_to_the_torch_path(tmp_path: Path) -> None:
    make_metadata(format="torchscript", model_file="model.pt", opset=None).save(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(
        DeployError, match=r"TorchScript export, which needs torch: run it with kdad.predict \(backend=torch\)"
    ):
        load_inferencer(tmp_path)


def test_inferencer_refuses_a_format_it_cannot_run(tmp_path: Path) -> None:
    make_metadata(format="openvino", model_file="model.xml").save(tmp_path)
    with pytest.raises(DeployError, match="OnnxInferencer runs formats onnx"):
        OnnxInferencer(tmp_path)


def test_unknown_onnx_device_is_refused(export: Path) -> None:
    with pytest.raises(DeployError, match="unknown onnxruntime device 'TPU'"):
        load_inferencer(export, device="TPU")


# --------------------------------------------------------------------------- OpenVINO


def test_openvino_matches_onnxruntime_on_onnx_and_ir(export: Path, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    images = [random_rgb(30, 40, 13), random_rgb(18, 22, 14)]
    expected = load_inferencer(export).predict_batch(images)
    on_onnx = OpenVINOInferencer(export).predict_batch(images)
    ir = tmp_path / "exported" / "openvino"
    ir.mkdir(parents=True)
    ov.save_model(ov.convert_model(str(export / "model.onnx")), str(ir / "model.xml"), compress_to_fp16=False)
    make_metadata(format="openvino", model_file="model.xml").save(ir)
    inferencer = load_inferencer(ir)
    assert isinstance(inferencer, OpenVINOInferencer)
    on_ir = inferencer.predict_batch(images)
    for reference_prediction, *others in zip(expected, on_onnx, on_ir, strict=True):
        for other in others:
            assert other.score == pytest.approx(reference_prediction.score, abs=1e-5)
            np.testing.assert_allclose(other.anomaly_map, reference_prediction.anomaly_map, atol=1e-5)
            assert other.decision == reference_prediction.decision
    (ir / "model.bin").unlink()
    with pytest.raises(DeployError, match=f"model file {re.escape(str(ir / 'model.bin'))} is missing"):
        load_inferencer(ir)


def test_openvino_missing_gives_install_hint(export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(DeployError, match=r"pip install kdad\[openvino\]"):
        OpenVINOInferencer(export)


# --------------------------------------------------------------------------- imaging + data layer


def test_imaging_resize_is_pillows_and_data_layer_shares_it(tmp_path: Path) -> None:
    from kdad.data import decode
    from kdad.imaging import INTERPOLATIONS

    assert decode.INTERPOLATIONS is INTERPOLATIONS
    rgb = random_rgb(33, 47, 15)
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    for name, resample in PIL_FILTERS.items():
        expected = np.asarray(Image.fromarray(rgb).resize((20, 20), resample))
        assert np.array_equal(resize_rgb(rgb, 20, name), expected)
        assert np.array_equal(decode.decode_image(path, 20, name), expected)
    with pytest.raises(ValueError, match="unknown interpolation 'area'"):
        resize_rgb(rgb, 20, "area")


def test_data_layer_wraps_image_read_errors(tmp_path: Path) -> None:
    from kdad.data.decode import decode_image
    from kdad.data.errors import DatasetError

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=rf"cannot decode image {re.escape(str(broken))}: .*re-extract it") as info:
        decode_image(broken, 8, "bilinear")
    assert isinstance(info.value.__cause__, ImageReadError)


# --------------------------------------------------------------------------- no torch


NO_TORCH_SCRIPT = textwrap.dedent(
    """
    import json, sys

    BLOCKED = ("torch", "torchvision", "lightning", "pytorch_lightning", "timm", "cv2", "albumentations",
               "kdad.data", "kdad.metrics")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if any(name == blocked or name.startswith(blocked + ".") for blocked in BLOCKED):
                raise ImportError(f"blocked by the test: {name}")
            return None

    sys.meta_path.insert(0, Blocker())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work: torch imported")

    from kdad.deploy.inferencer import load_inferencer

    prediction = load_inferencer(sys.argv[1]).predict_paths([sys.argv[2]])[0]
    loaded = sorted(name for name in sys.modules if any(name == b or name.startswith(b + ".") for b in BLOCKED))
    print(json.dumps({"score": prediction.score, "shape": list(prediction.anomaly_map.shape), "loaded": loaded}))
    """
)


def test_deploy_runs_where_torch_cannot_be_imported(export: Path, tmp_path: Path) -> None:
    rgb = random_rgb(26, 38, 16)
    image = tmp_path / "part.png"
    Image.fromarray(rgb).save(image)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT, str(export), str(image)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["score"] == pytest.approx(reference(rgb)[0], abs=1e-5)
    assert output["shape"] == [26, 38]
    assert output["loaded"] == []
