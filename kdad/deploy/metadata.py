"""metadata.json: what an exported model needs at inference time, as a validated dataclass.

An export folder ``<run>/exported/<format>/`` holds the model file and ``metadata.json``. The file is
plain JSON (no pickle, no code execution), read and written only through ``Metadata.load`` / ``save``,
which check every key, so a broken or foreign file fails at load with a message naming the file and the
key, not later inside a runtime.

Schema (``format_version`` 1)::

    {
      "format_version": 1,                       # int; a larger value = written by a newer kdad -> refused
      "kdad_version": "0.1.0",
      "format": "onnx",                          # onnx | openvino | torchscript
      "model_file": "model.onnx",                # a file name inside the folder (.onnx | .xml | .pt)
      "method": "rd",
      "teacher": {"backbone": "efficientnet_lite0", "weights": "package:efficientnet_lite0"},
      "image_size": 256,                         # the graph's H = W
      "interpolation": "bilinear",               # bilinear | bicubic: resize to image_size with this
      "normalization": {"mean": [3 floats], "std": [3 floats], "applied_in_graph": true},
      "input_name": "image",                     # float32 [N, 3, H, W], RGB in [0, 1]
      "output_names": ["score", "anomaly_map"],  # float32 [N] and [N, H, W], raw (not normalised)
      "opset": 17,                               # ONNX opset, or null
      "thresholds": {                            # or null: no decision threshold, scores only
        "image": {"value": 0.61, "policy": "f1_max", "score_min": 0.2, "score_max": 1.3, ...},
        "pixel": {... same keys ...} or null     # null: no pixel threshold, so no masks
      },
      "export_check": {...},                     # free-form, written by the exporter (deviations, tolerance)
      "created": "2025-01-01T12:00:00+00:00"     # ISO 8601
    }

Threshold records need ``value``, ``policy``, ``score_min``, ``score_max``; other keys are kept as-is.
``"thresholds": null`` means the run had no decision threshold (trained before thresholds existed, or with
none configured): the model gives raw scores and maps only, so predictions carry no OK/NOK decision, no
normalised score and no mask.
Unknown top-level keys are kept in ``extra`` and written back, so a round trip loses nothing.

A unified run (one model for several categories, ``data.unified=true``) has one set of thresholds per category:
``"thresholds": null`` and ``"category_thresholds": {"<category>": {"image": {...}, "pixel": {...} or null}, ...}``
(optional key, absent for a one-category run). Its predictions need the image's category
(``Inferencer.predict_batch(images, categories=...)``; ``python -m kdad.predict`` takes ``category=`` or infers it
from the path).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from kdad.deploy.errors import MetadataError
from kdad.imaging import INTERPOLATIONS

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
MODEL_SUFFIXES: dict[str, str] = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".pt"}
INPUT_NAME = "image"
SCORE_OUTPUT = "score"
MAP_OUTPUT = "anomaly_map"
THRESHOLD_KEYS = ("value", "policy", "score_min", "score_max")

_FIELDS = (
    "format_version",
    "kdad_version",
    "format",
    "model_file",
    "method",
    "teacher",
    "image_size",
    "interpolation",
    "normalization",
    "input_name",
    "output_names",
    "opset",
    "thresholds",
    "export_check",
    "created",
    "category_thresholds",
)


def kdad_version() -> str:
    """The installed kdad version, or "unknown" when running from a source tree that is not installed."""
    try:
        return package_metadata.version("kdad")
    except package_metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Teacher:
    """The frozen teacher the model was distilled from (for information and provenance)."""

    backbone: str
    weights: str | None


@dataclass(frozen=True)
class Normalization:
    """ImageNet mean/std the graph applies itself; recorded for information, never applied by the inferencer."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    applied_in_graph: bool = True


