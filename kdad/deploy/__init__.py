"""Standalone inference on exported kdad models: numpy, Pillow and onnxruntime (or OpenVINO), never torch.

An export folder holds the model file and metadata.json (``kdad.deploy.metadata``). Typical use::

    from kdad.deploy import load_inferencer

    inferencer = load_inferencer("runs/my_run/exported/onnx")
    for prediction in inferencer.predict_paths(["part_001.png", "part_002.png"]):
        print(prediction.decision, prediction.normalized_score)

This package imports only ``kdad.imaging``, ``kdad.errors`` and its own modules (``kdad.data`` and ``kdad.metrics``
pull in torch), so it runs on a machine with no torch, Lightning, timm or OpenCV installed; ``export.py`` is the
torch side and is never imported from here.
"""

from kdad.deploy.errors import DeployError, MetadataError
from kdad.deploy.inferencer import (
    INFERENCERS,
    Inferencer,
    OnnxInferencer,
    OpenVINOInferencer,
    Prediction,
    load_inferencer,
)
from kdad.deploy.metadata import (
    FORMAT_VERSION,
    INPUT_NAME,
    MAP_OUTPUT,
    METADATA_FILE,
    MODEL_SUFFIXES,
    SCORE_OUTPUT,
    Metadata,
    Normalization,
    Teacher,
)
from kdad.deploy.postprocess import binary_mask, decide, normalize_scores, overlay, record_display_range, resize_map

__all__ = [
    "FORMAT_VERSION",
    "INFERENCERS",
    "INPUT_NAME",
    "MAP_OUTPUT",
    "METADATA_FILE",
    "MODEL_SUFFIXES",
    "SCORE_OUTPUT",
    "DeployError",
    "Inferencer",
    "Metadata",
    "MetadataError",
    "Normalization",
    "OnnxInferencer",
    "OpenVINOInferencer",
    "Prediction",
    "Teacher",
    "binary_mask",
    "decide",
    "load_inferencer",
    "normalize_scores",
    "overlay",
    "record_display_range",
    "resize_map",
]
