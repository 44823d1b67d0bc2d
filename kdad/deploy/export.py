"""Export a trained run for deployment: ONNX, OpenVINO IR or TorchScript, plus metadata.json, self-checked.

This is the torch side of ``kdad.deploy`` (it imports torch, so ``kdad.deploy.__init__`` does not import it); the
standalone inferencer (``kdad.deploy.inferencer``) runs what it writes without torch.

anomalib exports its torch model the same way (``torch.onnx.export``, then OpenVINO's converter on the ONNX file)
and ships the pre-processing alongside. kdad's decisions:

* **Normalisation in the graph.** The graph takes RGB in [0, 1] at the model resolution (``image`` float32
  [N, 3, S, S], resized with the run's interpolation by ``kdad.imaging``) and applies the ImageNet mean/std itself,
  so no deployment can forget or re-implement it; metadata.json records the values (``applied_in_graph``).
* **Only (score, anomaly_map).** The graph is :class:`ExportGraph`: normalise -> ``module.model`` in eval mode ->
  ``score`` [N] and the blurred ``anomaly_map`` [N, S, S]; auxiliary outputs are left out. Tracing records only
  what the eval forward computes, so training-only networks (RD with Expert's expert, RD++'s projection loss,
  the pseudo-anomaly synthesis) cannot be in the file; ``export_check`` lists the weights the eval forward never
  touched and counts the weights the file holds. The batch dimension is dynamic.
* **float32 everywhere.** No fp16 weight compression (``openvino.save_model(..., compress_to_fp16=False)``): the
  thresholds were calibrated on float32 scores, and fp16 weights moved RD's scores and maps by 4e-3 of the map
  range (measured at 64 px), which flips decisions next to the threshold.
* **Self-check.** After writing the file, the exported model runs in its runtime (onnxruntime / OpenVINO through
  ``kdad.deploy.load_inferencer``, which also checks the graph's signature against metadata.json; TorchScript
  through ``torch.jit.load``) on ``check_images`` images of the run's test set, next to kdad's torch eval path
  (``module.model`` on the data layer's normalised tensors). Both see the identical pixels. The largest deviation
  of scores and maps, relative to the range of the torch maps over those images, must stay below ``tolerance``
  (default 1e-3): reordered float32 arithmetic (fused convolutions, another GEMM) differs by ~1e-6 relative
  (measured: at most 5e-6 for every method, ONNX, OpenVINO and TorchScript alike), while a wrong export is off by
  far more (fp16 weights: 4e-3; a blur whose reflect boundary folds wrongly: 5-7x the map range; a missing
  normalisation: O(1)), and 1e-3 of the map range moves a decision only for a score that close to the
  threshold. The figures go into metadata.json (``export_check``); above the tolerance the export raises
  :class:`ExportError` and leaves no metadata.json, so the folder cannot be loaded by mistake.

ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) first, stable for these CNNs and
fast; the dynamo exporter when it fails (``onnx_exporter="auto"``). The exporter is recorded in metadata.json.
The anomaly-map head's Gaussian blur caches banded matrices by the plain map size, and an eager forward before the
trace fills that cache, so the matrices enter the graph as constants, as in the eager model. The dynamo exporter may
keep a newer opset than ``opset`` where it cannot convert an operator down; metadata.json records the opset the
file holds.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from kdad.blocks.teacher import IMAGENET_MEAN, IMAGENET_STD
from kdad.data.dataset import normalize
from kdad.data.unified import build_datamodule
from kdad.deploy.errors import DeployError
from kdad.deploy.inferencer import load_inferencer
from kdad.deploy.metadata import (
    INPUT_NAME,
    MAP_OUTPUT,
    METADATA_FILE,
    MODEL_SUFFIXES,
    SCORE_OUTPUT,
    Metadata,
    Normalization,
    Teacher,
)
from kdad.errors import UserError, check_choice
from kdad.imaging import read_rgb, resize_rgb
from kdad.metrics.thresholds import ThresholdEstimate, Thresholds
from kdad.runner.trained import TrainedRun

log = logging.getLogger("kdad")

FORMATS = tuple(MODEL_SUFFIXES)
ONNX_EXPORTERS = ("auto", "torchscript", "dynamo")
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-3
EXPORT_FOLDER = "exported"
MODEL_STEM = "model"
# The trace runs on this many images (one more when the self-check has as many): the self-check then runs another
# batch size, which shows a batch size baked into the graph.
TRACE_BATCH = 2


class ExportError(UserError, DeployError):
    """An export that cannot be written or that fails its self-check; the message says which and by how much."""


class ExportGraph(nn.Module):
    """What an export computes: RGB [N,3,S,S] in [0,1] -> ImageNet normalisation -> the model -> (score, map)."""

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        output = self.model((image - self.mean) / self.std)
        return output.score, output.anomaly_map


def default_export_dir(trained: TrainedRun, fmt: str) -> Path:
    """``<run>/exported/<format>/``."""
    return trained.run_dir / EXPORT_FOLDER / fmt


def export_run(
    trained: TrainedRun,
    fmt: str,
    out_dir: Path | str | None = None,
    opset: int = DEFAULT_OPSET,
    check_images: int = 8,
    tolerance: float = DEFAULT_TOLERANCE,
    onnx_exporter: str = "auto",
) -> Path:
    """Write ``trained``'s model as ``fmt`` (onnx | openvino | torchscript) with metadata.json; returns the folder.

    The folder is ``out_dir`` or ``<run>/exported/<fmt>/``; it holds ``model.onnx``, ``model.xml`` + ``model.bin``
    or ``model.pt``, and ``metadata.json`` (:class:`kdad.deploy.metadata.Metadata`, with ``export_check``). The
    export runs on the CPU in float32 whatever device the module is on (the file does not depend on it). ``opset``
    applies to ONNX and OpenVINO (converted from ONNX); ``onnx_exporter``: ``auto`` (TorchScript-based, dynamo if
    that fails), ``torchscript`` or ``dynamo``. ``tolerance`` bounds the self-check's deviation relative to the map
    range (see the module docstring). Raises :class:`ExportError`.
    """
    fmt = check_choice(fmt, FORMATS, "export format", ExportError)
    onnx_exporter = check_choice(onnx_exporter, ONNX_EXPORTERS, "ONNX exporter", ExportError)
    if check_images < 1:
        raise ExportError(f"check_images must be at least 1, got {check_images}")
    if not tolerance > 0:
        raise ExportError(f"tolerance must be positive, got {tolerance}")
    folder = Path(out_dir).expanduser() if out_dir is not None else default_export_dir(trained, fmt)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).unlink(missing_ok=True)  # until this export has passed its check
    size = int(trained.config.data.image_size)
    interpolation = str(trained.config.data.get("interpolation", "bilinear"))
    images, source = check_batch(trained, check_images, size, interpolation)

    model = _cpu_float_model(trained.module.model)
    graph = ExportGraph(model).eval()
    with torch.no_grad():
        reference, usage = _reference(model, images)
        trace_batch = TRACE_BATCH if len(images) != TRACE_BATCH else TRACE_BATCH + 1
        example = torch.from_numpy(to_unit_batch(images[np.arange(trace_batch) % len(images)]))
        graph(example)  # builds the blur's band matrices outside the trace
        with _quiet_tracer():
            written = _WRITERS[fmt](graph, example, folder, opset, onnx_exporter)
    metadata = build_metadata(trained, fmt, size, interpolation, written)
    metadata.save(folder)  # the inferencer reads it for the self-check
    try:
        exported = _run_export(folder, fmt, images)
    except DeployError as exc:
        (folder / METADATA_FILE).unlink(missing_ok=True)
        raise ExportError(f"the exported model in {folder} does not run: {exc}") from exc
    check = deviations(reference, exported, tolerance)
    check.update(
        images=len(images),
        images_source=source,
        exporter=written["exporter"],
        precision="float32",
        weights=_weights_record(model, usage, written["graph_weights"]),
    )
    passed = check["relative"] <= tolerance
    check["passed"] = passed
    final = build_metadata(trained, fmt, size, interpolation, written, export_check=check)
    if not passed:
        (folder / METADATA_FILE).unlink(missing_ok=True)
        raise ExportError(
            f"the {fmt} export in {folder} differs from kdad's torch model on {len(images)} images: max score "
            f"deviation {check['max_abs_score_deviation']:.3g}, max map deviation {check['max_abs_map_deviation']:.3g}"
            f", {check['relative']:.3g} of the map range {check['map_range']:.3g} (tolerance {tolerance:g}). "
            "The folder holds the model file but no metadata.json."
        )
    final.save(folder)
    log.info("Exported %s to %s (relative deviation %.2g)", trained.module.name, folder, check["relative"])
    return folder


# ---------------------------------------------------------------------------------------------- check images
def check_batch(trained: TrainedRun, count: int, size: int, interpolation: str) -> tuple[np.ndarray, str]:
    """uint8 [N, S, S, 3] check images and where they came from.

    ``count`` images spread over the run's test set (via its data module), else over its training images, each
    decoded and resized by ``kdad.imaging`` as training and the inferencer do; seeded noise images when the data
    is not available on this machine (the check then still compares the two models, on other inputs).
    """
    reasons = []
    try:
        datamodule = build_datamodule(trained.config.data)
    except Exception as exc:  # the data may live on another machine: any failure falls back to noise images
        datamodule, reasons = None, [_reason(exc)]
    for split in ("test", "train") if datamodule is not None else ():
        try:
            samples = sorted(datamodule.find_samples(split), key=lambda s: str(s.image_path))
            if not samples:
                reasons.append(f"no {split} images")
                continue
            picks = np.unique(np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int))
            images = [resize_rgb(read_rgb(samples[i].image_path), size, interpolation) for i in picks]
            return np.stack(images), f"{split} set ({len(samples)} images, {len(images)} spread over it)"
        except Exception as exc:
            reasons.append(f"{split}: {_reason(exc)}")
    reason = "; ".join(reasons)
    log.warning("Export check on seeded noise images: the run's data is not available here (%s)", reason)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8), f"seeded noise ({reason})"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def to_unit_batch(images: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S, 3] -> float32 [N, 3, S, S] in [0, 1]: the export's input, as the inferencer prepares it."""
    batch = images.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------- tracing
