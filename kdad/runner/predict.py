"""Predictions of a finished run on new images: ``python -m kdad.predict run_dir=<run> input=<image | folder | glob>``.

What anomalib does: ``anomalib predict`` (``Engine.predict(model, data_path=..., ckpt_path=...)``) wraps an image
or a folder in a ``PredictDataset``, runs the model's own pre-processing transform, post-processes every batch
(min-max normalisation against the thresholds stored with the model, labels, masks) and lets a visualisation
callback save one picture per image; the predictions come back as batches in memory, with no table on disk.

What kdad decided:

* Inputs are one image, a folder (recursive; .png .jpg .jpeg .bmp .tif .tiff in any case; names starting with "."
  are skipped, e.g. macOS "._" resource files) or a glob (quote it for the shell: ``'input=shots/**/*.png'``). Any
  size and mode is decoded like training (``kdad.imaging.read_rgb``: grayscale, RGBA, 16-bit, palette -> RGB).
* ``<output>/predictions.csv`` has one row per file (``CSV_COLUMNS``): raw ``score``, anomalib-style
  ``normalized_score`` (0.5 = the image threshold), ``decision`` OK/NOK, the original ``width``/``height``, the
  mask and overlay files (relative to the output folder) and ``error``: a file that cannot be read gets a row
  with only ``path`` and ``error`` (also listed in ``failed.txt``) and the command goes on. Rows are written and
  flushed batch by batch, so an interrupted command keeps everything predicted so far.
* ``masks/<relative path>.png`` (0/255, map > pixel threshold) and ``overlays/<relative path>.png`` (heat map over
  the image, mask outline) are at the image's ORIGINAL size; the relative path keeps the input's sub-folders and
  the file's own name (``masks/good/000.png.png``), so same-named files of different folders or formats do not
  collide. The map is stretched back from the square model input with ``kdad.deploy.postprocess.resize_map``.
* One post-processing implementation: the torch backend builds its result from the same
  ``kdad.deploy.postprocess`` functions the exported-model inferencer uses (normalize_scores, decide, resize_map,
  binary_mask, overlay), on the threshold records an export writes (``kdad.deploy.export.metadata_thresholds``),
  with the run's own pre-processing (``kdad.imaging.read_rgb``, ``resize_rgb`` to ``config.data.image_size`` with
  ``config.data.interpolation``, then the data layer's ``kdad.data.dataset.normalize``: /255 and ImageNet
  mean/std, bit-identical to the test loader) and ``torch.inference_mode``. ``backend=onnx|openvino`` runs
  ``<run>/exported/<format>/`` through ``kdad.deploy.inferencer.load_inferencer`` and does not import torch;
  both backends write the same CSV up to float rounding (tests/test_predict.py).
* A unified run (one model for several categories, ``data.unified=true``) decides each image with its own
  category's thresholds. ``category=<name>`` gives the category of every input; without it, each image's category
  is inferred from its path: the deepest folder of the path (resolved, file name excluded) named like one of the
  run's categories (``data/mvtec/bottle/test/good/000.png`` -> ``bottle``). An input whose category neither says
  stops the command before anything is predicted (exit 2), naming the images and the run's categories.
  predictions.csv then has a ``category`` column after ``path``.
* A run without stored thresholds (older runs) gets scores only: empty ``decision`` and ``normalized_score``, no
  masks, and one warning; its overlays spread each map over its own (min, max), as ``Inferencer.overlay`` does,
  so they show where a map is highest but their colours do not compare across images.
* Throughput: files are decoded, resized and normalised on a thread pool (Pillow and numpy release the GIL)
  while the model runs the previous batch, and the post-processing and PNG writing of a batch (OpenCV, fast zlib
  settings: ``PNG_OPTIONS``) overlaps the next forward pass. The torch model runs in the run's memory format.
* Exit status (``python -m kdad.predict``): 0 when every file was predicted, 1 when some could not be read (they
  are listed), 2 for a user error (no run, no export, an input without images) with ``kdad: error: ...``, 130
  when interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np
from omegaconf import DictConfig

from kdad.deploy.metadata import METADATA_FILE
from kdad.deploy.postprocess import (
    Prediction,
    display_range,
    make_prediction,
    overlay,
)
from kdad.errors import ConfigError, UserError, check_choice
from kdad.imaging import ImageReadError, read_rgb, resize_rgb

if TYPE_CHECKING:
    from kdad.runner.trained import TrainedRun

log = logging.getLogger("kdad")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
BACKENDS = ("torch", "onnx", "openvino")
# <run>/exported/<format>/ (kdad.deploy.export.EXPORT_FOLDER; not imported: that module imports torch, and the
# exported backends run without it)
EXPORT_FOLDER = "exported"
CSV_NAME = "predictions.csv"
FAILED_NAME = "failed.txt"
MASKS_DIR = "masks"
OVERLAYS_DIR = "overlays"
CSV_COLUMNS = ("path", "score", "normalized_score", "decision", "width", "height", "mask", "overlay", "error")
EXIT_ALL_PREDICTED = 0
EXIT_SOME_FAILED = 1
# zlib level 1 with run-length matching for masks and overlays. Measured on 256 px overlays of textures: 3.3 ms and
# 101 KB per overlay, against 4.1 ms / 112 KB (level 1), 5.7 ms / 109 KB (level 3) and 1.4 ms / 192 KB (no
# compression); masks 0.35 ms / 2 KB.
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
GLOB_CHARS = "*?["
# failed files named in the printed summary (all of them are in the CSV and failed.txt)
MAX_LISTED_FAILURES = 5


class PredictError(UserError):
    """A prediction command that cannot start: no run, no export, an input without images."""


@dataclass(frozen=True)
class InputImage:
    """One file to predict: ``path`` as found, ``relative`` its path below the input (names its output files);
    ``category``: its category, for a unified run."""

    path: Path
    relative: PurePath
    category: str | None = None


@dataclass(frozen=True)
class Records:
    """The run's threshold records as in metadata.json (``kdad.deploy.postprocess`` reads value, score_min and
    score_max); ``image`` None: a run without thresholds (scores only)."""

    image: Mapping[str, Any] | None
    pixel: Mapping[str, Any] | None


def category_records(table: Mapping[str, Mapping[str, Any] | None] | None) -> dict[str, Records] | None:
    """A unified run's ``{category: {"image", "pixel"}}`` threshold records as Records, or None."""
    if not table:
        return None
    return {c: Records(t["image"], t.get("pixel")) if t else Records(None, None) for c, t in table.items()}


