"""Decode cache: every image is decoded and resized once, then served from memory or disk.

Decoding dominates data loading (a VisA JPG is ~1500x1000 and is resized to 256 px), so the resized uint8
arrays are kept in a per-process dict and, when a cache folder is given, as ``.npy`` files that later
epochs, DataLoader workers and later runs read instead of decoding again.

An entry's key holds everything that changes the pixels: the file's absolute path, size and mtime (so an
edited or replaced file is decoded again), the variant (kind, resolution, interpolation or mask mode),
Pillow's version (its resampling code defines the pixels) and a format version.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from kdad.data.errors import DatasetError

# Bump when the decoding or the on-disk format changes, so stale entries are never read.
CACHE_FORMAT_VERSION = 1

#: What one cache entry is decoded from: a file, or several files decoded into one array.
CachedFiles = Path | tuple[Path, ...]


@dataclass
class CacheStats:
    """Counts for this process: tests and logs use them to see whether decoding was skipped."""

    memory_hits: int = 0
    disk_hits: int = 0
    decodes: int = 0


class DecodeCache:
    """Memory (per process) + optional disk cache of decoded, resized arrays.

    Disk writes go to a temporary file in the target folder and are renamed into place, which is atomic
    on POSIX and Windows: concurrent writers (DataLoader workers, parallel runs) never expose a partial
    file, and the last rename wins with identical content.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.stats = CacheStats()
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._disk_writable = self.directory is not None

    def __len__(self) -> int:
        return len(self._memory)

    def key(self, path: CachedFiles, variant: str) -> str:
        """Hex digest identifying the decoded pixels of ``path`` under ``variant``.

        ``path`` may be a tuple of files decoded into one array (the mask files of one MVTec LOCO AD image, merged):
        every file's path, size and mtime then enter the key. A single file's key is the same as ever.
        """
        identity = []
        for file in (path,) if isinstance(path, str | os.PathLike) else path:
            try:
                stat = os.stat(file)
            except OSError as exc:
                raise DatasetError(
                    f"cannot read {file}: {exc.strerror}. The file was listed when the dataset was indexed; "
                    "was it moved or deleted since? Restore it or re-run so the dataset is indexed again."
                ) from exc
            identity += [str(Path(file).resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
        text = "|".join([f"v{CACHE_FORMAT_VERSION}", f"pillow{PIL.__version__}", variant, *identity])
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, path: CachedFiles, variant: str, decode: Callable[[CachedFiles], np.ndarray]) -> np.ndarray:
        """The cached array for (path, variant), calling ``decode(path)`` only on a miss (``path``: see ``key``).

        Returned arrays are read-only because they are shared between calls; copy before editing.
        """
        key = self.key(path, variant)
        array = self._memory.get(key)
        if array is not None:
            self._count("memory_hits")
            return array
        array = self._read_disk(key)
        if array is not None:
            self._count("disk_hits")
        else:
            array = np.ascontiguousarray(decode(path))
            self._count("decodes")
            self._write_disk(key, array)
        array.setflags(write=False)
        self._memory[key] = array
        return array

    def clear_memory(self) -> None:
        """Drop the in-memory entries (the disk cache is kept)."""
        self._memory.clear()

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _disk_path(self, key: str) -> Path:
        assert self.directory is not None
        # Two-level fan-out keeps folders small for datasets with tens of thousands of entries.
        return self.directory / key[:2] / f"{key}.npy"

    def _read_disk(self, key: str) -> np.ndarray | None:
        if self.directory is None:
            return None
        path = self._disk_path(key)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            # An unreadable entry (disk trouble, foreign file) is treated as a miss and rewritten.
            return None

    def _write_disk(self, key: str, array: np.ndarray) -> None:
        if self.directory is None or not self._disk_writable:
            return
        target = self._disk_path(key)
        tmp_name = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(tmp_name, target)
        except OSError as exc:
            if tmp_name is not None:
                Path(tmp_name).unlink(missing_ok=True)
            # A read-only or full disk must not stop training: keep the memory cache, warn once.
            self._disk_writable = False
            warnings.warn(
                f"kdad decode cache: cannot write to {self.directory} ({exc}); continuing with the in-memory "
                "cache only. Point data.cache_dir at a writable folder to keep decoded images across runs.",
                RuntimeWarning,
                stacklevel=3,
            )

    def __getstate__(self) -> dict:
        # Locks cannot be pickled (spawn/forkserver DataLoader workers pickle the dataset). With a disk cache,
        # workers re-read entries from disk (page-cache hot) instead of receiving a copy of every array.
        state = self.__dict__.copy()
        del state["_lock"]
        if self.directory is not None and self._disk_writable:
            state["_memory"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