@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """The tracer warns about every shape it turns into a constant: the export is at a fixed resolution, by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch 2.14 deprecates torch.jit: still exported
        yield


def _cpu_float_model(model: nn.Module) -> nn.Module:
    """The model itself when it is on the CPU in float32, else a CPU float32 copy (the module stays as it is)."""
    tensors = [*model.parameters(), *model.buffers()]
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    floats = all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    if on_cpu and floats:
        return model.eval()
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()


class _TensorUse(TorchFunctionMode):
    """Records every tensor a torch operation receives: which weights the eval forward reads."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        stack: list[Any] = [*args, *kwargs.values()]
        while stack:
            item = stack.pop()
            if isinstance(item, Tensor):
                self.seen.add(id(item))
            elif isinstance(item, list | tuple):
                stack.extend(item)
        return func(*args, **kwargs)


def _reference(model: nn.Module, images: np.ndarray) -> tuple[dict[str, np.ndarray], set[int]]:
    """kdad's torch eval path on the check images (the data layer's normalisation), and the weights it read."""
    batch = torch.stack([normalize(image) for image in images])
    recorder = _TensorUse()
    with recorder:
        output = model(batch)
    return {"score": output.score.float().numpy(), "map": output.anomaly_map.float().numpy()}, recorder.seen


