"""Teacher-feature cache: a frozen teacher's features of each training image computed once, served every epoch.

Most kdad methods keep their pretrained teacher frozen (eval mode, no gradients) and, without training
augmentations, feed it the same images every epoch: its forward pass would be recomputed each epoch for nothing.
:class:`TeacherCache` (``speed.teacher_cache``: ``auto`` by default, ``on``, ``off``) keeps those features.

How it works (and why it cannot change what is computed):

* **Which calls.** At each training batch the LightningModule *binds* the batch to every cacheable teacher
  (:meth:`TeacherCache.bind`): the teacher then serves exactly one input, the batch's own ``image`` tensor (an
  identity check, ``images is batch["image"]``). Any other input (RD++'s simplex-noise copy, the DRAEM images of RD
  with Expert and AAND's stage I, a validation batch) goes through the network as before. So a method that also
  feeds synthetic anomalies to its teacher gets the clean-image pass cached and the synthetic one computed: RD++
  caches its clean pass, RD with Expert its *expert*'s clean pass (its trainable teacher is never cached), AAND the
  raw teacher features of stage II and of the student warm-up.
* **Which image.** A batch names its images by ``image_path`` (every kdad dataset's items carry it); the path is the
  key. Shuffling changes nothing: features are looked up per image, in the batch's order.
* **When.** Lazily: an image's features are stored the first time the teacher computes them (the first epoch
  computes every batch as without the cache, so its results are identical); later batches gather them. A batch
  with images not yet stored computes those images only.
* **Where.** In memory (on the training device) when the features of the whole training set fit the budget
  (``speed.teacher_cache_memory_gb``, at most half of the host's available memory, or a quarter of the GPU's free
  memory), else on disk as memory-mapped files (``speed.teacher_cache_dir``, default the run folder), deleted when
  the fit ends. The choice and the size are logged in one line when the first features are stored.
* **When not.** Off, with a one-line reason, wherever it would change results: training augmentations (the teacher's
  input differs every epoch), a trainable teacher (``frozen=False``: RD with Expert's teacher), a teacher in train
  mode (BatchNorm statistics would update) or with parameters requiring gradients, batches without ``image_path``, a
  training dataset that does not say whether it augments. ``on`` raises that reason as an error instead of training
  without the cache.

Numerics: a cached image's features are the values the teacher computed for it in an earlier batch. Per image, an
eval-mode network's output does not depend on the other images of its batch up to floating-point rounding (oneDNN /
cuDNN may pick another kernel for another batch size), so results are identical or within fp32 rounding
(``tests/test_teacher_cache.py`` holds both to that).

Distributed training: each process caches the images it is served (the DistributedSampler reshuffles shards every
epoch, so a process fills up towards the whole training set over the first epochs); the budget is per process and
disk files are per process.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from kdad.errors import ConfigError, check_choice

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
GIB = 2**30
MIB = 2**20
#: At most this share of the host's available memory / the GPU's free memory goes to an in-memory cache.
HOST_MEMORY_SHARE = 0.5
DEVICE_MEMORY_SHARE = 0.25
#: numpy has no bfloat16: its features are stored on disk as int16 bit patterns and viewed back.
_DISK_DTYPES = {torch.bfloat16: (np.int16, torch.int16)}


def available_memory(device: torch.device) -> int:
    """Bytes an in-memory cache may take on ``device``: a share of the GPU's free memory or the host's available."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(DEVICE_MEMORY_SHARE * free)
    import psutil

    return int(HOST_MEMORY_SHARE * psutil.virtual_memory().available)


def teacher_reasons(teacher: nn.Module) -> list[str]:
    """Why ``teacher``'s features would change during training (empty: safe to cache)."""
    reasons = []
    if not getattr(teacher, "frozen", False):
        reasons.append("trainable teacher (frozen=False)")
    if any(m.training for m in teacher.modules()):
        reasons.append("teacher in train mode (BatchNorm statistics would update)")
    if any(p.requires_grad for p in teacher.parameters()):
        reasons.append("teacher parameters require gradients")
    return reasons