def image_category(path: Path, categories: Sequence[str]) -> str | None:
    """The category of an input of a unified run: the deepest folder of its resolved path named like a category."""
    known = set(categories)
    for part in reversed(path.resolve().parent.parts):
        if part in known:
            return part
    return None


def postprocess(score: float, model_map: np.ndarray, size: tuple[int, int], records: Records) -> Prediction:
    """The Prediction of raw model outputs for an image of ``size`` = (height, width): the exported-model
    inferencers' own post-processing (``kdad.deploy.postprocess.make_prediction``)."""
    return make_prediction(score, model_map, size, records.image, records.pixel)


# ------------------------------------------------------------------------------------------------ backends
Finisher = Callable[[], Prediction]


class Backend(Protocol):
    """A loaded model. ``prepare`` runs on the decode threads; ``forward`` on the main thread returns, per
    image, a function that completes its Prediction (called on the writer threads)."""

    name: str
    run_dir: Path
    records: Records
    #: a unified run's records per category (each image decided with its category's), else None
    category_records: dict[str, Records] | None

    def prepare(self, rgb: np.ndarray) -> Any: ...

    def forward(
        self, rgbs: Sequence[np.ndarray], prepared: Sequence[Any], records: Sequence[Records] | None = None
    ) -> list[Finisher]:
        """``records``: each image's threshold records, given for a unified run only (else ``self.records``)."""
        ...


