"""Write ``last.ckpt`` after every training epoch, so a run killed outright (SIGKILL, out of memory, a node lost)
resumes from its last finished epoch when the same command is run again.

Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it also saves a top-k checkpoint,
so with ``save_top_k: 0`` (the ``checkpoint=last`` policy) it would appear only when training ends. The file is
written to a temporary name and renamed, so a kill during the write leaves the previous epoch's file intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochCheckpoint(Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        partial = self.path.with_name(self.path.name + ".partial")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(partial, weights_only=False)  # full state; all ranks call, rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        trainer.strategy.barrier()