def data_reasons(dataset: Any, batch: dict) -> list[str]:
    """Why the training batches' ``image`` would not be the same tensor for an image every epoch (empty: safe)."""
    reasons = []
    if "image_path" not in batch:
        reasons.append("training batches carry no image_path to look cached features up by")
    if dataset is None or not hasattr(dataset, "transform"):
        reasons.append(f"training dataset {type(dataset).__name__} does not say whether it augments")
    elif dataset.transform is not None:
        reasons.append("train augmentations change the teacher's input every epoch")
    return reasons


def _describe_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


class FeatureStore:
    """The features of one teacher: a slot per training image, levels of fixed shape, in memory or memory-mapped."""

    def __init__(self, name: str, capacity: int, directory: Path | None) -> None:
        self.name = name
        self.capacity = int(capacity)
        self.directory = directory
        self.slots: dict[str, int] = {}
        self.levels: list[Tensor] = []  # [capacity, C, h, w] per level (on disk: CPU tensors over a memmap)
        self.filled: Tensor | None = None
        self.channels_last: list[bool] = []
        self.device: torch.device | None = None
        self.on_disk = False
        self.bytes = 0
        self.hits = 0
        self.computed = 0
        self._files: list[Path] = []

    # ------------------------------------------------------------------ allocation
    def allocate(self, example: Sequence[Tensor], budget: int, disk_dir: Path) -> int:
        """Allocate storage for ``capacity`` images shaped like ``example`` (one batch's levels); returns the bytes
        taken from the memory budget."""
        per_image = sum(f[0].numel() * f.element_size() for f in example)
        self.bytes = per_image * self.capacity
        self.device = example[0].device
        self.channels_last = [f.dim() == 4 and f.is_contiguous(memory_format=torch.channels_last) for f in example]
        self.on_disk = self.bytes > budget
        formats = [torch.channels_last if last else torch.contiguous_format for last in self.channels_last]
        if not self.on_disk:
            # In the teacher's memory format, so one image's features are one block and gathering is a plain copy.
            self.levels = [
                torch.empty((self.capacity, *f.shape[1:]), dtype=f.dtype, device=self.device).contiguous(
                    memory_format=m
                )
                for f, m in zip(example, formats, strict=True)
            ]
        else:
            disk_dir.mkdir(parents=True, exist_ok=True)
            self.directory = Path(tempfile.mkdtemp(prefix=f"teacher-cache-{self.name}-", dir=disk_dir))
            for level, (f, last) in enumerate(zip(example, self.channels_last, strict=True)):
                np_dtype, view = _DISK_DTYPES.get(f.dtype, (None, None))
                path = self.directory / f"level{level}.bin"
                if np_dtype is None:
                    np_dtype = torch.empty((), dtype=f.dtype).numpy().dtype
                # channels-last features are stored image by image as [h, w, C] blocks and viewed back as NCHW
                shape = (self.capacity, *f.shape[2:], f.shape[1]) if last else (self.capacity, *f.shape[1:])
                tensor = torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="w+", shape=shape))
                tensor = tensor.view(f.dtype) if view is not None else tensor
                self.levels.append(tensor.permute(0, 3, 1, 2) if last else tensor)
                self._files.append(path)
        self.filled = torch.zeros(self.capacity, dtype=torch.bool)
        return 0 if self.on_disk else self.bytes

    def describe(self) -> str:
        where = f"disk (memory-mapped, {self.directory})" if self.on_disk else f"memory ({self.device})"
        return f"{self.name}: {where}, {_describe_bytes(self.bytes)} for {self.capacity} images"

    def release(self) -> None:
        self.levels, self.slots, self.filled = [], {}, None
        if self.on_disk and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------ look-up
    def _slot(self, key: str) -> int | None:
        slot = self.slots.get(key)
        if slot is None and len(self.slots) < self.capacity:
            slot = self.slots[key] = len(self.slots)
        return slot

    def gather(self, slots: Sequence[int]) -> list[Tensor]:
        """The stored features of ``slots``, in that order, on the training device, in the teacher's memory format.

        Advanced indexing keeps the storage's (= the teacher's) memory format and copies whole image blocks:
        ``index_select`` on channels-last storage measured ~15x slower on CPU."""
        out = []
        for level in self.levels:
            index = torch.as_tensor(slots, dtype=torch.long, device=level.device)
            out.append(level[index].to(self.device, non_blocking=True))
        return out

    def store(self, slots: Sequence[int], features: Sequence[Tensor]) -> None:
        for level, f in zip(self.levels, features, strict=True):
            level[torch.as_tensor(slots, dtype=torch.long, device=level.device)] = f.detach().to(level.device)
        assert self.filled is not None
        self.filled[torch.as_tensor(slots, dtype=torch.long)] = True


