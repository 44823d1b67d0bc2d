"""Input normalisation shared by the metric classes: torch or numpy in, validated numpy out."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

#: Anything the metrics accept: a torch tensor on any device, a numpy array, or a nested sequence.
ArrayOrTensor = torch.Tensor | npt.ArrayLike


def to_numpy(x: ArrayOrTensor) -> np.ndarray:
    """Return ``x`` as a numpy array on the CPU (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        # numpy has no bfloat16 (and half is slow there); float32 holds every such value exactly.
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def as_scores(x: ArrayOrTensor, name: str) -> np.ndarray:
    """Raw scores as a float64 array (not to be modified in place); ``ValueError`` on NaN/inf.

    Float64 because the histogram rescales scores by arbitrary powers of two, which must stay exact
    (float32 would under/overflow far sooner), and because RD4AD's per-image thresholds are float64.
    """
    arr = to_numpy(x)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric scores, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); metrics are undefined")
    return arr


def as_binary(x: ArrayOrTensor, name: str) -> np.ndarray:
    """Boolean view of a 0/1 array; raises ``ValueError`` for any other value.

    Soft masks (e.g. bilinearly resized ground truth) are rejected rather than thresholded silently,
    because the right threshold is a data-pipeline decision, not a metric one.
    """
    arr = to_numpy(x)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or 0/1, got dtype {arr.dtype}")
    nonbinary = (arr != 0) & (arr != 1)
    if nonbinary.any():
        raise ValueError(f"{name} must contain only 0 and 1, found {int(nonbinary.sum())} other value(s)")
    return arr != 0


def as_maps(x: ArrayOrTensor, name: str, *, binary: bool) -> np.ndarray:
    """Normalise a batch of maps to ``[B, H, W]``; a singleton channel ``[B, 1, H, W]`` is squeezed."""
    arr = as_binary(x, name) if binary else as_scores(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape [B, H, W] (or [B, 1, H, W]), got {tuple(arr.shape)}")
    return arr


def as_vector(x: ArrayOrTensor, name: str, *, binary: bool) -> np.ndarray:
    """Flatten per-image scores or labels (``[B]`` or ``[B, 1]``) to 1-D."""
    arr = as_binary(x, name) if binary else as_scores(x, name)
    if arr.ndim > 1 and arr.size != arr.shape[0]:
        raise ValueError(f"{name} must hold one value per image, got shape {tuple(arr.shape)}")
    return arr.reshape(-1)
