"""Numerical parity with the methods' released code: seeded weights, tensor fingerprints, reference files.

How a parity reference is made (once, outside the project; see ``tests/parity_reference/README.md``): the official
code of a method is run from its public repository at a recorded commit, on randomly initialised weights of the
paper's backbone architecture, filled by :func:`seed_module` (every tensor a function of its *kdad* name, shape and
one seed, so the official network and kdad's module get the same numbers without storing any weights), on the fixed
input of :func:`parity_images`. What it computes is written as :func:`fingerprint` arrays into
``tests/parity_reference/<method>.npz`` with a ``<method>.json`` beside it: provenance (repository, commit, what was
run, package versions), the architecture and input the numbers belong to, and the tolerance. Numbers only: no
official code enters the repository.

kdad's parity tests build kdad's modules with the same seeded weights and input and compare with
:func:`assert_close` at ``RTOL`` (1e-5 relative, fp32 on CPU). A missing reference file, or one recorded for
another architecture or input, is a :class:`ParityReferenceError` that names the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REFERENCE_DIR = Path(__file__).resolve().parent / "parity_reference"
SEED = 20240
# fp32 on CPU: agreement within 1e-5 of each tensor's magnitude (see assert_close for the exact rule).
RTOL = 1e-5
STEP_RTOL = 1e-3
SAMPLE_SIZE = 512
# Gradients and optimiser updates (one per parameter tensor): a smaller sample keeps the files small.
UPDATE_SAMPLE_SIZE = 128
UPDATE_PREFIXES = ("grad/", "step/")
FORMAT_VERSION = 1


class ParityReferenceError(RuntimeError):
    """A parity reference file is missing, unreadable, or was recorded for something else; names the file."""


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """One intra-op CPU thread inside, the previous count restored after (the ``one_thread`` fixture of
    ``tests/conftest.py``, which every parity test module uses).

    The references were recorded with one thread, and agreement to 1e-5 needs the same summation order on both sides:
    a training-mode forward (BatchNorm on batch statistics, batch 2, ReLU and max-pool decisions) through randomly
    initialised deep networks amplifies rounding ~1000x. Measured with 2 threads: RD's gradients move by ~2e-4
    (relative), STFPM's stem gradients by ~2e-3, RD with Expert's student outputs beyond 10 %; single-threaded they
    match the released code's (STFPM bit for bit but for the final resize). On the shared 2-core machine one thread
    is also the faster for these small tensors.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- seeded weights
