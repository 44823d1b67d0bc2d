"""Lightning callbacks kdad adds to every run."""

from kdad.callbacks.interrupt import InterruptCheckpoint

__all__ = ["InterruptCheckpoint"]