# ---------------------------------------------------------------------------------------------- writers
def _export_onnx(graph: ExportGraph, example: Tensor, path: Path, opset: int, exporter: str) -> str:
    """``path`` written by the TorchScript-based exporter, or the dynamo one; returns the exporter used."""
    names = {"input_names": [INPUT_NAME], "output_names": [SCORE_OUTPUT, MAP_OUTPUT], "opset_version": opset}
    errors = []
    if exporter in ("auto", "torchscript"):
        try:
            axes = {INPUT_NAME: {0: "N"}, SCORE_OUTPUT: {0: "N"}, MAP_OUTPUT: {0: "N"}}
            torch.onnx.export(graph, (example,), str(path), dynamic_axes=axes, dynamo=False, **names)
            return "torch.onnx.export(dynamo=False)"
        except Exception as exc:  # the exporter raises many types; the dynamo exporter gets its turn
            if exporter == "torchscript":
                raise ExportError(f"the TorchScript-based ONNX exporter failed: {exc}") from exc
            errors.append(f"TorchScript-based exporter: {type(exc).__name__}: {exc}")
            log.warning("TorchScript-based ONNX export failed (%s); trying the dynamo exporter", exc)
    try:
        batch = torch.export.Dim("N", min=1, max=4096)
        program = torch.onnx.export(
            graph, (example,), dynamic_shapes={"image": {0: batch}}, dynamo=True, verbose=False, **names
        )
        program.save(str(path))
        return "torch.onnx.export(dynamo=True)"
    except Exception as exc:
        errors.append(f"dynamo exporter: {type(exc).__name__}: {exc}")
        raise ExportError("ONNX export failed: " + "; ".join(errors)) from exc