class TorchBackend:
    """The run's AnomalyModule, fed exactly like the test loader feeds it."""

    name = "torch"

    def __init__(self, trained: TrainedRun, device: str) -> None:
        import torch

        from kdad.data.dataset import normalize
        from kdad.deploy.export import metadata_thresholds
        from kdad.runner.speed import apply_speed

        self._torch = torch
        self._normalize = normalize
        self.run_dir = Path(trained.run_dir)
        # the run's memory format (channels_last: 1.2-1.9x faster on CPU, README "Performance"); not its compile
        # option, whose one-time compilation costs more than a prediction command saves
        speed = trained.config.get("speed") or {}
        apply_speed(trained.module, channels_last=bool(speed.get("channels_last", False)))
        torch.set_float32_matmul_precision(str(trained.config.get("matmul_precision", "high")))  # as the run tested
        self.model = trained.module.model
        self.device = torch.device(device)
        self.image_size = int(trained.config.data.image_size)
        self.interpolation = str(trained.config.data.interpolation)
        # the records an export writes to metadata.json (a manual threshold without a score range gets the threshold
        # as both ends), so both backends normalise alike
        records = metadata_thresholds(trained.thresholds)
        self.records = Records(None, None) if records is None else Records(records["image"], records["pixel"])
        self.category_records = category_records(
            None
            if not trained.category_thresholds
            else {c: metadata_thresholds(t) for c, t in trained.category_thresholds.items()}
        )

    def prepare(self, rgb: np.ndarray) -> Any:
        """float32 tensor [3, S, S]: resized with the run's interpolation, /255 and ImageNet-normalised."""
        return self._normalize(resize_rgb(rgb, self.image_size, self.interpolation))

    def forward(
        self, rgbs: Sequence[np.ndarray], prepared: Sequence[Any], records: Sequence[Records] | None = None
    ) -> list[Finisher]:
        torch = self._torch
        records = list(records) if records is not None else [self.records] * len(rgbs)
        with torch.inference_mode():
            output = self.model(torch.stack(list(prepared)).to(self.device))
            scores = output.score.float().cpu().numpy()
            maps = output.anomaly_map.float().cpu().numpy()
        return [
            partial(postprocess, float(score), amap, rgb.shape[:2], record)
            for score, amap, rgb, record in zip(scores, maps, rgbs, records, strict=True)
        ]


class ExportBackend:
    """An exported model (``<run>/exported/<format>/``) run by ``kdad.deploy.inferencer``, torch-free."""

    def __init__(self, run_dir: Path, name: str, device: str) -> None:
        from kdad.deploy.errors import DeployError
        from kdad.deploy.inferencer import load_inferencer

        self.name, self.run_dir = name, run_dir
        folder = run_dir / EXPORT_FOLDER / name
        if not (folder / METADATA_FILE).is_file():
            raise PredictError(
                f"no {name} export of this run: {folder} does not exist (or has no {METADATA_FILE}). Export it first: "
                f"python -m kdad.export run_dir={run_dir} format={name}"
            )
        try:
            self.inferencer = load_inferencer(folder, device=_runtime_device(name, device))
        except DeployError as exc:
            raise PredictError(str(exc)) from exc
        metadata = self.inferencer.metadata
        self.records = Records(image=metadata.image_threshold, pixel=metadata.pixel_threshold)
        self.category_records = category_records(metadata.category_thresholds)

    def prepare(self, rgb: np.ndarray) -> Any:
        return None  # the inferencer resizes in predict_batch (a no-op copy when the size already matches)

    def forward(
        self, rgbs: Sequence[np.ndarray], prepared: Sequence[Any], records: Sequence[Records] | None = None
    ) -> list[Finisher]:
        categories = None
        if self.category_records is not None and records is not None:
            by_records = {id(r): c for c, r in self.category_records.items()}
            categories = [by_records[id(r)] for r in records]
        return [partial(_identity, p) for p in self.inferencer.predict_batch(list(rgbs), categories)]


def _runtime_device(backend: str, device: str) -> str:
    """torch-style ``cpu`` / ``cuda:0`` -> onnxruntime's CPU / CUDA or OpenVINO's CPU / GPU / AUTO."""
    kind = device.split(":")[0].upper()
    if backend == "openvino" and kind == "CUDA":
        return "GPU"
    return kind