@dataclass(frozen=True)
class Metadata:
    """The validated content of one metadata.json (see the module docstring for the schema)."""

    format: str
    model_file: str
    method: str
    teacher: Teacher
    image_size: int
    interpolation: str
    normalization: Normalization
    thresholds: dict[str, dict[str, Any] | None] | None
    export_check: dict[str, Any] = field(default_factory=dict)
    input_name: str = INPUT_NAME
    output_names: tuple[str, ...] = (SCORE_OUTPUT, MAP_OUTPUT)
    opset: int | None = None
    kdad_version: str = field(default_factory=kdad_version)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    category_thresholds: dict[str, dict[str, dict[str, Any] | None]] | None = None

    @property
    def categories(self) -> list[str] | None:
        """A unified export's categories (each with its thresholds), or None."""
        return None if self.category_thresholds is None else list(self.category_thresholds)

    def threshold_records(self, category: str | None = None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(image, pixel) threshold records: the export's, or for a unified export ``category``'s (MetadataError when
        the category is missing or unknown)."""
        if self.category_thresholds is None:
            return self.image_threshold, self.pixel_threshold
        if category is None or category not in self.category_thresholds:
            known = ", ".join(self.category_thresholds)
            what = "no category" if category is None else f"unknown category '{category}'"
            raise MetadataError(
                f"this model was trained on several categories ({known}) with thresholds per category: {what} given; "
                "pass each image's category"
            )
        records = self.category_thresholds[category]
        return records["image"], records.get("pixel")

    @property
    def image_threshold(self) -> dict[str, Any] | None:
        """The image-level threshold record, or None when the export has no thresholds (scores only)."""
        return None if self.thresholds is None else self.thresholds["image"]

    @property
    def pixel_threshold(self) -> dict[str, Any] | None:
        """The pixel-level threshold record, or None when the run had no pixel threshold (no masks)."""
        return None if self.thresholds is None else self.thresholds.get("pixel")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this metadata (schema order, then the kept unknown keys)."""
        data: dict[str, Any] = {
            "format_version": self.format_version,
            "kdad_version": self.kdad_version,
            "format": self.format,
            "model_file": self.model_file,
            "method": self.method,
            "teacher": {"backbone": self.teacher.backbone, "weights": self.teacher.weights},
            "image_size": self.image_size,
            "interpolation": self.interpolation,
            "normalization": {
                "mean": list(self.normalization.mean),
                "std": list(self.normalization.std),
                "applied_in_graph": self.normalization.applied_in_graph,
            },
            "input_name": self.input_name,
            "output_names": list(self.output_names),
            "opset": self.opset,
            "thresholds": None
            if self.thresholds is None
            else {"image": self.thresholds.get("image"), "pixel": self.thresholds.get("pixel")},
            "export_check": self.export_check,
            "created": self.created,
        }
        if self.category_thresholds is not None:
            data["category_thresholds"] = {
                c: {"image": t.get("image"), "pixel": t.get("pixel")} for c, t in self.category_thresholds.items()
            }
        data.update(self.extra)
        return data

    def save(self, path: Path | str) -> Path:
        """Validate, then write metadata.json to ``path`` (a folder or a file path); returns the file.

        Validating on save means an exporter cannot write a file that ``load`` would refuse.
        """
        target = _metadata_path(path)
        data = self.to_dict()
        Metadata.from_dict(data, source=str(target))
        target.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: Path | str) -> Metadata:
        """Read and validate metadata.json from ``path`` (an export folder or the file itself)."""
        target = _metadata_path(path)
        if not target.is_file():
            raise MetadataError(
                f"{target} not found: an export folder holds metadata.json next to the model file; re-export the run."
            )
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise MetadataError(f"cannot read {target}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{target} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(target))

    @classmethod
    def from_dict(cls, data: Any, source: str = METADATA_FILE) -> Metadata:
        """Validate a decoded JSON object; ``source`` (the file) is named in every error."""
        reader = _Reader(source)
        if not isinstance(data, dict):
            raise MetadataError(f"{source}: the top level must be a JSON object, got {type(data).__name__}.")
        version = reader.check_version(data)
        fmt = reader.choice(data, "format", tuple(MODEL_SUFFIXES))
        return cls(
            format_version=version,
            kdad_version=reader.string(data, "kdad_version"),
            format=fmt,
            model_file=reader.model_file(data, fmt),
            method=reader.string(data, "method"),
            teacher=reader.teacher(data),
            image_size=reader.positive_int(data, "image_size"),
            interpolation=reader.choice(data, "interpolation", tuple(INTERPOLATIONS)),
            normalization=reader.normalization(data),
            input_name=reader.string(data, "input_name"),
            output_names=reader.output_names(data),
            opset=reader.optional_int(data, "opset"),
            thresholds=reader.thresholds(data),
            export_check=reader.typed(data, "export_check", dict, "an object"),
            created=reader.timestamp(data, "created"),
            extra={key: value for key, value in data.items() if key not in _FIELDS},
            category_thresholds=reader.category_thresholds(data),
        )


def _metadata_path(path: Path | str) -> Path:
    path = Path(path)
    return path / METADATA_FILE if path.is_dir() or path.suffix != ".json" else path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Reader:
    """Typed access to the keys of one metadata object; every error names the file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> MetadataError:
        return MetadataError(f"{self.source}: key '{key}' {problem}.")

    def get(self, data: dict[str, Any], key: str, prefix: str = "") -> Any:
        if key not in data:
            raise MetadataError(f"{self.source}: missing required key '{prefix}{key}'.")
        return data[key]

    def typed(self, data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, prefix: str = "") -> Any:
        value = self.get(data, key, prefix)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self.fail(prefix + key, f"must be {what}, got {type(value).__name__} {value!r}")
        return value

    def string(self, data: dict[str, Any], key: str, prefix: str = "") -> str:
        value = self.typed(data, key, str, "a non-empty string", prefix)
        if not value:
            raise self.fail(prefix + key, "must be a non-empty string, got ''")
        return value

    def number(self, data: dict[str, Any], key: str, prefix: str = "") -> float:
        value = self.get(data, key, prefix)
        if not _is_number(value) or not math.isfinite(value):
            raise self.fail(prefix + key, f"must be a finite number, got {value!r}")
        return float(value)

    def positive_int(self, data: dict[str, Any], key: str) -> int:
        value = self.typed(data, key, int, "a positive integer")
        if value <= 0:
            raise self.fail(key, f"must be a positive integer, got {value}")
        return value

    def optional_int(self, data: dict[str, Any], key: str) -> int | None:
        value = self.get(data, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise self.fail(key, f"must be an integer or null, got {value!r}")
        return value

    def choice(self, data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
        value = self.get(data, key)
        if value not in allowed:
            raise self.fail(key, f"has unknown value {value!r}: choose one of {', '.join(allowed)}")
        return value

    def check_version(self, data: dict[str, Any]) -> int:
        version = self.typed(data, "format_version", int, "an integer")
        if version > FORMAT_VERSION:
            raise MetadataError(
                f"{self.source} was written by a newer kdad (format_version {version}; this kdad reads up to "
                f"{FORMAT_VERSION}): upgrade kdad to load this export."
            )
        if version < 1:
            raise self.fail("format_version", f"must be >= 1, got {version}")
        return version

    def model_file(self, data: dict[str, Any], fmt: str) -> str:
        name = self.string(data, "model_file")
        if Path(name).name != name or name in (".", ".."):
            raise self.fail("model_file", f"must be a file name inside the export folder, got {name!r}")
        if Path(name).suffix != MODEL_SUFFIXES[fmt]:
            raise self.fail("model_file", f"must end with {MODEL_SUFFIXES[fmt]} for format '{fmt}', got {name!r}")
        return name

    def teacher(self, data: dict[str, Any]) -> Teacher:
        teacher = self.typed(data, "teacher", dict, "an object")
        weights = self.get(teacher, "weights", "teacher.")
        if weights is not None and not isinstance(weights, str):
            raise self.fail("teacher.weights", f"must be a string or null, got {weights!r}")
        return Teacher(backbone=self.string(teacher, "backbone", "teacher."), weights=weights)

    def triple(self, data: dict[str, Any], key: str, prefix: str) -> tuple[float, float, float]:
        value = self.typed(data, key, list, "a list of 3 numbers", prefix)
        if len(value) != 3 or not all(_is_number(item) and math.isfinite(item) for item in value):
            raise self.fail(prefix + key, f"must be a list of 3 finite numbers, got {value!r}")
        return (float(value[0]), float(value[1]), float(value[2]))

    def normalization(self, data: dict[str, Any]) -> Normalization:
        norm = self.typed(data, "normalization", dict, "an object")
        std = self.triple(norm, "std", "normalization.")
        if min(std) <= 0:
            raise self.fail("normalization.std", f"must be positive, got {list(std)}")
        applied = self.typed(norm, "applied_in_graph", bool, "a boolean", "normalization.")
        if not applied:
            raise self.fail(
                "normalization.applied_in_graph",
                "must be true: the export contract normalises inside the graph and the inferencer feeds [0, 1] RGB",
            )
        return Normalization(mean=self.triple(norm, "mean", "normalization."), std=std, applied_in_graph=True)

    def output_names(self, data: dict[str, Any]) -> tuple[str, ...]:
        names = self.typed(data, "output_names", list, "a list of strings")
        if not all(isinstance(name, str) for name in names) or sorted(names) != sorted((SCORE_OUTPUT, MAP_OUTPUT)):
            raise self.fail(
                "output_names", f"must be ['{SCORE_OUTPUT}', '{MAP_OUTPUT}'] (the export contract), got {names!r}"
            )
        return tuple(names)

    def threshold(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        prefix = f"thresholds.{key}."
        record = self.typed(data, key, dict, "an object", "thresholds.")
        for name in ("value", "score_min", "score_max"):
            self.number(record, name, prefix)
        self.string(record, "policy", prefix)
        if record["score_min"] > record["score_max"]:
            raise self.fail(
                f"thresholds.{key}", f"has score_min {record['score_min']} > score_max {record['score_max']}"
            )
        return dict(record)

    def thresholds(self, data: dict[str, Any]) -> dict[str, dict[str, Any] | None] | None:
        if self.get(data, "thresholds") is None:
            return None  # no decision threshold: scores only
        thresholds = self.typed(data, "thresholds", dict, "an object or null")
        image = self.threshold(thresholds, "image")
        pixel = None if self.get(thresholds, "pixel", "thresholds.") is None else self.threshold(thresholds, "pixel")
        return {"image": image, "pixel": pixel}

    def category_thresholds(self, data: dict[str, Any]) -> dict[str, dict[str, dict[str, Any] | None]] | None:
        if data.get("category_thresholds") is None:
            return None
        table = self.typed(data, "category_thresholds", dict, "an object of categories")
        if not table:
            raise self.fail("category_thresholds", "must name at least one category")
        return {str(category): self.thresholds({"thresholds": records}) for category, records in table.items()}

    def timestamp(self, data: dict[str, Any], key: str) -> str:
        value = self.string(data, key)
        try:
            datetime.fromisoformat(value)
        except ValueError as exc:
            raise self.fail(key, f"must be an ISO 8601 timestamp, got {value!r}") from exc
        return value
