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

Each manifest records a content fingerprint (sha256 over the pixels of every image and mask) and the NumPy
and OpenCV versions that drew them. Reusing a category generated with other versions renders the first image
of each folder again and warns, naming the folder, if the pixels differ; ``--verify`` checks every file.

Command line: ``python -m kdad.data.embedded --root DIR [--categories a,b] [--image-size N] [--verify]``.
See docs/synthetic.md for what the categories and defects look like.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from kdad.data.embedded.category import Category, fallback_tally
from kdad.data.embedded.objects import OBJECTS
from kdad.data.embedded.render import apply_sensor
from kdad.data.embedded.textures import TEXTURES
from kdad.data.errors import DatasetError
from kdad.errors import check_choice

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
# The wheels that provide cv2; the first one installed is recorded with its exact build.
_OPENCV_DISTRIBUTIONS = (
    "opencv-python-headless",
    "opencv-python",
    "opencv-contrib-python-headless",
    "opencv-contrib-python",
)

Job = tuple[str, str, str]  # split, defect, file stem
A = TypeVar("A")
R = TypeVar("R")


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
    check_choice(defect, (NORMAL, *spec.defects), "defect", DatasetError)
    rng = image_rng(seed, category, image_size, split, defect, index)
    img, mask = spec.render(rng, image_size, None if defect == NORMAL else defect)
    return apply_sensor(rng, img), mask


def _category(name: str) -> Category:
    return _REGISTRY[check_choice(name, SYNTHETIC_CATEGORIES, "synthetic category", DatasetError)]


def _write_png(path: Path, array: np.ndarray) -> None:
    # OpenCV writes no timestamps or other metadata, so equal arrays give byte-identical files.
    data = array[..., ::-1] if array.ndim == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(data), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _plan(spec: Category, params: BenchmarkParams) -> list[tuple[str, str, int]]:
    """(split, defect, count) of every folder of a category."""
    plan = [("train", NORMAL, params.n_train), ("test", NORMAL, params.n_test_good)]
    return plan + [("test", defect, params.n_test_per_defect) for defect in spec.defects]


def _stem(params: BenchmarkParams, index: int) -> str:
    width = max(3, len(str(max(params.n_train, params.n_test_good, params.n_test_per_defect) - 1)))
    return f"{index:0{width}d}"


def _jobs(spec: Category, params: BenchmarkParams) -> list[Job]:
    """Every sample of a category, in folder order."""
    return [(split, defect, _stem(params, i)) for split, defect, count in _plan(spec, params) for i in range(count)]


def _sample_paths(split: str, defect: str, stem: str) -> list[str]:
    """The files of one sample, relative to the category folder: the image, then its mask if defective."""
    image = f"{split}/{defect}/{stem}.png"
    return [image] if defect == NORMAL else [image, f"ground_truth/{defect}/{stem}_mask.png"]