def load_backend(cfg: DictConfig) -> Backend:
    """The model of ``cfg.run_dir`` (or ``cfg.ckpt_path``) for ``cfg.backend``."""
    if cfg.backend == "torch":
        from kdad.runner.trained import load_trained_run

        trained = load_trained_run(run_dir=cfg.run_dir, ckpt_path=cfg.ckpt_path, device=cfg.device)
        return TorchBackend(trained, cfg.device)
    return ExportBackend(resolve_run_dir(cfg), cfg.backend, cfg.device)


def resolve_run_dir(cfg: DictConfig) -> Path:
    """The run folder of ``run_dir=`` or, given only ``ckpt_path=``, the checkpoint's ``../..`` (the rule of
    ``kdad.runner.trained.load_trained_run``). An export backend runs the run's export, whichever checkpoint
    it was exported from."""
    run_dir = Path(str(cfg.run_dir if cfg.run_dir is not None else Path(str(cfg.ckpt_path)).parent.parent))
    if not run_dir.is_dir():
        raise PredictError(f"run folder {run_dir} does not exist: give the folder of a finished kdad run (run_dir=).")
    return run_dir


# ------------------------------------------------------------------------------------------------ inputs
def find_images(spec: str, exclude: Path | None = None) -> list[InputImage]:
    """The files of ``input=``: one file, a folder (recursive) or a glob, sorted by relative path.

    ``exclude`` (the output folder) is left out, so predicting into a sub-folder of the input and running again
    does not predict the previous masks and overlays. PredictError naming the input when nothing is found.
    """
    path = Path(spec)
    if path.is_file():
        images = [InputImage(path, PurePath(path.name))]
    elif path.is_dir():
        images = list(_folder_images(path, path))
    elif any(char in spec for char in GLOB_CHARS):
        base = _glob_base(spec)
        images = []
        for match in sorted(glob.glob(spec, recursive=True)):
            found = Path(match)
            if found.is_dir():
                images += _folder_images(found, base)
            elif found.is_file() and _is_image(found):
                images.append(InputImage(found, PurePath(os.path.relpath(found, base))))
    else:
        raise PredictError(f"input={spec} does not exist: give an image, a folder or a glob (quoted for the shell).")
    if exclude is not None:
        excluded = exclude.resolve()
        images = [image for image in images if not image.path.resolve().is_relative_to(excluded)]
    unique = {image.relative: image for image in images}  # a glob may match a file twice (a/** and a/*.png)
    images = sorted(unique.values(), key=lambda image: image.relative.as_posix())
    if not images:
        raise PredictError(
            f"no images found in input={spec}: looked for {', '.join(IMAGE_EXTENSIONS)} files (any case"
            f"{', in sub-folders too' if path.is_dir() else ''})."
        )
    return images


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _folder_images(folder: Path, base: Path) -> Iterator[InputImage]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            found = Path(root) / name
            if _is_image(found):
                yield InputImage(found, PurePath(os.path.relpath(found, base)))


def _glob_base(pattern: str) -> Path:
    """The folder a glob's matches are relative to: its leading parts without wildcards."""
    parts = []
    for part in Path(pattern).parts:
        if any(char in part for char in GLOB_CHARS):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def default_output(run_dir: Path, spec: str) -> Path:
    """``<run_dir>/predictions/<input name>_<timestamp>``: readable, and a second command never overwrites."""
    path = Path(spec)
    name = (path if path.exists() else _glob_base(spec)).resolve().name
    name = path.stem if path.is_file() else name
    safe = "".join(char if char.isalnum() or char in "-_." else "_" for char in name) or "input"
    return run_dir / "predictions" / f"{safe}_{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------------------ outputs
