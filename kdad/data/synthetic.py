"""The embedded synthetic benchmark: procedurally generated inspection images in the MVTec AD layout.

It is the default dataset because it needs no download: ``ensure_synthetic_benchmark`` generates the
requested categories into a cache folder on first use and reuses them afterwards::

    <root>/<size>px-<hash>/params.json
    <root>/<size>px-<hash>/<category>/manifest.json
    <root>/<size>px-<hash>/<category>/train/good/000.png
    <root>/<size>px-<hash>/<category>/test/good/000.png
    <root>/<size>px-<hash>/<category>/test/<defect>/000.png
    <root>/<size>px-<hash>/<category>/ground_truth/<defect>/000_mask.png   (uint8 0/255, one channel)

The hash covers every parameter and the generator version, so a different size or count never reuses
stale files. Every image has its own random generator keyed by (seed, category, size, split, defect,
index): a category's files are byte-identical whatever other categories are generated and in which order.

A category is written into a temporary sibling folder and renamed into place when complete (its manifest
is written last), so a crash or a concurrent generation (a parallel sweep) never leaves a folder that
looks complete but is not. A per-category file lock keeps concurrent processes from doing the work twice.

Command line: ``python -m kdad.data.synthetic --root DIR [--categories a,b] [--image-size N]``.
See docs/synthetic.md for what the categories and defects look like.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from kdad.data.synthetic_base import Category
from kdad.data.synthetic_objects import OBJECTS
from kdad.data.synthetic_render import apply_sensor
from kdad.data.synthetic_textures import TEXTURES

try:  # POSIX only: without it, concurrent processes may both generate a category (still safely).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# Bump whenever a change alters any generated pixel: it is part of the cache folder's hash.
GENERATOR_VERSION = 1
DEFAULT_ROOT = Path("~/.cache/kdad/synthetic")

_REGISTRY: dict[str, Category] = {c.name: c for c in (*TEXTURES, *OBJECTS)}
SYNTHETIC_CATEGORIES: tuple[str, ...] = tuple(_REGISTRY)
SYNTHETIC_DEFECTS: dict[str, tuple[str, ...]] = {name: c.defects for name, c in _REGISTRY.items()}

NORMAL = "good"
MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp__"
# A temporary folder this old is abandoned even if its owner cannot be checked (another host): generating
# one category takes seconds.
_STALE_AFTER_S = 3600.0
_THREADS = min(os.cpu_count() or 1, 8)


@dataclass(frozen=True)
class BenchmarkParams:
    """Everything that determines the generated files (besides the category and the generator version)."""

    image_size: int = 256
    n_train: int = 100
    n_test_good: int = 20
    n_test_per_defect: int = 15
    seed: int = 0

    def validate(self) -> None:
        for field, value in asdict(self).items():
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"{field} must be an integer, got {value!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if min(self.n_train, self.n_test_good, self.n_test_per_defect) < 1:
            raise ValueError("n_train, n_test_good and n_test_per_defect must be at least 1")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    def to_json(self) -> dict[str, int]:
        return {"version": GENERATOR_VERSION, **{k: int(v) for k, v in asdict(self).items()}}

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()
        return f"{self.image_size}px-{digest[:10]}"


# ------------------------------------------------------------------------------------------- rendering
def _stable_id(text: str) -> int:
    # crc32, not hash(): Python's string hash is salted per process.
    return zlib.crc32(text.encode())


def image_rng(seed: int, category: str, size: int, split: str, defect: str, index: int) -> np.random.Generator:
    """The generator of one image, independent of every other image."""
    key = [seed, _stable_id(category), size, _stable_id(split), _stable_id(defect), index]
    return np.random.default_rng(np.random.SeedSequence(key))


def render_synthetic_image(
    category: str,
    defect: str = NORMAL,
    index: int = 0,
    image_size: int = 256,
    seed: int = 0,
    split: str = "test",
) -> tuple[np.ndarray, np.ndarray]:
    """One image exactly as the benchmark writes it: (H x W x 3 RGB uint8, H x W bool mask).

    ``defect`` is ``"good"`` or one of ``SYNTHETIC_DEFECTS[category]``; ``split`` is "train" or "test".
    """
    spec = _category(category)
    if defect != NORMAL and defect not in spec.defects:
        raise ValueError(f"unknown defect {defect!r} for {category}; valid: {', '.join(spec.defects)}")
    rng = image_rng(seed, category, image_size, split, defect, index)
    img, mask = spec.render(rng, image_size, None if defect == NORMAL else defect)
    return apply_sensor(rng, img), mask


def _category(name: str) -> Category:
    if name not in _REGISTRY:
        raise ValueError(f"unknown synthetic category {name!r}; valid categories: {', '.join(SYNTHETIC_CATEGORIES)}")
    return _REGISTRY[name]


def _write_png(path: Path, array: np.ndarray) -> None:
    # OpenCV writes no timestamps or other metadata, so equal arrays give byte-identical files.
    data = array[..., ::-1] if array.ndim == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _plan(spec: Category, params: BenchmarkParams) -> list[tuple[str, str, int]]:
    """(split, defect, count) of every folder of a category."""
    plan = [("train", NORMAL, params.n_train), ("test", NORMAL, params.n_test_good)]
    return plan + [("test", defect, params.n_test_per_defect) for defect in spec.defects]


def _write_sample(name: str, params: BenchmarkParams, dest: Path, split: str, defect: str, stem: str) -> None:
    image, mask = render_synthetic_image(name, defect, int(stem), params.image_size, params.seed, split)
    _write_png(dest / split / defect / f"{stem}.png", image)
    if defect != NORMAL:
        _write_png(dest / "ground_truth" / defect / f"{stem}_mask.png", mask.astype(np.uint8) * 255)


def generate_category(name: str, params: BenchmarkParams, dest: Path) -> dict[str, int]:
    """Writes every image and mask of category ``name`` under ``dest``; returns the count per folder.

    Images are independent (one generator each), so they are rendered on a few threads: NumPy and OpenCV
    release the GIL in their kernels, and the files do not depend on the scheduling.
    """
    spec = _category(name)
    width = max(3, len(str(max(params.n_train, params.n_test_good, params.n_test_per_defect) - 1)))
    jobs: list[tuple[str, str, str]] = []
    counts: dict[str, int] = {}
    for split, defect, count in _plan(spec, params):
        (dest / split / defect).mkdir(parents=True)
        if defect != NORMAL:
            (dest / "ground_truth" / defect).mkdir(parents=True)
        jobs += [(split, defect, f"{index:0{width}d}") for index in range(count)]
        counts[f"{split}/{defect}"] = count
    pool = ThreadPoolExecutor(max_workers=_THREADS)
    try:
        # list() re-raises the first exception of any job.
        list(pool.map(lambda job: _write_sample(name, params, dest, *job), jobs))
    finally:
        # On an error or Ctrl-C, drop the queued images instead of rendering the rest of the category.
        pool.shutdown(wait=True, cancel_futures=True)
    return counts


# ------------------------------------------------------------------------------------------- caching
def _manifest(name: str, params: BenchmarkParams, counts: dict[str, int]) -> dict:
    spec = _category(name)
    return {
        "generator": "kdad.data.synthetic",
        "version": GENERATOR_VERSION,
        "category": name,
        "kind": spec.kind,
        "description": spec.describe(),
        "params": params.to_json(),
        "defects": list(spec.defects),
        "counts": counts,
    }


def is_complete(category_dir: Path, params: BenchmarkParams) -> bool:
    """True if ``category_dir`` holds a finished generation of exactly these parameters."""
    try:
        manifest = json.loads((category_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("version") == GENERATOR_VERSION
        and manifest.get("category") == category_dir.name
        and manifest.get("params") == params.to_json()
    )


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _temp_dir(base: Path, name: str) -> Path:
    return base / f"{_TMP_PREFIX}{name}__{_host()}__{os.getpid()}__{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_stale(temp: Path) -> bool:
    """An abandoned temporary folder: its process is gone (same host) or it is older than an hour."""
    try:
        age = time.time() - temp.stat().st_mtime
    except OSError:
        return False
    parts = temp.name[len(_TMP_PREFIX) :].rsplit("__", 3)  # name, host, pid, token
    same_host = len(parts) == 4 and parts[1] == _host() and parts[2].isdigit()
    if same_host and not _pid_alive(int(parts[2])):
        return True
    return age > _STALE_AFTER_S


def _remove_stale_temps(base: Path, name: str) -> None:
    for temp in base.glob(f"{_TMP_PREFIX}{name}__*"):
        if _is_stale(temp):
            shutil.rmtree(temp, ignore_errors=True)


def _discard(folder: Path, base: Path, name: str) -> None:
    """Removes an unusable folder: renamed first, so no reader ever sees it half-deleted."""
    trash = _temp_dir(base, name)
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _category_lock(base: Path, name: str) -> Iterator[None]:
    """Serialises generations of one category across processes; the OS releases it if the holder dies."""
    if fcntl is None:
        yield
        return
    with open(base / f".{name}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _ensure_category(base: Path, name: str, params: BenchmarkParams) -> bool:
    """Generates category ``name`` under ``base`` unless complete; True if it was generated now."""
    final = base / name
    if is_complete(final, params):
        return False
    with _category_lock(base, name):
        if is_complete(final, params):  # another process finished it while we waited
            return False
        _remove_stale_temps(base, name)
        if final.exists():
            _discard(final, base, name)
        temp = _temp_dir(base, name)
        try:
            temp.mkdir()
            counts = generate_category(name, params, temp)
            # The manifest goes last: a folder with one is complete by construction.
            (temp / MANIFEST).write_text(json.dumps(_manifest(name, params, counts), indent=2, sort_keys=True) + "\n")
            os.rename(temp, final)
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            if is_complete(final, params):  # lost a rename race against a process without the lock
                return False
            raise
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    return True


def _write_params(base: Path, params: BenchmarkParams) -> None:
    """A human-readable record of the parameters behind the hashed folder name (written atomically)."""
    target = base / "params.json"
    if target.exists():
        return
    temp = base / f".params.{os.getpid()}.{uuid.uuid4().hex[:8]}.json"
    temp.write_text(json.dumps(params.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(temp, target)


def resolve_categories(categories: Sequence[str] | str | None) -> list[str]:
    """The requested categories in order without duplicates; None means all. Unknown names raise."""
    if categories is None:
        return list(SYNTHETIC_CATEGORIES)
    names = [categories] if isinstance(categories, str) else list(categories)
    for name in names:
        _category(name)
    return list(dict.fromkeys(names))


def ensure_synthetic_benchmark(
    root: str | Path,
    categories: Sequence[str] | None = None,
    image_size: int = 256,
    n_train: int = 100,
    n_test_good: int = 20,
    n_test_per_defect: int = 15,
    seed: int = 0,
) -> Path:
    """Generates the missing requested categories and returns the folder that holds the category folders.

    The returned folder (``root/<size>px-<hash>``) is specific to these parameters; categories already
    generated there are reused. ``categories=None`` means all of ``SYNTHETIC_CATEGORIES``. Raises
    ``ValueError`` for an unknown category or invalid sizes.
    """
    params = BenchmarkParams(image_size, n_train, n_test_good, n_test_per_defect, seed)
    params.validate()
    names = resolve_categories(categories)
    base = Path(root).expanduser() / params.folder_name()
    base.mkdir(parents=True, exist_ok=True)
    _write_params(base, params)
    for name in names:
        _ensure_category(base, name, params)
    return base


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdad.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="cache root (default: %(default)s)")
    parser.add_argument(
        "--categories", default=None, help=f"comma-separated subset of: {','.join(SYNTHETIC_CATEGORIES)}"
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-per-defect", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    start = time.perf_counter()
    try:
        base = ensure_synthetic_benchmark(
            args.root,
            names,
            args.image_size,
            args.n_train,
            args.n_test_good,
            args.n_test_per_defect,
            args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    elapsed = time.perf_counter() - start
    done = resolve_categories(names)
    print(f"synthetic benchmark: {len(done)} categories ({', '.join(done)}) in {base}")
    print(f"took {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