def _onnx_weights(path: Path) -> tuple[int, int]:
    """(elements in initializers and constant tensors, default-domain opset) of an ONNX file."""
    model = onnx.load(str(path))
    count = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            count += sum(int(np.prod(attr.t.dims)) for attr in node.attribute if attr.name == "value")
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    return count, opset


def _write_onnx(graph: ExportGraph, example: Tensor, folder: Path, opset: int, exporter: str) -> dict[str, Any]:
    path = folder / f"{MODEL_STEM}.onnx"
    used = _export_onnx(graph, example, path, opset, exporter)
    weights, actual_opset = _onnx_weights(path)
    return {"model_file": path.name, "exporter": used, "opset": actual_opset, "graph_weights": weights}


def _write_openvino(graph: ExportGraph, example: Tensor, folder: Path, opset: int, exporter: str) -> dict[str, Any]:
    try:
        import openvino
    except ImportError as exc:
        raise ExportError("OpenVINO is not installed: pip install kdad[openvino] (or pip install openvino)") from exc
    with tempfile.TemporaryDirectory(prefix="kdad-export-") as tmp:
        onnx_path = Path(tmp) / f"{MODEL_STEM}.onnx"
        used = _export_onnx(graph, example, onnx_path, opset, exporter)
        weights, actual_opset = _onnx_weights(onnx_path)
        converted = openvino.convert_model(str(onnx_path))
        xml = folder / f"{MODEL_STEM}.xml"
        # fp16 weight compression would shift the scores the thresholds were calibrated on
        openvino.save_model(converted, str(xml), compress_to_fp16=False)
    return {
        "model_file": xml.name,
        "exporter": f"{used} -> openvino.convert_model",
        "opset": actual_opset,
        "graph_weights": weights,
    }


def _write_torchscript(graph: ExportGraph, example: Tensor, folder: Path, opset: int, exporter: str) -> dict[str, Any]:
    traced = torch.jit.trace(graph, (example,), check_trace=False)
    # Freezing inlines the weights the graph reads as constants and drops every other attribute, so networks the
    # eval forward never runs (an expert) are not saved either.
    frozen = torch.jit.freeze(traced)
    path = folder / f"{MODEL_STEM}.pt"
    torch.jit.save(frozen, str(path))
    weights = sum(t.numel() for t in [*frozen.parameters(), *frozen.buffers()])
    for node in frozen.graph.findAllNodes("prim::Constant"):
        if node.output().type().kind() == "TensorType":
            weights += node.t("value").numel()
    return {
        "model_file": path.name,
        "exporter": "torch.jit.trace + torch.jit.freeze",
        "opset": None,
        "graph_weights": weights,
    }


_WRITERS = {"onnx": _write_onnx, "openvino": _write_openvino, "torchscript": _write_torchscript}


