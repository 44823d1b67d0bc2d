"""Lightning callbacks kdad adds to every run."""

from kdad.callbacks.epoch import EpochCheckpoint
from kdad.callbacks.interrupt import InterruptCheckpoint

__all__ = ["EpochCheckpoint", "InterruptCheckpoint"]