class PredictionWriter:
    """predictions.csv (flushed per batch), failed.txt (opened at the first failure), masks/ and overlays/."""

    def __init__(self, output: Path, unified: bool = False) -> None:
        self.output = output
        output.mkdir(parents=True, exist_ok=True)
        self.csv_path = output / CSV_NAME
        self.failed_path = output / FAILED_NAME
        self.failed_path.unlink(missing_ok=True)  # a previous command's list would mislead
        self._csv_file = self.csv_path.open("w", newline="", encoding="utf-8")
        columns = (CSV_COLUMNS[0], "category", *CSV_COLUMNS[1:]) if unified else CSV_COLUMNS
        self._csv = csv.DictWriter(self._csv_file, fieldnames=columns, extrasaction="ignore")
        self._csv.writeheader()
        self._csv_file.flush()
        self._failed_file: Any = None

    def files(self, image: InputImage) -> tuple[str, str]:
        """(mask, overlay) paths relative to the output folder."""
        name = image.relative.as_posix() + ".png"
        return f"{MASKS_DIR}/{name}", f"{OVERLAYS_DIR}/{name}"

    def save_png(self, relative: str, pixels: np.ndarray) -> None:
        """Write a uint8 gray [H, W] or RGB [H, W, 3] image; OpenCV encodes (GIL released), Python writes the bytes
        (any path, errors raised: ``cv2.imwrite`` only returns False)."""
        target = self.output / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        bgr = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[..., ::-1])
        encoded, data = cv2.imencode(".png", bgr, PNG_OPTIONS)
        if not encoded:
            raise OSError(f"OpenCV could not encode {target} (array {pixels.dtype} {pixels.shape})")
        target.write_bytes(data.tobytes())

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._csv.writerows(rows)
        self._csv_file.flush()
        failed = [row for row in rows if row["error"]]
        if failed:
            if self._failed_file is None:
                self._failed_file = self.failed_path.open("w", encoding="utf-8")
            self._failed_file.writelines(f"{row['path']}\t{row['error']}\n" for row in failed)
            self._failed_file.flush()

    def close(self) -> None:
        self._csv_file.close()
        if self._failed_file is not None:
            self._failed_file.close()


@dataclass
class Loaded:
    """A decoded input: ``rgb`` at the original size and the backend's prepared input, or ``error``."""

    image: InputImage
    rgb: np.ndarray | None = None
    prepared: Any = None
    error: str | None = None
    seconds: float = 0.0


def _load(image: InputImage, backend: Backend) -> Loaded:
    started = time.perf_counter()
    try:
        rgb = read_rgb(image.path)
    except ImageReadError as exc:
        return Loaded(image, error=exc.reason, seconds=time.perf_counter() - started)
    return Loaded(image, rgb, backend.prepare(rgb), seconds=time.perf_counter() - started)


def _records(backend: Backend, image: InputImage) -> Records:
    """The threshold records deciding ``image``: its category's for a unified run, else the run's."""
    table = getattr(backend, "category_records", None)
    return backend.records if table is None else table[str(image.category)]


def _finish(loaded: Loaded, finisher: Finisher, writer: PredictionWriter, records: Records) -> dict[str, Any]:
    """The CSV row of a predicted image, after writing its mask and overlay."""
    started = time.perf_counter()
    rgb = loaded.rgb
    assert rgb is not None
    row = _row(loaded.image, width=rgb.shape[1], height=rgb.shape[0])
    result = finisher()
    if not math.isfinite(result.score):
        row["error"] = f"the model's anomaly score is {result.score}: the model output is invalid"
        return row
    row.update(score=f"{result.score:.9g}", decision=result.decision or "")
    if result.normalized_score is not None:
        row["normalized_score"] = f"{result.normalized_score:.6f}"
    mask_file, overlay_file = writer.files(loaded.image)
    if result.mask is not None:
        writer.save_png(mask_file, result.mask)
        row["mask"] = mask_file
    span = display_range(result.anomaly_map, records.image, records.pixel)
    writer.save_png(overlay_file, overlay(rgb, result.anomaly_map, result.mask, span))
    row["overlay"] = overlay_file
    loaded.seconds += time.perf_counter() - started
    return row


def _row(image: InputImage, **values: Any) -> dict[str, Any]:
    return {**dict.fromkeys(CSV_COLUMNS, ""), "path": str(image.path), "category": image.category or "", **values}


