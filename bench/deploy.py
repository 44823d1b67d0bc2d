"""Deployment figures of one method (``bench.deploy``), measured in the method's process right after its
``32-true`` row, on the module that row trained (one epoch: enough for speed, and a trained model for the
deviations and decisions). Nothing is written outside the row's throw-away folder.

1. **Exports.** The in-memory module is wrapped in a :class:`kdad.runner.trained.TrainedRun` (its config, the
   throw-away run folder, the module's thresholds) and exported by ``kdad.deploy.export.export_run`` to ONNX and to
   OpenVINO IR, each with its own self-check; the seconds of each export are recorded.
2. **Runtimes against torch, interleaved.** ``bench.deploy.batches`` batches of ``bench.batch_size`` test images
   (spread over the test set, decoded and resized by ``kdad.imaging`` like the export's self-check), and the
   first ``images_b1`` of them one by one, go through kdad's torch eval path (``ExportGraph`` run eagerly: the
   [0,1] -> ImageNet normalisation and ``module.model``, eval mode, ``torch.inference_mode``, no metrics: what
   the exported graph computes) and through each exported model in its runtime as ``kdad.deploy.load_inferencer``
   loads it (CPU, the runtime's default threads; ``Inferencer._outputs``: the graph call, no resize or
   post-processing). The runtimes take turns (:func:`interleaved`): ``bench.deploy.rounds`` rounds in which each,
   in an order that rotates, gets a short pause and an untimed warm-up call, then its timed calls over all the
   images; so all are timed in the same stretch of the run, without one runtime's idle spinning threads counting
   against the next. Inputs are the same float32 [N, 3, S, S] arrays for all; outputs come back as numpy arrays.
   On CUDA, torch on the GPU (the trained model itself, inputs copied in and outputs copied back inside the timed
   call) takes its turn too; ONNX Runtime and OpenVINO stay on the CPU (onnxruntime-gpu and TensorRT are out of
   scope).
3. **Deviation and decisions.** The outputs of the batched calls: max abs deviation of the maps and of the
   scores exported vs torch (also relative to the torch maps' range, as the export's self-check states it), and
   how many OK/NOK image decisions and mask pixels flip. Thresholds: the module's own when it has some, else the
   median of the torch scores over these images (image) and the 99th percentile of the torch map values (pixel):
   a threshold in the thick of the scores, where a deviation flips a decision most easily.
4. **kdad.predict end to end** (``bench.deploy.predict.methods``): ``predict.images`` test images written as PNGs
   at the model size into a folder, then ``kdad.runner.predict.find_images`` + ``predict_images`` (the loop of
   ``python -m kdad.predict``: threaded decoding, the model, post-processing, masks, overlays and the CSV) with
   the torch backend on ``bench.device`` and ``conf/predict.yaml``'s batch size and workers, against the pure
   forward: ``module.model`` on the same images, already decoded, normalised, batched the same way and on the
   device. The predictions use the thresholds of 3. (so masks are written too). Predict and pure forward
   alternate ``predict.rounds`` times after one untimed warm-up batch of each; the figure is the median of the
   rounds' ratios. Model loading is not in it (``predict_images`` is what ``PredictSummary.seconds`` times).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from bench.timing import now
from kdad.deploy.export import DEFAULT_TOLERANCE, ExportGraph, check_batch, deviations, export_run, to_unit_batch
from kdad.deploy.inferencer import load_inferencer
from kdad.deploy.metadata import Metadata
from kdad.imaging import read_rgb
from kdad.metrics.thresholds import Thresholds, manual_threshold
from kdad.runner.compare import CONF_DIR
from kdad.runner.predict import PredictionWriter, PredictSummary, TorchBackend, find_images, predict_images
from kdad.runner.results import TESTED_IN_MEMORY
from kdad.runner.trained import TrainedRun

EXPORTED = ("onnx", "openvino")
PIXEL_QUANTILE = 0.99
# idle time before a runtime's turn, for the previous runtime's threads to stop spinning
SWITCH_PAUSE_SECONDS = 0.05

Outputs = tuple[np.ndarray, np.ndarray]  # (scores [N], maps [N, S, S])


def measure_deploy(settings: DictConfig, method: str, cfg: DictConfig, module: Any, workdir: Path) -> dict[str, Any]:
    """Every deployment figure of ``method`` (see the module docstring); ``workdir`` is the row's throw-away folder."""
    spec = settings.deploy
    started = time.perf_counter()
    device = torch.device(settings.device)
    size = int(cfg.data.image_size)
    interpolation = str(cfg.data.get("interpolation", "bilinear"))
    batch = int(settings.batch_size)
    trained = TrainedRun(
        run_dir=workdir / "deploy-run",
        config=cfg,
        module=module,
        checkpoint=Path(TESTED_IN_MEMORY),
        thresholds=module.thresholds,
    )
    out: dict[str, Any] = {"method": method, "image_size": size, "batch_size": batch}

    exports: dict[str, Any] = {}
    out["exports"] = {}
    for fmt in EXPORTED:
        tick = time.perf_counter()
        try:
            folder = export_run(trained, fmt, check_images=int(spec.check_images))
            exports[fmt] = load_inferencer(folder, device="CPU")
        except Exception as exc:  # reported in the table and the JSON; the other runtime and predict go on
            out["exports"][fmt] = {"available": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        check = Metadata.load(folder).export_check
        out["exports"][fmt] = {
            "available": True,
            "seconds": time.perf_counter() - tick,
            "self_check_relative": check.get("relative"),
            "threads": runtime_threads(exports[fmt]),
        }

    images, source = check_batch(trained, int(spec.batches) * batch, size, interpolation)
    if len(images) > batch:
        images = images[: len(images) // batch * batch]  # whole batches (a test set smaller than one: all of it)
    unit = to_unit_batch(images)
    batches = [unit[start : start + batch] for start in range(0, len(unit), batch)]
    singles = [unit[i : i + 1] for i in range(min(int(spec.images_b1), len(unit)))]
    out.update(images=len(images), images_b1=len(singles), images_source=source, torch_threads=torch.get_num_threads())

    runners = torch_runners(module.model, device)
    for fmt, inferencer in exports.items():
        runners[fmt] = _inferencer_runner(inferencer)
    rounds = int(spec.rounds)
    seconds_b1, _ = interleaved(runners, singles, device, rounds)
    seconds_bn, outputs = interleaved(runners, batches, device, rounds)
    speed: dict[str, dict[str, dict[str, float]]] = {}
    for name in runners:
        place, runtime = ("cuda", "torch") if name == "torch_cuda" else ("cpu", name)
        speed.setdefault(place, {})[runtime] = {
            "b1_images_per_s": rounds * len(singles) / seconds_b1[name],
            "batch_images_per_s": rounds * len(images) / seconds_bn[name],
        }
    out["speed"] = speed

    reference = _joined(outputs["torch"])
    thresholds, threshold_source = decision_thresholds(module.thresholds, reference)
    out["thresholds"] = {
        "source": threshold_source,
        "image": thresholds.image.value,
        "pixel": None if thresholds.pixel is None else thresholds.pixel.value,
    }
    out["deviation"] = {fmt: decision_deviation(reference, _joined(outputs[fmt]), thresholds) for fmt in exports}

    out["predict"] = None
    if method in (spec.predict.methods or []):
        folder = images_for_predict(trained, spec.predict, size, interpolation, workdir)
        out["predict"] = measure_predict(
            spec.predict, dataclasses.replace(trained, thresholds=thresholds), folder, device, workdir
        )
    out["seconds"] = time.perf_counter() - started
    return out


# ---------------------------------------------------------------------------------------------- runtimes
def torch_runners(model: torch.nn.Module, device: torch.device) -> dict[str, Callable[[np.ndarray], Outputs]]:
    """kdad's torch eval path (normalisation + ``model``, as :class:`ExportGraph` computes it) on the CPU, and on
    the GPU too when the bench runs on CUDA (the model itself there; a CPU float32 copy for the CPU)."""
    on_device = ExportGraph(model).to(device).eval()
    if device.type == "cpu":
        return {"torch": _torch_runner(on_device, device)}
    cpu = ExportGraph(copy.deepcopy(model).to(device="cpu", dtype=torch.float32)).eval()
    return {"torch": _torch_runner(cpu, torch.device("cpu")), "torch_cuda": _torch_runner(on_device, device)}


def _torch_runner(graph: ExportGraph, device: torch.device) -> Callable[[np.ndarray], Outputs]:
    def run(batch: np.ndarray) -> Outputs:
        with torch.inference_mode():
            score, anomaly_map = graph(torch.from_numpy(batch).to(device))
            return score.float().cpu().numpy(), anomaly_map.float().cpu().numpy()

    return run


def _inferencer_runner(inferencer: Any) -> Callable[[np.ndarray], Outputs]:
    # the graph call with kdad.deploy's shape checks, as export_run's self-check calls it: no resize, no
    # post-processing (the inputs are already at the model size)
    return lambda batch: inferencer._outputs(batch, len(batch))


def runtime_threads(inferencer: Any) -> dict[str, Any]:
    """The runtime's thread settings as loaded (for the JSON: runtimes run at their defaults)."""
    try:
        if hasattr(inferencer, "_session"):
            options = inferencer._session.get_session_options()
            return {"intra_op_num_threads": options.intra_op_num_threads or "default (physical cores)"}
        compiled = inferencer._compiled
        return {key: str(compiled.get_property(key)) for key in ("INFERENCE_NUM_THREADS", "NUM_STREAMS")}
    except Exception as exc:  # diagnostics only
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def interleaved(
    runners: dict[str, Callable[[np.ndarray], Outputs]], inputs: list[np.ndarray], device: torch.device, rounds: int
) -> tuple[dict[str, float], dict[str, list[Outputs]]]:
    """Seconds of every runner over ``inputs`` (summed over ``rounds``) and its outputs (of the first round).

    The runners take turns block by block: in every round each runner, in an order that rotates from round to
    round, gets a pause and one untimed warm-up call, then the timed calls over all ``inputs``. Runtimes keep
    their worker threads spinning for a while after a call; call-by-call alternation measured that spinning as
    the next runtime's time (torch 10-100x slower behind OpenVINO on 2 cores), and the pause and the warm-up call
    absorb it. Clock readings synchronise CUDA.
    """
    names = list(runners)
    seconds = dict.fromkeys(names, 0.0)
    outputs: dict[str, list[Outputs]] = {name: [] for name in names}
    for turn in range(max(1, rounds)):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(SWITCH_PAUSE_SECONDS)
            runners[name](inputs[0])
            start = now(device)
            results = [runners[name](item) for item in inputs]
            seconds[name] += now(device) - start
            if turn == 0:
                outputs[name] = results
    return seconds, outputs


def _joined(outputs: list[Outputs]) -> dict[str, np.ndarray]:
    return {"score": np.concatenate([o[0] for o in outputs]), "map": np.concatenate([o[1] for o in outputs])}


# ---------------------------------------------------------------------------------------------- decisions
def decision_thresholds(own: Thresholds | None, reference: dict[str, np.ndarray]) -> tuple[Thresholds, str]:
    """The module's thresholds, else the median torch score (image) and the 99th percentile of the torch maps
    (pixel) over the measured images, with the score ranges an export would record."""
    if own is not None:
        return own, f"method's ({own.image.policy})"
    scores, maps = reference["score"], reference["map"]
    image = manual_threshold(
        float(np.median(scores)), "image", score_min=float(scores.min()), score_max=float(scores.max())
    )
    pixel = manual_threshold(
        float(np.quantile(maps, PIXEL_QUANTILE)), "pixel", score_min=float(maps.min()), score_max=float(maps.max())
    )
    return Thresholds(image, pixel), f"median score, p{round(100 * PIXEL_QUANTILE)} map"


def decision_deviation(
    reference: dict[str, np.ndarray], exported: dict[str, np.ndarray], thresholds: Thresholds
) -> dict[str, Any]:
    """Max abs deviations exported vs torch, and the image decisions and mask pixels that flip (NOK iff score >
    threshold, as kdad decides)."""
    figures = deviations(reference, exported, DEFAULT_TOLERANCE)
    image = thresholds.image.value
    flips = (reference["score"] > image) != (exported["score"] > image)
    out = {
        "images": int(len(reference["score"])),
        "max_abs_map": figures["max_abs_map_deviation"],
        "max_abs_score": figures["max_abs_score_deviation"],
        "map_range": figures["map_range"],
        "relative": figures["relative"],
        "image_flips": int(flips.sum()),
        "nok_torch": int((reference["score"] > image).sum()),
    }
    if thresholds.pixel is not None:
        pixel = thresholds.pixel.value
        out["pixel_flips"] = int(((reference["map"] > pixel) != (exported["map"] > pixel)).sum())
        out["pixels"] = int(reference["map"].size)
    return out


# ---------------------------------------------------------------------------------------------- kdad.predict
def predict_defaults(spec: DictConfig) -> tuple[int, int]:
    """(batch size, workers): the bench's settings, else ``conf/predict.yaml``'s (the command's defaults)."""
    defaults = OmegaConf.load(CONF_DIR / "predict.yaml")
    batch = spec.get("batch_size") or defaults.batch_size
    workers = spec.get("workers") or defaults.workers
    return int(batch), int(workers)


def images_for_predict(trained: TrainedRun, spec: DictConfig, size: int, interpolation: str, workdir: Path) -> Path:
    """A folder of ``spec.images`` test images (spread over the test set) as PNGs at the model size."""
    images, _ = check_batch(trained, int(spec.images), size, interpolation)
    folder = workdir / "deploy-predict-input"
    folder.mkdir(parents=True, exist_ok=True)
    for index, rgb in enumerate(images):
        Image.fromarray(rgb).save(folder / f"{index:04d}.png")
    return folder


def measure_predict(
    spec: DictConfig, trained: TrainedRun, folder: Path, device: torch.device, workdir: Path
) -> dict[str, Any]:
    """``kdad.predict``'s loop (torch backend) over the PNGs of ``folder`` against the pure forward of the same
    images, alternated ``spec.rounds`` times (see the module docstring)."""
    batch_size, workers = predict_defaults(spec)
    images = find_images(str(folder))
    backend = TorchBackend(trained, str(device))
    model = trained.module.model
    prepared = [backend.prepare(read_rgb(image.path)) for image in images]
    batches = [torch.stack(prepared[i : i + batch_size]).to(device) for i in range(0, len(prepared), batch_size)]

    def predict(name: str, subset: list[Any]) -> PredictSummary:
        output = workdir / "deploy-predict-output" / name
        writer = PredictionWriter(output)
        summary = PredictSummary(output=output, backend=backend.name)
        try:
            return predict_images(subset, backend, writer, summary, batch_size, workers, progress=False)
        finally:
            writer.close()

    def forward(subset: list[torch.Tensor]) -> float:
        start = now(device)
        with torch.inference_mode():
            for item in subset:
                model(item)
        return now(device) - start

    predict("warmup", images[:batch_size])
    forward(batches[:1])
    rounds = []
    for index in range(max(1, int(spec.rounds))):
        summary = predict(f"round{index}", images)
        pure = forward(batches)
        rounds.append(
            {"predict_seconds": summary.seconds, "model_seconds": summary.model_seconds, "forward_seconds": pure}
        )
        if summary.failed:
            raise RuntimeError(
                f"kdad.predict failed on {len(summary.failed)} of the bench's images: {summary.failed[0]}"
            )
    ratios = [r["predict_seconds"] / r["forward_seconds"] for r in rounds]
    predict_seconds = statistics.median(r["predict_seconds"] for r in rounds)
    forward_seconds = statistics.median(r["forward_seconds"] for r in rounds)
    return {
        "backend": backend.name,
        "device": device.type,
        "images": len(images),
        "batch_size": batch_size,
        "workers": workers,
        "predict_images_per_s": len(images) / predict_seconds,
        "forward_images_per_s": len(images) / forward_seconds,
        "predict_over_forward": statistics.median(ratios),
        # the model's own calls inside predict ÷ the pure forward: above 1 where decoding and writing threads
        # share the cores with the model (the rest of predict ÷ forward is what runs outside the model's calls)
        "model_in_predict_over_forward": statistics.median(r["model_seconds"] / r["forward_seconds"] for r in rounds),
        "rounds": rounds,
    }
