"""Standalone inference on an exported kdad model: numpy + Pillow + onnxruntime (or OpenVINO), no torch.

``load_inferencer(folder)`` reads ``folder/metadata.json`` and returns the inferencer for its format.
Every inferencer preprocesses exactly like training (``kdad.imaging``: RGB conversion, square resize to
``image_size`` with the run's interpolation), feeds the graph RGB in [0, 1] (ImageNet normalisation is in
the graph, by contract) and post-processes with ``kdad.deploy.postprocess``.

The graph contract: one input (``metadata.input_name``) float32 [N, 3, H, W]; outputs ``score`` float32
[N] and ``anomaly_map`` float32 [N, H, W] with H = W = ``image_size``. It is checked when the model
loads, so a foreign or mismatched model fails with a message naming the file instead of producing
garbage or a runtime traceback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdad.deploy.errors import DeployError
from kdad.deploy.metadata import MAP_OUTPUT, SCORE_OUTPUT, Metadata
from kdad.deploy.postprocess import (
    Prediction,
    display_range,
    make_prediction,
    overlay,
)
from kdad.imaging import check_rgb_array, read_rgb, resize_rgb

# name -> dims (an int for a fixed dimension, None for a dynamic one) of a graph's inputs or outputs.
Signature = dict[str, list[int | None]]


class Inferencer(ABC):
    """Load once, predict many: the runtime-independent part (preprocess, checks, postprocess)."""

    #: export formats this runtime can execute
    formats: tuple[str, ...] = ()

    def __init__(self, folder: Path | str, device: str = "CPU", metadata: Metadata | None = None) -> None:
        self.folder = Path(folder)
        self.metadata = metadata if metadata is not None else Metadata.load(self.folder)
        if self.metadata.format not in self.formats:
            raise DeployError(
                f"{type(self).__name__} runs formats {', '.join(self.formats)}, but {self.folder / 'metadata.json'} "
                f"says format '{self.metadata.format}'; use kdad.deploy.load_inferencer to pick the right one."
            )
        self.model_path = self.folder / self.metadata.model_file
        self.device = device
        _check_model_file(self.model_path)
        self._load(device)
        self._check_signature()

    @abstractmethod
    def _load(self, device: str) -> None:
        """Create the runtime session for ``self.model_path``; raise DeployError naming the file on failure."""

    @abstractmethod
    def _signature(self) -> tuple[Signature, Signature]:
        """(inputs, outputs) of the loaded graph."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs by name for a float32 [N, 3, H, W] batch."""

    def preprocess(self, rgb_list: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [N, 3, S, S] in [0, 1]: each RGB uint8 image resized to the model's S with its interpolation."""
        size, interpolation = self.metadata.image_size, self.metadata.interpolation
        resized = [resize_rgb(rgb, size, interpolation) for rgb in rgb_list]
        batch = np.stack(resized).astype(np.float32) / np.float32(255.0)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def predict_batch(
        self, rgb_list: Sequence[np.ndarray], categories: Sequence[str | None] | None = None
    ) -> list[Prediction]:
        """One Prediction per RGB uint8 [H, W, 3] image; the images may have different sizes. ``categories``: each
        image's category, needed by a unified export (thresholds per category, ``metadata.categories``)."""
        if len(rgb_list) == 0:
            return []
        for index, rgb in enumerate(rgb_list):
            check_rgb_array(rgb, f"image {index}")
        if categories is not None and len(categories) != len(rgb_list):
            raise ValueError(f"{len(categories)} categories for {len(rgb_list)} images")
        names = list(categories) if categories is not None else [None] * len(rgb_list)
        records = [self.metadata.threshold_records(name) for name in names]  # before inference: a missing category
        scores, maps = self._outputs(self.preprocess(rgb_list), len(rgb_list))
        return [
            make_prediction(float(score), amap, rgb.shape[:2], *record)
            for score, amap, rgb, record in zip(scores, maps, rgb_list, records, strict=True)
        ]

    def predict_paths(
        self, paths: Iterable[Path | str], batch_size: int = 8, category: str | None = None
    ) -> list[Prediction]:
        """Predictions for image files, decoded like training (kdad.imaging.read_rgb), ``batch_size`` at a time;
        ``category``: the images' category (a unified export's thresholds per category).

        An unreadable file raises kdad.imaging.ImageReadError naming it.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        paths = list(paths)
        predictions: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = [read_rgb(path) for path in paths[start : start + batch_size]]
            predictions += self.predict_batch(chunk, None if category is None else [category] * len(chunk))
        return predictions

    def overlay(
        self, rgb: np.ndarray, prediction: Prediction, alpha: float = 0.4, category: str | None = None
    ) -> np.ndarray:
        """uint8 RGB heat-map overlay of a prediction on its image, coloured over the threshold record's range
        (``category``'s for a unified export).

        Without thresholds there is no reference range: the colours then span the map's own range (per image).
        """
        image_record, pixel_record = self.metadata.threshold_records(category)
        span = display_range(prediction.anomaly_map, image_record, pixel_record)
        return overlay(rgb, prediction.anomaly_map, prediction.mask, span, alpha)

    def _outputs(self, batch: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            outputs = self._run(batch)
        except Exception as exc:  # runtimes raise their own exception types (onnxruntime's derive from Exception)
            raise DeployError(f"{self.model_path}: inference failed on a batch of shape {batch.shape}: {exc}") from exc
        size = self.metadata.image_size
        scores = np.asarray(outputs[SCORE_OUTPUT], dtype=np.float32)
        maps = np.asarray(outputs[MAP_OUTPUT], dtype=np.float32)
        if scores.shape != (count,) or maps.shape != (count, size, size):
            raise DeployError(
                f"{self.model_path}: outputs have shapes {SCORE_OUTPUT} {scores.shape} and {MAP_OUTPUT} {maps.shape}, "
                f"expected ({count},) and ({count}, {size}, {size}) from metadata.json; re-export the run."
            )
        return scores, maps

    def _check_signature(self) -> None:
        inputs, outputs = self._signature()
        size, name = self.metadata.image_size, self.metadata.input_name
        expected = {
            name: [None, 3, size, size],
            SCORE_OUTPUT: [None],
            MAP_OUTPUT: [None, size, size],
        }
        problems = _mismatches(inputs, {name: expected[name]}, "input", exact=True)
        problems += _mismatches(outputs, {key: expected[key] for key in (SCORE_OUTPUT, MAP_OUTPUT)}, "output")
        if problems:
            raise DeployError(
                f"{self.model_path} does not match its metadata.json: {'; '.join(problems)}. The graph has inputs "
                f"{_describe(inputs)} and outputs {_describe(outputs)}; re-export the run."
            )


def _check_model_file(path: Path) -> None:
    if not path.is_file():
        raise DeployError(f"model file {path} is missing (metadata.json names it in 'model_file'); re-export the run.")
    if path.stat().st_size == 0:
        raise DeployError(f"model file {path} is empty; re-export the run.")


def _mismatches(actual: Signature, expected: Signature, kind: str, exact: bool = False) -> list[str]:
    """Human-readable differences; a dynamic dimension (None) on either side matches any size."""
    problems = []
    if exact and len(actual) != len(expected):
        problems.append(f"expected exactly {len(expected)} {kind}(s), found {len(actual)}")
    for name, dims in expected.items():
        if name not in actual:
            problems.append(f"no {kind} named '{name}'")
        elif len(actual[name]) != len(dims):
            problems.append(f"{kind} '{name}' has rank {len(actual[name])}, expected {len(dims)}")
        elif any(a is not None and e is not None and a != e for a, e in zip(actual[name], dims, strict=True)):
            problems.append(f"{kind} '{name}' has shape {_shape(actual[name])}, expected {_shape(dims)}")
    return problems


def _shape(dims: list[int | None]) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in dims) + "]"


def _describe(signature: Signature) -> str:
    return ", ".join(f"'{name}' {_shape(dims)}" for name, dims in signature.items()) or "none"


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 else None


class OnnxInferencer(Inferencer):
    """onnxruntime on model.onnx; device "CPU" (CPUExecutionProvider) or "CUDA" (CUDA, CPU fallback)."""

    formats = ("onnx",)

    def _load(self, device: str) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DeployError(
                f"onnxruntime is not installed, needed to run {self.model_path}: pip install onnxruntime"
            ) from exc
        providers = _onnx_providers(device, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(self.model_path), providers=providers)
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, ... derive from Exception only
            raise DeployError(
                f"onnxruntime cannot load {self.model_path}: {exc}. The file is truncated, corrupt or not an ONNX "
                "model; re-export the run."
            ) from exc

    def _signature(self) -> tuple[Signature, Signature]:
        def describe(args: list[Any]) -> Signature:
            return {arg.name: [_static(dim) for dim in arg.shape] for arg in args}

        return describe(self._session.get_inputs()), describe(self._session.get_outputs())

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [SCORE_OUTPUT, MAP_OUTPUT]
        values = self._session.run(names, {self.metadata.input_name: batch})
        return dict(zip(names, values, strict=True))


def _onnx_providers(device: str, available: list[str]) -> list[str]:
    wanted = {"CPU": ["CPUExecutionProvider"], "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    key = device.upper()
    if key not in wanted:
        raise DeployError(f"unknown onnxruntime device '{device}': choose CPU or CUDA.")
    if wanted[key][0] not in available:
        raise DeployError(
            f"onnxruntime has no {wanted[key][0]} here (available: {', '.join(available)}); "
            "install onnxruntime-gpu for CUDA or use device='CPU'."
        )
    return wanted[key]


# OpenVINO may run CPUs with bf16 (AMX) and GPUs with f16 by default; thresholds were calibrated on float32
# scores, and a few 1e-3 of drift flips decisions near the threshold, so ask for float32 everywhere.
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


class OpenVINOInferencer(Inferencer):
    """OpenVINO on model.xml (+ model.bin), or directly on an ONNX export; device "CPU", "GPU", "AUTO", ..."""

    formats = ("openvino", "onnx")

    def _load(self, device: str) -> None:
        try:
            import openvino
        except ImportError as exc:
            raise DeployError(
                f"OpenVINO is not installed, needed to run {self.model_path}: pip install kdad[openvino] "
                "(or pip install openvino)."
            ) from exc
        if self.model_path.suffix == ".xml":
            _check_model_file(self.model_path.with_suffix(".bin"))
        try:
            self._compiled = openvino.Core().compile_model(str(self.model_path), device, OPENVINO_CONFIG)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own exception types
            raise DeployError(
                f"OpenVINO cannot load {self.model_path} on device '{device}': {exc}. The file is truncated, corrupt "
                "or not a model, or the device is unavailable; re-export the run or pick another device."
            ) from exc
        self._output_ports = {name: port for port in self._compiled.outputs for name in port.get_names()}

    def _signature(self) -> tuple[Signature, Signature]:
        wanted = {self.metadata.input_name, SCORE_OUTPUT, MAP_OUTPUT}

        def describe(ports: list[Any]) -> Signature:
            # a port may carry several tensor names: key it by the contract's name when it has it
            return {_port_name(port, wanted): _ov_dims(port) for port in ports}

        return describe(self._compiled.inputs), describe(self._compiled.outputs)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        results = self._compiled({self.metadata.input_name: batch})
        return {name: np.array(results[self._output_ports[name]]) for name in (SCORE_OUTPUT, MAP_OUTPUT)}


def _port_name(port: Any, wanted: set[str]) -> str:
    names = port.get_names()
    return next((name for name in sorted(names) if name in wanted), port.get_any_name() if names else "<unnamed>")


def _ov_dims(port: Any) -> list[int | None]:
    return [dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()]


INFERENCERS: dict[str, type[Inferencer]] = {"onnx": OnnxInferencer, "openvino": OpenVINOInferencer}


def load_inferencer(folder: Path | str, device: str = "CPU") -> Inferencer:
    """The inferencer for the export in ``folder``, chosen by its metadata.json ``format``.

    TorchScript exports need torch, which this standalone path deliberately does not import.
    """
    metadata = Metadata.load(folder)
    if metadata.format == "torchscript":
        raise DeployError(
            f"{Path(folder) / metadata.model_file} is a TorchScript export, which needs torch: run it with "
            "kdad.predict (backend=torch), or export the run to onnx or openvino for the standalone inferencer."
        )
    return INFERENCERS[metadata.format](folder, device=device, metadata=metadata)
