"""Save ``last.ckpt`` when a run is interrupted, so re-running the same command resumes mid-epoch.

Only interruptions (Ctrl-C, SIGTERM turned into KeyboardInterrupt) are saved: a crash such as a non-finite
loss must not overwrite the last good checkpoint with the state that produced it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class InterruptCheckpoint(Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or not trainer.training:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(self.path, weights_only=False)
