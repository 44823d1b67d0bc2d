"""Lightning callbacks kdad adds to every run."""

from kdad.runner.callbacks.epoch import EpochCheckpoint
from kdad.runner.callbacks.interrupt import InterruptCheckpoint

__all__ = ["EpochCheckpoint", "InterruptCheckpoint"]