def _sample_arrays(name: str, params: BenchmarkParams, job: Job) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays one sample writes, keyed by relative path, and whether its defect needed the fallback."""
    split, defect, stem = job
    with fallback_tally() as tally:
        image, mask = render_synthetic_image(name, defect, int(stem), params.image_size, params.seed, split)
    arrays = [image] if defect == NORMAL else [image, mask.astype(np.uint8) * 255]
    return dict(zip(_sample_paths(*job), arrays, strict=True)), bool(tally)


def _pixel_digest(array: np.ndarray) -> str:
    """sha256 of an array's shape, type and values: equal pixels give equal digests whatever the PNG encoder."""
    digest = hashlib.sha256(f"{array.shape} {array.dtype}\n".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def content_fingerprint(digests: dict[str, str]) -> str:
    """The fingerprint of a category: sha256 over its sorted ``<relative path> <pixel digest>`` lines."""
    return hashlib.sha256("".join(f"{path} {digests[path]}\n" for path in sorted(digests)).encode()).hexdigest()


def dependency_versions() -> dict[str, str]:
    """Versions of the numeric libraries that shape the draws (SciPy is not used by the generator)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    versions = {"numpy": np.__version__, "opencv": cv2.__version__}
    for distribution in _OPENCV_DISTRIBUTIONS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            # The wheel's build number too: two builds of one OpenCV release can round differently.
            versions["opencv_wheel"] = f"{distribution}=={metadata.version(distribution)}"
            break
    return versions


def _write_sample(
    name: str, params: BenchmarkParams, dest: Path, split: str, defect: str, stem: str
) -> tuple[dict[str, str], bool]:
    """Renders and writes one sample; returns the pixel digest of each file and whether it fell back."""
    arrays, fallback = _sample_arrays(name, params, (split, defect, stem))
    for relative, array in arrays.items():
        _write_png(dest / relative, array)
    return {relative: _pixel_digest(array) for relative, array in arrays.items()}, fallback


def _map_jobs(function: Callable[[A], R], items: list[A]) -> list[R]:
    """``function`` over every item on a few threads: NumPy and OpenCV release the GIL in their kernels."""
    pool = ThreadPoolExecutor(max_workers=_THREADS)
    try:
        # list() re-raises the first exception of any job.
        return list(pool.map(function, items))
    finally:
        # On an error or Ctrl-C, drop the queued images instead of rendering the rest of the category.
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Generation:
    """What generating a category produced (recorded in its manifest)."""

    counts: dict[str, int]  # files per "split/defect" folder
    fingerprint: str  # see content_fingerprint
    fallback_files: list[str]  # images whose defect was placed by the fallback spot


def generate_category(name: str, params: BenchmarkParams, dest: Path) -> Generation:
    """Writes every image and mask of category ``name`` under ``dest``; returns counts and fingerprint.

    Images are independent (one generator each), so they are rendered on a few threads; the files do not
    depend on the scheduling.
    """
    spec = _category(name)
    for split, defect, _ in _plan(spec, params):
        (dest / split / defect).mkdir(parents=True)
        if defect != NORMAL:
            (dest / "ground_truth" / defect).mkdir(parents=True)
    jobs = _jobs(spec, params)
    results = _map_jobs(lambda job: _write_sample(name, params, dest, *job), jobs)
    digests = {path: digest for sample, _ in results for path, digest in sample.items()}
    return Generation(
        counts={f"{split}/{defect}": count for split, defect, count in _plan(spec, params)},
        fingerprint=content_fingerprint(digests),
        fallback_files=[_sample_paths(*job)[0] for job, (_, fallback) in zip(jobs, results, strict=True) if fallback],
    )


# ------------------------------------------------------------------------------------------- caching
def _manifest(name: str, params: BenchmarkParams, generation: Generation) -> dict:
    spec = _category(name)
    return {
        "generator": "kdad.data.embedded",
        "version": GENERATOR_VERSION,
        "category": name,
        "kind": spec.kind,
        "description": spec.describe(),
        "params": params.to_json(),
        "defects": list(spec.defects),
        "counts": generation.counts,
        "fingerprint": generation.fingerprint,
        "dependencies": dependency_versions(),
        "fallback_placements": len(generation.fallback_files),
        "fallback_files": generation.fallback_files,
    }


def _read_manifest(category_dir: Path) -> dict[str, Any]:
    """The manifest of a category folder, empty if missing or unreadable."""
    try:
        manifest = json.loads((category_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def is_complete(category_dir: Path, params: BenchmarkParams) -> bool:
    """True if ``category_dir`` holds a finished generation of exactly these parameters."""
    manifest = _read_manifest(category_dir)
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
            generation = generate_category(name, params, temp)
            # The manifest goes last: a folder with one is complete by construction.
            manifest = _manifest(name, params, generation)
            (temp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
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
    generated there are reused (after ``check_cached_category``, which warns if they were drawn by other
    NumPy/OpenCV versions and differ from what this environment draws). ``categories=None`` means all of
    ``SYNTHETIC_CATEGORIES``. Raises ``ValueError`` for an unknown category or invalid sizes.
    """
    params = BenchmarkParams(image_size, n_train, n_test_good, n_test_per_defect, seed)
    params.validate()
    names = resolve_categories(categories)
    base = Path(root).expanduser() / params.folder_name()
    base.mkdir(parents=True, exist_ok=True)
    _write_params(base, params)
    for name in names:
        if not _ensure_category(base, name, params):
            check_cached_category(base / name, params)
    return base


# ------------------------------------------------------------------------------------------- verification
# Probe outcomes per (category folder, recorded versions and fingerprint): one probe and one warning per process.
_PROBED: dict[tuple[str, str], bool] = {}


def _read_png(path: Path) -> np.ndarray | None:
    """The pixels of a written PNG as they were passed to ``_write_png`` (RGB or one channel), None if unreadable."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        return None
    return array[..., ::-1] if array.ndim == 3 else array


def _file_digest(path: Path) -> str:
    array = _read_png(path)
    return "unreadable" if array is None else _pixel_digest(array)


def _versions_text(versions: Any) -> str:
    if not isinstance(versions, dict) or not versions:
        return "unrecorded library versions"
    return ", ".join(f"{key} {value}" for key, value in sorted(versions.items()))


def _regenerate_hint(category_dir: Path) -> str:
    return (
        f"To regenerate it with the installed versions, delete {category_dir} (or point data.root / --root at "
        "another folder) and run again."
    )


def _probe(category_dir: Path, params: BenchmarkParams) -> list[str]:
    """Renders the first sample of every folder in memory; returns the files whose cached pixels differ."""
    name = category_dir.name
    differing = []
    for split, defect, _ in _plan(_category(name), params):
        arrays, _ = _sample_arrays(name, params, (split, defect, _stem(params, 0)))
        differing += [rel for rel, array in arrays.items() if _file_digest(category_dir / rel) != _pixel_digest(array)]
    return differing


def check_cached_category(category_dir: Path, params: BenchmarkParams) -> bool:
    """Cheap load-time check that a reused category is what this environment generates; False if not.

    Nothing is rendered when the manifest's NumPy/OpenCV versions are the installed ones. Otherwise the first
    image (and mask) of every folder is rendered in memory (a fraction of a second) and compared with the
    cached pixels; if any differs, one ``RuntimeWarning`` names the folder, both sets of versions and how to
    regenerate. The cached files are used either way. ``verify_category`` compares every file.
    """
    manifest = _read_manifest(category_dir)
    recorded, installed = manifest.get("dependencies"), dependency_versions()
    if recorded == installed:
        return True
    key = (str(category_dir), json.dumps([recorded, manifest.get("fingerprint")], sort_keys=True))
    if key not in _PROBED:
        differing = _probe(category_dir, params)
        _PROBED[key] = not differing
        if differing:
            warnings.warn(
                f"synthetic benchmark folder {category_dir} was generated with {_versions_text(recorded)}; the "
                f"installed {_versions_text(installed)} draw different pixels ({len(differing)} of the files "
                f"checked differ, e.g. {differing[0]}). The cached files are used as they are, so this data is not "
                f"what a fresh generation here would give. {_regenerate_hint(category_dir)} "
                "`python -m kdad.data.embedded --verify` compares every file.",
                RuntimeWarning,
                stacklevel=3,
            )
    return _PROBED[key]


def _drift_text(category_dir: Path, recorded: Any) -> str:
    installed = dependency_versions()
    if recorded == installed:  # same libraries, other pixels: the generator changed without a version bump
        return f"{category_dir}: this kdad draws different pixels with the same {_versions_text(installed)}."
    return (
        f"{category_dir}: generated with {_versions_text(recorded)}; the installed {_versions_text(installed)} "
        "draw different pixels."
    )


def _sample_digests(name: str, params: BenchmarkParams, job: Job) -> dict[str, str]:
    arrays, _ = _sample_arrays(name, params, job)
    return {relative: _pixel_digest(array) for relative, array in arrays.items()}


def verify_category(category_dir: Path, params: BenchmarkParams) -> list[str]:
    """Full check of a cached category (writes nothing); returns the problems found, empty if none.

    The files are decoded and fingerprinted and compared with the manifest's fingerprint (changed or damaged
    files); a complete in-memory regeneration is compared with it too (library versions that draw different
    pixels). Manifests written before fingerprints were recorded are compared with the files instead.
    """
    if not is_complete(category_dir, params):
        return [f"{category_dir} is missing or incomplete; run without --verify to generate it."]
    name = category_dir.name
    jobs = _jobs(_category(name), params)
    files = [relative for job in jobs for relative in _sample_paths(*job)]
    disk_digests = _map_jobs(lambda relative: _file_digest(category_dir / relative), files)
    on_disk = content_fingerprint(dict(zip(files, disk_digests, strict=True)))
    fresh_samples = _map_jobs(lambda job: _sample_digests(name, params, job), jobs)
    fresh = content_fingerprint({path: digest for sample in fresh_samples for path, digest in sample.items()})
    manifest = _read_manifest(category_dir)
    recorded = manifest.get("fingerprint", on_disk)
    problems = []
    if on_disk != recorded:
        problems.append(f"{category_dir}: files differ from the fingerprint in its {MANIFEST} (changed or damaged).")
    if fresh != recorded:
        problems.append(_drift_text(category_dir, manifest.get("dependencies")))
    return problems + ([_regenerate_hint(category_dir)] if problems else [])


def _verify_command(root: str, names: list[str] | None, params: BenchmarkParams) -> int:
    """``--verify``: checks every requested category that is cached; 1 if any is missing or differs."""
    params.validate()
    categories = resolve_categories(names)
    base = Path(root).expanduser() / params.folder_name()
    failed = 0
    for name in categories:
        problems = verify_category(base / name, params)
        failed += bool(problems)
        fingerprint = _read_manifest(base / name).get("fingerprint", "unrecorded")
        print(f"{name}: " + (" ".join(problems) if problems else f"ok (fingerprint {fingerprint[:16]})"))
    outcome = f"{failed} of {len(categories)} categories differ or are missing" if failed else "all match"
    print(f"verified {base}: {outcome}")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdad.data.embedded", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="cache root (default: %(default)s)")
    parser.add_argument(
        "--categories", default=None, help=f"comma-separated subset of: {','.join(SYNTHETIC_CATEGORIES)}"
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-per-defect", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the cached categories against their manifests and a fresh in-memory generation (writes nothing)",
    )
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    if args.verify:
        params = BenchmarkParams(args.image_size, args.n_train, args.n_test_good, args.n_test_per_defect, args.seed)
        try:
            return _verify_command(args.root, names, params)
        except ValueError as error:
            parser.error(str(error))
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
