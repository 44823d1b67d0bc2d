"""Wall-clock timing that is honest on asynchronous devices: every reading synchronises CUDA first."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a clock reading includes the work issued before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    sync(device)
    return time.perf_counter()


@dataclass
class Bucket:
    """Accumulated seconds and calls of one timed part."""

    seconds: float = 0.0
    calls: int = 0


@contextlib.contextmanager
def timed_attribute(owner: Any, name: str, bucket: Bucket, device: torch.device) -> Iterator[None]:
    """Time every call of ``owner.name`` into ``bucket`` while the context is open, then restore it.

    ``owner`` may be an instance (the wrapper shadows the bound method) or a class (every instance is timed).
    """
    had_own = name in vars(owner)
    original = vars(owner).get(name)
    target = getattr(owner, name)

    @functools.wraps(target)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now(device)
        try:
            return target(*args, **kwargs)
        finally:
            bucket.seconds += now(device) - start
            bucket.calls += 1

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if had_own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)  # the inherited (or class) attribute shows through again


def timed_calls(fn: Callable[[], Any], repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds of one warm-up call, seconds of the ``repeats`` calls after it)."""
    start = now(device)
    fn()
    warm = now(device)
    for _ in range(repeats):
        fn()
    return warm - start, now(device) - warm


@dataclass
class LoopSplit:
    """Where a loop's wall time went: waiting for data, the step, and everything else (hooks, logging, loop)."""

    wall: float = 0.0
    data: float = 0.0
    step: float = 0.0
    batches: int = 0
    images: int = 0

    @property
    def rest(self) -> float:
        return max(0.0, self.wall - self.data - self.step)

    def minus(self, other: LoopSplit) -> LoopSplit:
        return LoopSplit(*(getattr(self, f.name) - getattr(other, f.name) for f in dataclasses.fields(self)))


class SplitTimer(L.Callback):
    """Splits training epochs and test passes into data wait and step time.

    Data wait is the time from the end of one batch (or the start of the epoch) to the start of the next:
    fetching, collating and moving the batch. The step is ``on_*_batch_start`` to ``on_*_batch_end``. The first
    ``warmup_batches`` training batches of every epoch are left out (one-time kernel and allocator set-up), so
    the training split starts at the end of the last warm-up batch.
    """

    # A plain class, not a dataclass: Hydra would turn a dataclass passed to instantiate() into a config node.
    def __init__(self, device: torch.device, warmup_batches: int = 1) -> None:
        self.device = device
        self.warmup_batches = warmup_batches
        self.train = LoopSplit()  # every epoch together
        self.train_epochs: list[LoopSplit] = []  # each epoch (AAND: one per stage)
        self.test = LoopSplit()
        self.epochs = 0
        self._before_epoch = LoopSplit()
        self._mark = 0.0
        self._start = 0.0
        self._window: float | None = None

    def _batch_start(self, split: LoopSplit, counted: bool) -> None:
        self._start = now(self.device)
        if counted:
            split.data += self._start - self._mark

    def _batch_end(self, split: LoopSplit, batch: dict, counted: bool) -> None:
        self._mark = now(self.device)
        if counted:
            split.step += self._mark - self._start
            split.batches += 1
            split.images += int(batch["image"].shape[0])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = now(self.device)
        self._window = self._mark if self.warmup_batches == 0 else None
        self._before_epoch = dataclasses.replace(self.train)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._batch_start(self.train, idx >= self.warmup_batches)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._batch_end(self.train, batch, idx >= self.warmup_batches)
        if idx + 1 == self.warmup_batches:
            self._window = self._mark

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._window is not None:
            self.train.wall += now(self.device) - self._window
        self.train_epochs.append(self.train.minus(self._before_epoch))
        self.epochs += 1

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = now(self.device)

    def on_test_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int, dataloader_idx: int = 0
    ) -> None:
        self._batch_start(self.test, True)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_end(self.test, batch, True)