@dataclass
class _Binding:
    images: Tensor
    keys: list[str]


class TeacherCache:
    """The cache of one LightningModule's frozen teachers (see the module docstring).

    Args:
        mode: ``auto`` (on where it cannot change results, otherwise off with the reason logged), ``on`` (the
            same, but a reason is an error) or ``off``.
        memory_gb: memory budget of the in-memory cache (also capped by the device's available memory); features
            of a training set larger than that go to disk, memory-mapped.
        directory: folder of the disk cache (None: the trainer's ``default_root_dir``, i.e. the run folder).
    """

    def __init__(self, mode: str = "auto", memory_gb: float = 4.0, directory: str | Path | None = None) -> None:
        self.mode = check_choice(str(mode), MODES, "speed.teacher_cache")
        self.memory_gb = float(memory_gb)
        self.directory = Path(directory).expanduser() if directory else None
        self.last: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Drop every store (end of a fit); the next fit decides again at its first batch."""
        if getattr(self, "decided", False):
            #: What the finished fit did: its log line and per-teacher figures (tests and the bench read it).
            self.last = {"summary": self.summary, "stats": self.stats()}
        for store in getattr(self, "stores", {}).values():
            store.release()
        self.decided = False
        self.stores: dict[str, FeatureStore] = {}
        self.teachers: dict[str, nn.Module] = {}
        self.reasons: dict[str, list[str]] = {}
        self.summary = ""
        self._budget = 0
        self._disk_dir = Path(tempfile.gettempdir())
        self._announced = False

    @property
    def active(self) -> bool:
        return bool(self.stores)

    # ------------------------------------------------------------------ decision (first training batch of a fit)
    def decide(self, model: nn.Module, batch: dict, dataset: Any, capacity: int, root: str | Path | None) -> None:
        """Pick the teachers to cache for this fit (the model's direct children that are teachers), or none."""
        from kdad.blocks.teacher import Teacher

        self.decided = True
        if self.mode == "off":
            self.summary = "teacher cache: off (speed.teacher_cache=off)"
            rank_zero_info(self.summary)
            return
        teachers = {name: m for name, m in model.named_children() if isinstance(m, Teacher)}
        common = data_reasons(dataset, batch)
        if capacity < 1:
            common.append("the training set's size is unknown")
        for name, teacher in teachers.items():
            reasons = common + teacher_reasons(teacher)
            if reasons:
                self.reasons[name] = reasons
            else:
                self.teachers[name] = teacher
        if not teachers:
            self.reasons["model"] = ["no teacher block (kdad.blocks.teacher.Teacher) among the model's networks"]
        if not self.teachers:
            reason = "; ".join(f"{name}: {', '.join(r)}" for name, r in self.reasons.items())
            if self.mode == "on":
                raise ConfigError(f"speed.teacher_cache=on, but no teacher can be cached: {reason}")
            self.summary = f"teacher cache: off ({reason})"
            rank_zero_info(self.summary)
            return
        self._budget = min(int(self.memory_gb * GIB), available_memory(batch["image"].device))
        self._disk_dir = self.directory or Path(root or tempfile.gettempdir())
        self.stores = {name: FeatureStore(name, capacity, None) for name in self.teachers}

    # ------------------------------------------------------------------ per batch
    def bind(self, batch: dict) -> None:
        """Let every cached teacher serve this batch's ``image`` (and nothing else) until :meth:`unbind`."""
        if not self.stores:
            return
        binding = _Binding(batch["image"], [str(p) for p in batch["image_path"]])
        for name, teacher in self.teachers.items():
            teacher.feature_cache = _TeacherView(self, name, binding)

    def unbind(self) -> None:
        for teacher in self.teachers.values():
            teacher.feature_cache = None

    def serve(self, name: str, binding: _Binding, teacher: nn.Module, images: Tensor) -> list[Tensor] | None:
        """The teacher's features of ``images`` if they are the bound batch (computing and storing what is missing),
        else None (the caller computes them itself)."""
        if images is not binding.images:
            return None
        store = self.stores[name]
        slots = [store._slot(k) for k in binding.keys]

        def stored(slot: int | None) -> bool:
            return slot is not None and store.filled is not None and bool(store.filled[slot])

        compute = [i for i, s in enumerate(slots) if not stored(s)]
        if not compute:
            store.hits += len(slots)
            return store.gather(slots)
        if len(compute) == len(slots):
            fresh = list(nn.Module.__call__(teacher, images))
            out = fresh
        else:
            # Part of the batch is stored (e.g. a DDP process's new shard): compute the rest, keep the batch order.
            fresh = list(nn.Module.__call__(teacher, images[compute]))
            kept = [i for i in range(len(slots)) if i not in compute]
            cached = store.gather([slots[i] for i in kept])
            computed_rows = torch.as_tensor(compute, device=fresh[0].device)
            kept_rows = torch.as_tensor(kept, device=fresh[0].device)
            out = []
            for f, c, last in zip(fresh, cached, store.channels_last, strict=True):
                level = f.new_empty((len(slots), *f.shape[1:]))
                level.index_copy_(0, computed_rows, f).index_copy_(0, kept_rows, c)
                out.append(level.contiguous(memory_format=torch.channels_last) if last else level)
            store.hits += len(kept)
        new = [(j, slots[i]) for j, i in enumerate(compute) if slots[i] is not None]
        if new:
            if store.filled is None:
                self._budget -= store.allocate(fresh, self._budget, self._disk_dir)
                self._announce()
            rows = [j for j, _ in new]
            store.store([s for _, s in new], fresh if len(rows) == len(fresh) else [f[rows] for f in fresh])
            store.computed += len(new)
        return out

    def _announce(self) -> None:
        if self._announced or any(s.filled is None for s in self.stores.values()):
            return
        self._announced = True
        parts = [s.describe() for s in self.stores.values()]
        skipped = [f"not {name}: {', '.join(r)}" for name, r in self.reasons.items()]
        self.summary = "teacher cache: on (" + "; ".join(parts + skipped) + ")"
        rank_zero_info(self.summary)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per cached teacher: where, bytes, images served from the cache and computed (tests, the bench)."""
        return {
            name: {"on_disk": s.on_disk, "bytes": s.bytes, "hits": s.hits, "computed": s.computed}
            for name, s in self.stores.items()
        }


@dataclass
class _TeacherView:
    """What a bound teacher holds: its cache, its name there and the batch it may serve."""

    cache: TeacherCache
    name: str
    binding: _Binding

    def serve(self, teacher: nn.Module, images: Tensor) -> list[Tensor] | None:
        return self.cache.serve(self.name, self.binding, teacher, images)


def train_dataset_of(trainer: Any) -> tuple[Any, int]:
    """The training loader's dataset and its length (0 when unknown), from a Lightning trainer during fit."""
    loader = getattr(trainer, "train_dataloader", None)
    loaders: Iterable[Any] = loader if isinstance(loader, list | tuple) else [loader]
    loader = next(iter(loaders), None)
    dataset = getattr(loader, "dataset", None)
    try:
        return dataset, len(dataset) if dataset is not None else 0
    except TypeError:
        return dataset, 0