# ------------------------------------------------------------------------------------------------ the loop
@dataclass
class PredictSummary:
    """What a prediction command did; ``exit_code`` is the command's status (0 all predicted, 1 some failed)."""

    output: Path
    backend: str
    total: int = 0
    ok: int = 0
    nok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0
    slowest: tuple[str, float] | None = None
    thresholds: bool = True

    @property
    def csv(self) -> Path:
        return self.output / CSV_NAME

    @property
    def predicted(self) -> int:
        return self.total - len(self.failed)

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else EXIT_ALL_PREDICTED

    def report(self) -> str:
        """The lines printed at the end of a command."""
        counts = f"{self.ok} OK, {self.nok} NOK" if self.thresholds else f"{self.predicted} scored (no thresholds)"
        lines = [
            f"Predicted {self.predicted} of {self.total} images with {self.backend}: {counts}, {len(self.failed)} "
            f"failed; {self.images_per_second:.1f} images/s ({self.seconds:.1f} s, model {self.model_seconds:.1f} s)"
        ]
        if self.slowest is not None:
            lines.append(f"Slowest file: {self.slowest[0]} ({self.slowest[1] * 1000:.0f} ms to decode and write)")
        for path, reason in self.failed[:MAX_LISTED_FAILURES]:
            lines.append(f"Failed: {path}: {reason}")
        if len(self.failed) > MAX_LISTED_FAILURES:
            lines.append(f"... {len(self.failed) - MAX_LISTED_FAILURES} more in {self.output / FAILED_NAME}")
        lines.append(f"Predictions: {self.csv}")
        return "\n".join(lines)