# ---------------------------------------------------------------------------------------------- self-check
def _run_export(folder: Path, fmt: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """The exported model's outputs on the check images, in its own runtime."""
    batch = to_unit_batch(images)
    if fmt == "torchscript":
        try:
            with _quiet_tracer():
                loaded = torch.jit.load(str(folder / f"{MODEL_STEM}.pt"), map_location="cpu")
            with torch.no_grad():
                score, anomaly_map = loaded(torch.from_numpy(batch))
        except Exception as exc:  # torch.jit raises RuntimeError and its own types
            raise DeployError(f"torch.jit cannot run {folder / f'{MODEL_STEM}.pt'}: {exc}") from exc
        size = images.shape[1]
        if tuple(score.shape) != (len(images),) or tuple(anomaly_map.shape) != (len(images), size, size):
            raise DeployError(
                f"{folder / f'{MODEL_STEM}.pt'} returns shapes {tuple(score.shape)} and {tuple(anomaly_map.shape)} "
                f"for {len(images)} images, expected ({len(images)},) and ({len(images)}, {size}, {size})"
            )
        return {"score": score.numpy(), "map": anomaly_map.numpy()}
    inferencer = load_inferencer(folder)  # checks the graph's signature against metadata.json
    scores, maps = inferencer._outputs(batch, len(images))
    return {"score": scores, "map": maps}


def deviations(reference: dict[str, np.ndarray], exported: dict[str, np.ndarray], tolerance: float) -> dict[str, Any]:
    """Max abs deviations of scores and maps, and the larger one relative to the reference map range."""
    score_dev = float(np.max(np.abs(exported["score"].astype(np.float64) - reference["score"])))
    map_dev = float(np.max(np.abs(exported["map"].astype(np.float64) - reference["map"])))
    map_range = float(reference["map"].max() - reference["map"].min())
    scores = reference["score"]
    scale = map_range if map_range > 0 else 1.0  # constant maps: absolute deviation
    relative = max(score_dev, map_dev) / scale
    return {
        "max_abs_score_deviation": score_dev,
        "max_abs_map_deviation": map_dev,
        "map_range": map_range,
        "score_range": [float(scores.min()), float(scores.max())],
        "relative": relative if np.isfinite(relative) else float(np.finfo(np.float64).max),
        "tolerance": float(tolerance),
    }


def _weights_record(model: nn.Module, seen: set[int], graph_weights: int) -> dict[str, Any]:
    """Weights of the model (its state dict's float tensors, frozen teachers included) that the eval forward reads,
    those it never reads, by network (e.g. RD with Expert's ``expert``), and the number of weights in the file.

    The file holds fewer than the eval forward reads where the exporter folds BatchNorm into convolutions or drops
    computations whose results go nowhere (a backbone's stages past the last tapped one).
    """
    read = 0
    unread: dict[str, int] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if not tensor.is_floating_point():
            continue  # BatchNorm's num_batches_tracked: a counter, not a weight
        if id(tensor) in seen:
            read += tensor.numel()
        else:
            network = name.split(".")[0]
            unread[network] = unread.get(network, 0) + tensor.numel()
    return {"graph": int(graph_weights), "eval_forward": read, "not_in_eval_forward": unread}


# ---------------------------------------------------------------------------------------------- metadata
def build_metadata(
    trained: TrainedRun,
    fmt: str,
    size: int,
    interpolation: str,
    written: dict[str, Any],
    export_check: dict[str, Any] | None = None,
) -> Metadata:
    """metadata.json of an export of ``trained`` (thresholds from the run; null when it has none)."""
    return Metadata(
        format=fmt,
        model_file=written["model_file"],
        method=trained.module.name,
        teacher=_teacher(trained),
        image_size=size,
        interpolation=interpolation,
        normalization=Normalization(mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD), applied_in_graph=True),
        thresholds=metadata_thresholds(trained.thresholds),
        category_thresholds=None
        if not trained.category_thresholds
        else {c: metadata_thresholds(t) for c, t in trained.category_thresholds.items()},
        export_check=export_check or {},
        opset=written["opset"],
        extra={
            "exporter": written["exporter"],
            "source": {"run_dir": str(trained.run_dir), "checkpoint": str(trained.checkpoint)},
        },
    )


def _teacher(trained: TrainedRun) -> Teacher:
    network = getattr(trained.module.model, "teacher", None)
    if network is not None and hasattr(network, "backbone_name"):
        return Teacher(backbone=str(network.backbone_name), weights=getattr(network, "weights", None))
    config = trained.config.get("teacher") or {}
    return Teacher(backbone=str(config.get("backbone", "unknown")), weights=config.get("weights"))


def metadata_thresholds(thresholds: Thresholds | None) -> dict[str, dict[str, Any] | None] | None:
    """The run's thresholds as metadata records; None (scores only) when the run has none."""
    if thresholds is None:
        return None
    return {
        "image": _record(thresholds.image),
        "pixel": None if thresholds.pixel is None else _record(thresholds.pixel),
    }


def _record(estimate: ThresholdEstimate) -> dict[str, Any]:
    """A threshold record with every field; a threshold given without its score range (a manual one) gets the
    threshold itself as both ends, so normalised scores become a step at the threshold (0, 0.5, 1)."""
    record = estimate.to_dict()
    if record["score_min"] is None or record["score_max"] is None:
        record["score_min"] = record["score_max"] = estimate.value
        note = "no score range stored: normalised scores are 0 / 0.5 / 1 (below / at / above the threshold)"
        record["note"] = f"{record['note']}; {note}" if record["note"] else note
    return record