def seeded_tensor(name: str, shape: Iterable[int], seed: int = SEED) -> Tensor:
    """The deterministic fp32 value of the tensor called ``name`` (kdad's state-dict key) with ``shape``.

    A function of ``(name, shape, seed)`` alone, drawn from its own generator, so two different implementations
    that agree on the names get identical tensors whatever order they create them in. Scales keep a deep network's
    activations finite and non-degenerate: weights of ndim >= 2 ~ N(0, 1/fan_in) with fan_in = numel / shape[0];
    BatchNorm ``running_var`` ~ U(0.5, 1.5); norm-layer ``weight`` ~ 1 + 0.1 N(0, 1); every other tensor (biases,
    ``running_mean``, vectors) ~ 0.05 N(0, 1).
    """
    shape = tuple(int(s) for s in shape)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(f"{name}|{shape}".encode())) % 2**63)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return torch.rand(shape, generator=generator) + 0.5
    noise = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        fan_in = max(1, int(np.prod(shape)) // shape[0])
        return noise / fan_in**0.5
    if leaf == "weight":
        return 1.0 + 0.1 * noise
    return 0.05 * noise


def seed_module(
    module: nn.Module,
    seed: int = SEED,
    rename: Callable[[str], str | tuple[str, Iterable[int]]] | None = None,
) -> list[str]:
    """Overwrite every floating-point parameter and buffer of ``module`` with :func:`seeded_tensor` values.

    ``rename`` maps the module's own state-dict key to the kdad key whose value it gets (the official network's
    side of a parity reference); kdad's modules use their own keys. Where the two layouts of a tensor differ by a
    reshape only (e.g. AAND's prototypes, [1, M, C] officially and [M, C] in kdad), ``rename`` returns
    ``(kdad key, kdad shape)``: the value is drawn for kdad's shape and reshaped to the module's. Integer buffers
    (``num_batches_tracked``) are left alone. Returns the kdad keys filled, in state-dict order.
    """
    filled = []
    state = module.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            target = rename(key) if rename else key
            name, shape = target if isinstance(target, tuple) else (target, tensor.shape)
            tensor.copy_(seeded_tensor(name, shape, seed).reshape(tensor.shape).to(tensor.dtype))
            filled.append(name)
    return filled


def parity_images(batch: int = 2, size: int = 256, seed: int = SEED) -> Tensor:
    """The fixed input batch [B,3,size,size]: smooth random images in [0, 1], ImageNet-normalised (kdad's input
    convention), so a method sees plausible statistics and not white noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, size // 16), max(2, size // 16), generator=generator)
    fine = torch.rand(batch, 3, size, size, generator=generator)
    images = 0.8 * nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    images = (images + 0.2 * fine).clamp(0.0, 1.0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


def parity_mask(batch: int = 2, size: int = 256, seed: int = SEED) -> Tensor:
    """A fixed binary anomaly mask [B,1,size,size]: one rectangle per image (different per image), so methods that
    train on pseudo-anomalies have anomalous and normal positions at every feature level."""
    generator = torch.Generator().manual_seed(seed + 1)
    mask = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        h, w = (int(v) for v in torch.randint(size // 8, size // 3, (2,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, size - max(h, w), (2,), generator=generator))
        mask[b, :, top : top + h, left : left + w] = 1.0
    return mask


# ---------------------------------------------------------------- fingerprints
def fingerprint_of(name: str, tensor: Tensor) -> dict[str, np.ndarray]:
    """:func:`fingerprint` as recorded for ``name``: gradients and updates (``grad/``, ``step/``) get the smaller
    sample and no per-channel means."""
    if name.startswith(UPDATE_PREFIXES):
        return fingerprint(tensor, UPDATE_SAMPLE_SIZE, maps=False)
    return fingerprint(tensor)


@functools.lru_cache(maxsize=256)
def _sample_index(numel: int, count: int = SAMPLE_SIZE) -> Tensor:
    # Cached: a full randperm of a large tensor's size costs ~0.1 s, and gradients/updates repeat the same sizes.
    # Callers only index with the result.
    if numel <= count:
        return torch.arange(numel)
    generator = torch.Generator().manual_seed(numel)
    return torch.randperm(numel, generator=generator)[:count].sort().values


def fingerprint(tensor: Tensor, sample_size: int = SAMPLE_SIZE, maps: bool = True) -> dict[str, np.ndarray]:
    """Small arrays that pin a tensor down: its shape, float64 sum / absolute sum / sum of squares, a fixed sample
    of ``sample_size`` entries, and (``maps``) for 4-D maps [B,C,H,W] the per-channel mean and the per-position mean
    (over B and C)."""
    t = tensor.detach().to("cpu", torch.float64)
    flat = t.flatten()
    out = {
        "shape": np.asarray(t.shape, dtype=np.int64),
        "sum": np.asarray(flat.sum().item()),
        "abs_sum": np.asarray(flat.abs().sum().item()),
        "sq_sum": np.asarray(flat.square().sum().item()),
        "sample": flat[_sample_index(flat.numel(), sample_size)].numpy(),
    }
    if maps and t.ndim == 4:
        out["channel_mean"] = t.mean(dim=(0, 2, 3)).numpy()
        out["position_mean"] = t.mean(dim=(0, 1)).flatten().numpy()
    return out


# ---------------------------------------------------------------- reference files
@dataclass
class Reference:
    """A loaded parity reference: ``arrays`` maps ``<tensor name>/<fingerprint field>`` to numbers."""

    path: Path
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]

    def names(self) -> list[str]:
        return sorted({key.rsplit("/", 1)[0] for key in self.arrays})

    def fields(self, name: str) -> dict[str, np.ndarray]:
        prefix = f"{name}/"
        found = {k[len(prefix) :]: v for k, v in self.arrays.items() if k.startswith(prefix)}
        if not found:
            raise ParityReferenceError(
                f"{self.path}: no tensor {name!r} recorded (recorded: {', '.join(self.names())})"
            )
        return found

    def raw(self, name: str) -> np.ndarray:
        """An array stored whole (``save_reference(..., raw=...)``)."""
        key = f"{name}/raw"
        if key not in self.arrays:
            raise ParityReferenceError(f"{self.path}: no raw array {name!r} recorded")
        return self.arrays[key]


def reference_paths(method: str, directory: Path = REFERENCE_DIR) -> tuple[Path, Path]:
    return directory / f"{method}.npz", directory / f"{method}.json"


def save_reference(
    method: str,
    tensors: Mapping[str, Tensor],
    architecture: Mapping[str, Any],
    provenance: Mapping[str, Any],
    directory: Path = REFERENCE_DIR,
    raw: Mapping[str, np.ndarray] | None = None,
) -> tuple[Path, Path]:
    """Write ``<method>.npz`` (fingerprints of ``tensors``) and ``<method>.json`` (architecture, provenance).

    ``raw``: small arrays stored whole (``<name>/raw``, read back by :meth:`Reference.raw`), for an input the
    official code generates and kdad's test must feed as is (e.g. RD++'s simplex-noise patches).
    """
    directory.mkdir(parents=True, exist_ok=True)
    npz, meta = reference_paths(method, directory)
    arrays = {
        f"{name}/{field}": value for name, t in tensors.items() for field, value in fingerprint_of(name, t).items()
    }
    arrays.update({f"{name}/raw": np.asarray(value) for name, value in (raw or {}).items()})
    np.savez_compressed(npz, **arrays)
    record = {
        "format": FORMAT_VERSION,
        "method": method,
        "architecture": dict(architecture),
        "tolerance": {"rtol": RTOL, "rule": "tests/parity.py::assert_close"},
        "seed": SEED,
        "provenance": dict(provenance),
        "tensors": sorted(tensors),
    }
    if raw:
        record["raw"] = sorted(raw)
    meta.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return npz, meta


def load_reference(method: str, architecture: Mapping[str, Any], directory: Path = REFERENCE_DIR) -> Reference:
    """Load ``<method>.npz``/``.json`` and check it was recorded for ``architecture`` (backbone, input size, ...).

    Raises :class:`ParityReferenceError` naming the file when it is missing or unreadable, or when any key of
    ``architecture`` differs from what the file records (each differing key listed as recorded -> expected).
    Arrays are read with ``allow_pickle=False``: a file from elsewhere cannot execute code.
    """
    npz, meta_path = reference_paths(method, directory)
    for path in (npz, meta_path):
        if not path.is_file():
            raise ParityReferenceError(
                f"{path}: parity reference missing; it is recorded from the released code of {method!r} as "
                f"tests/parity_reference/README.md describes"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise ParityReferenceError(f"{meta_path}: unreadable parity reference ({error})") from error
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise ParityReferenceError(f"{npz}: unreadable parity reference ({error})") from error
    recorded = meta.get("architecture", {})
    wrong = {k: (recorded.get(k), v) for k, v in architecture.items() if _normalise(recorded.get(k)) != _normalise(v)}
    if wrong:
        listing = "; ".join(f"{k}: recorded {a!r} -> expected {b!r}" for k, (a, b) in wrong.items())
        raise ParityReferenceError(f"{meta_path}: recorded for a different architecture or input ({listing})")
    return Reference(npz, meta, arrays)


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def assert_close(reference: Reference, name: str, tensor: Tensor, rtol: float = RTOL) -> None:
    """``tensor`` agrees with the recorded tensor ``name`` within ``rtol`` of its magnitude.

    Same shape; every sampled entry, per-channel and per-position mean within ``rtol * (|ref| + scale)``, where
    scale is the recorded tensor's root mean square; sum within ``rtol`` of the absolute sum; absolute sum and sum
    of squares within ``rtol`` relative. The message names the reference file, the tensor and the worst field.
    """
    ref = reference.fields(name)
    if name.startswith("step/"):
        # Adam's first update is lr * g / (|g| + eps): entries with |g| near eps amplify the gradient's last-bit
        # rounding (gradients themselves are held to ``rtol``), so updates are held to STEP_RTOL.
        rtol = max(rtol, STEP_RTOL)
    got = fingerprint_of(name, tensor)
    if tuple(got["shape"]) != tuple(ref["shape"]):
        raise AssertionError(
            f"{reference.path} [{name}]: shape {tuple(got['shape'])} != recorded {tuple(ref['shape'])}"
        )
    numel = max(1, int(np.prod(ref["shape"])))
    scale = float(np.sqrt(ref["sq_sum"] / numel))
    problems = []
    for field in ("sample", "channel_mean", "position_mean"):
        if field in ref:
            error = np.abs(got[field] - ref[field])
            bound = rtol * (np.abs(ref[field]) + scale) + 1e-30
            if np.any(error > bound):
                worst = int(np.argmax(error / bound))
                problems.append(
                    f"{field}[{worst}] = {got[field][worst]:.9g} vs recorded {ref[field][worst]:.9g} "
                    f"({int(np.sum(error > bound))} of {error.size} outside rtol {rtol:g})"
                )
    if abs(float(got["sum"]) - float(ref["sum"])) > rtol * float(ref["abs_sum"]) + 1e-30:
        problems.append(f"sum = {float(got['sum']):.9g} vs recorded {float(ref['sum']):.9g}")
    for field in ("abs_sum", "sq_sum"):
        if abs(float(got[field]) - float(ref[field])) > rtol * abs(float(ref[field])) + 1e-30:
            problems.append(f"{field} = {float(got[field]):.9g} vs recorded {float(ref[field]):.9g}")
    if problems:
        raise AssertionError(f"{reference.path} [{name}] drifted from the released code: " + "; ".join(problems))


def grads_and_steps(named: Iterable[tuple[str, nn.Parameter]], before: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """After ``backward()`` and one optimiser step: ``grad/<name>`` (the gradient) and ``step/<name>`` (the
    parameter after the step minus ``before[name]``, the update) for every parameter with a gradient."""
    out = {}
    for name, p in named:
        if p.grad is None:
            continue
        out[f"grad/{name}"] = p.grad.detach().clone()
        out[f"step/{name}"] = (p.detach() - before[name]).clone()
    return out


def assert_first_adam_step_close(
    reference: Reference,
    name: str,
    step: Tensor,
    grad: Tensor,
    param: Tensor,
    lr: float,
    eps: float = 1e-8,
    rtol: float = RTOL,
) -> None:
    """A first Adam update ``step/<p>`` agrees with the recorded one to the precision its gradient's check implies.

    The first step of Adam (bias-corrected, no weight decay) is ``-lr g / (|g| + eps)``: about ``-lr sign(g)``,
    with derivative ``lr eps / (|g| + eps)^2`` in ``g``. An entry whose gradient is near ``eps`` therefore turns the
    gradient's admitted difference (``rtol (|g| + rms(g))``, :func:`assert_close`'s rule for ``grad/<p>``) into an
    update difference of up to ``lr / (4 eps)`` times it, far above ``rtol`` of the update; and an update measured as
    ``p_after - p_before`` is only known to one float32 ulp of the parameter on each side (a parameter ~1 moved by
    lr 5e-3 is known to 2.4e-5 of the step). Each entry is allowed :func:`assert_close`'s bound plus both terms,
    computed from ``grad`` (kdad's gradient) and ``param`` (the parameter after the step); the sums get the sum of
    the per-entry allowances. ``step``, ``grad`` and ``param`` are kdad's full tensors.
    """
    ref = reference.fields(name)
    got = fingerprint_of(name, step)
    if tuple(got["shape"]) != tuple(ref["shape"]):
        raise AssertionError(
            f"{reference.path} [{name}]: shape {tuple(got['shape'])} != recorded {tuple(ref['shape'])}"
        )
    # float32 allowances (a bound needs no more), float64 sums.
    g, s, p = (t.detach().to("cpu", torch.float32).flatten() for t in (grad, step, param))
    g_abs = g.abs()
    g_scale = float(g.square().mean(dtype=torch.float64).sqrt())
    allowance = (lr * eps * rtol) * (g_abs + g_scale) / (g_abs + eps).square()
    allowance = allowance.clamp_(max=2 * lr).add_(p.abs().mul_(2 * torch.finfo(torch.float32).eps))
    scale = float(np.sqrt(ref["sq_sum"] / max(1, int(np.prod(ref["shape"])))))
    index = _sample_index(s.numel(), UPDATE_SAMPLE_SIZE)
    bound = rtol * (np.abs(ref["sample"]) + scale) + allowance[index].double().numpy()
    error = np.abs(got["sample"] - ref["sample"])
    problems = []
    if np.any(error > bound):
        worst = int(np.argmax(error / bound))
        problems.append(
            f"sample[{worst}] = {got['sample'][worst]:.9g} vs recorded {ref['sample'][worst]:.9g} "
            f"({int(np.sum(error > bound))} of {error.size} outside the bound)"
        )
    total = float(allowance.sum(dtype=torch.float64))
    if abs(float(got["sum"]) - float(ref["sum"])) > rtol * float(ref["abs_sum"]) + total:
        problems.append(f"sum = {float(got['sum']):.9g} vs recorded {float(ref['sum']):.9g}")
    if abs(float(got["abs_sum"]) - float(ref["abs_sum"])) > rtol * float(ref["abs_sum"]) + total:
        problems.append(f"abs_sum = {float(got['abs_sum']):.9g} vs recorded {float(ref['abs_sum']):.9g}")
    sq_allowance = float(((2 * s.abs() + allowance) * allowance).sum(dtype=torch.float64))
    if abs(float(got["sq_sum"]) - float(ref["sq_sum"])) > rtol * float(ref["sq_sum"]) + sq_allowance:
        problems.append(f"sq_sum = {float(got['sq_sum']):.9g} vs recorded {float(ref['sq_sum']):.9g}")
    if problems:
        raise AssertionError(f"{reference.path} [{name}] drifted from the released code: " + "; ".join(problems))