def predict_images(
    images: Sequence[InputImage],
    backend: Backend,
    writer: PredictionWriter,
    summary: PredictSummary,
    batch_size: int = 16,
    workers: int = 4,
    progress: bool = True,
) -> PredictSummary:
    """Predict ``images`` batch by batch into ``writer``; counts go into ``summary``.

    Pipeline: the pool decodes the next batch while the model runs this one, and completes and writes the previous
    one (masks, overlays), whose rows are then appended to the CSV in input order; so up to three batches of
    decoded images are in memory (lower ``batch_size`` for very large images). When the command is interrupted,
    the batch already through the model is still written.
    """
    from tqdm import tqdm

    batches = [list(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
    bar = tqdm(total=len(images), unit="img", disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdad-predict")
    decoding: deque[list[Future[Loaded]]] = deque()
    pending: list[tuple[Loaded, Future[dict[str, Any]] | None]] = []

    def write_pending() -> None:
        done, pending[:] = list(pending), []
        _write_batch(done, writer, summary)
        bar.update(len(done))

    try:
        queued = 0
        for _ in batches:
            while queued < len(batches) and len(decoding) < 2:
                decoding.append([pool.submit(_load, image, backend) for image in batches[queued]])
                queued += 1
            loaded = [future.result() for future in decoding.popleft()]
            readable = [item for item in loaded if item.error is None]
            finishing: dict[int, Future[dict[str, Any]]] = {}
            if readable:
                forward_started = time.perf_counter()
                records = [_records(backend, item.image) for item in readable]
                rgbs, inputs = [item.rgb for item in readable], [item.prepared for item in readable]
                unified = getattr(backend, "category_records", None) is not None
                finishers = backend.forward(rgbs, inputs, records) if unified else backend.forward(rgbs, inputs)
                summary.model_seconds += time.perf_counter() - forward_started
                for item, finisher, record in zip(readable, finishers, records, strict=True):
                    item.prepared = None  # the model input is no longer needed
                    finishing[id(item)] = pool.submit(_finish, item, finisher, writer, record)
            write_pending()  # the previous batch, finished while this one ran through the model
            pending[:] = [(item, finishing.get(id(item))) for item in loaded]
        write_pending()
    except BaseException:
        if pending:  # through the model already: keep it (an error while writing it must not hide the first one)
            with contextlib.suppress(Exception):
                write_pending()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _write_batch(
    batch: Sequence[tuple[Loaded, Future[dict[str, Any]] | None]], writer: PredictionWriter, summary: PredictSummary
) -> None:
    """Append a batch's rows to the CSV in input order, and count them."""
    rows = []
    for item, finishing in batch:
        row = _row(item.image, error=item.error) if finishing is None else finishing.result()
        item.rgb = None
        rows.append(row)
        summary.total += 1
        if row["error"]:
            summary.failed.append((row["path"], row["error"]))
            continue
        summary.ok += row["decision"] == "OK"
        summary.nok += row["decision"] == "NOK"
        if summary.slowest is None or item.seconds > summary.slowest[1]:
            summary.slowest = (row["path"], item.seconds)
    writer.write(rows)


# ------------------------------------------------------------------------------------------------ the command
def check_options(cfg: DictConfig) -> None:
    """ConfigError / PredictError for options the command cannot run with, before anything is loaded."""
    if cfg.get("run_dir") is None and cfg.get("ckpt_path") is None:
        raise PredictError("give the run to predict with: run_dir=<run folder> (or ckpt_path=<checkpoint file>).")
    if cfg.get("input") is None:
        raise PredictError("give the images to predict: input=<image | folder | glob>.")
    check_choice(cfg.backend, BACKENDS, "backend")
    for key in ("batch_size", "workers"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def predict(cfg: DictConfig, quiet: bool = False) -> PredictSummary:
    """The command ``python -m kdad.predict``: predict ``cfg.input`` with the run and write ``cfg.output``.

    Prints the summary (``quiet``: prints nothing). Raises PredictError / ConfigError (user errors, exit 2)
    before anything is written; unreadable files do not raise, they are counted in ``summary.failed``.
    """
    check_options(cfg)
    input_spec = str(cfg.input)
    output = Path(cfg.output) if cfg.get("output") is not None else None
    images = find_images(input_spec, exclude=output)  # an input without images fails before the model loads
    backend = load_backend(cfg)
    run_dir = backend.run_dir
    images = assign_categories(images, backend, cfg.get("category"), run_dir)
    output = output if output is not None else default_output(run_dir, input_spec)  # a new folder: excludes nothing
    has_thresholds = backend.records.image is not None or getattr(backend, "category_records", None) is not None
    if not has_thresholds:
        log.warning(
            "Run %s has no stored thresholds: scores only (no decisions, no masks; overlays coloured per image).",
            run_dir,
        )
    writer = PredictionWriter(output, unified=getattr(backend, "category_records", None) is not None)
    summary = PredictSummary(output=output, backend=backend.name, thresholds=has_thresholds)
    try:
        predict_images(
            images,
            backend,
            writer,
            summary,
            batch_size=int(cfg.batch_size),
            workers=int(cfg.workers),
            progress=bool(cfg.progress) and not quiet,
        )
    except KeyboardInterrupt:
        if not quiet:
            print(f"Interrupted: the {summary.total} images predicted so far are in {summary.csv}", file=sys.stderr)
        raise
    finally:
        writer.close()
    if not quiet:
        print(summary.report())
    return summary


def assign_categories(
    images: Sequence[InputImage], backend: Backend, category: str | None, run_dir: Path
) -> list[InputImage]:
    """The inputs with their categories for a unified run (``category=``, else inferred from each path: see the module
    docstring); PredictError when an input's category is unknown, or ``category=`` is given for a one-category run."""
    if getattr(backend, "category_records", None) is None:
        if category is not None:
            raise PredictError(
                f"category={category} chooses among the per-category thresholds of a unified run, but {run_dir} is a "
                "one-category run: drop category="
            )
        return list(images)
    categories = list(backend.category_records)
    if category is not None:
        if str(category) not in categories:
            raise PredictError(
                f"category={category} is not one of the run's categories ({', '.join(categories)}): choose one of them"
            )
        return [dataclasses.replace(image, category=str(category)) for image in images]
    out = [dataclasses.replace(image, category=image_category(image.path, categories)) for image in images]
    unknown = [str(image.path) for image in out if image.category is None]
    if unknown:
        listed = ", ".join(unknown[:MAX_LISTED_FAILURES]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        raise PredictError(
            f"{run_dir} was trained on several categories ({', '.join(categories)}) and decides each image with its "
            f"category's thresholds, but no folder in the path of {listed} is named like one of them. Give the "
            "category of the inputs with category=<name>, or put each image below a folder named after its category."
        )
    return out


def _identity(prediction: Prediction) -> Prediction:
    return prediction
