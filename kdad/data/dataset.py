"""The dataset core shared by every benchmark: a list of Samples -> normalised tensors.

Benchmark modules only find files and build Samples; everything about pixels (decoding, resizing, mask
binarisation, caching, augmentation, normalisation) happens here, identically for every benchmark.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdad.blocks.teacher import IMAGENET_MEAN, IMAGENET_STD
from kdad.data.cache import DecodeCache
from kdad.data.decode import INTERPOLATIONS, MASK_RESIZE_MODES, check_choice, decode_image, decode_mask
from kdad.data.errors import DatasetError

log = logging.getLogger(__name__)

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)

# How many failing files one error message lists before summarising.
_MAX_LISTED_FAILURES = 10


@dataclass(frozen=True)
class Sample:
    """One image on disk. ``mask_path`` is None for normal images and when no pixel ground truth exists.

    ``extra_mask_paths``: further mask files of the same image, merged with ``mask_path`` (union of their pixels);
    MVTec LOCO AD ships one file per annotated region. Empty for every other benchmark.

    ``category``: the benchmark category the image belongs to, set where one dataset holds several categories
    (``data.unified=true``, :mod:`kdad.data.unified`); its items then carry ``category``. None otherwise.
    """

    image_path: Path
    mask_path: Path | None
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normal images
    extra_mask_paths: tuple[Path, ...] = ()
    category: str | None = None

    def __post_init__(self) -> None:
        # Finders and users may pass str paths; normalise once so everything downstream sees Path.
        object.__setattr__(self, "image_path", Path(self.image_path))
        if self.mask_path is not None:
            object.__setattr__(self, "mask_path", Path(self.mask_path))
        object.__setattr__(self, "extra_mask_paths", tuple(Path(p) for p in self.extra_mask_paths))
        if self.extra_mask_paths and self.mask_path is None:
            raise ValueError(f"sample {self.image_path}: extra_mask_paths without a mask_path")
        check_choice(self.label, (0, 1), f"label (sample {self.image_path})")

    @property
    def mask_files(self) -> tuple[Path, ...]:
        """Every mask file of the image (none, one, or several to merge)."""
        return () if self.mask_path is None else (self.mask_path, *self.extra_mask_paths)


# uint8 value -> normalised float per channel, [3, 256]: one table look-up per pixel instead of four full-image
# passes, ~3x faster. Built with the float32 operations of the float path below, so a uint8 image and the same
# image as float32 / 255 (what a synthesis may return) normalise to bit-identical tensors.
_LUT = np.ascontiguousarray(((np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - _MEAN) / _STD).T)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] (or float in [0, 1]) -> float32 [3, H, W]: ImageNet mean/std (= ToTensor + Normalize)."""
    if image.dtype == np.uint8:
        planes = np.empty((3, *image.shape[:2]), dtype=np.float32)
        for c in range(3):
            np.take(_LUT[c], image[:, :, c], out=planes[c])
        return torch.from_numpy(planes)
    scaled = (image.astype(np.float32) - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


class AnomalyDataset(Dataset):
    """Samples -> dicts of ``image``, ``mask``, ``label``, ``has_mask``, ``image_path``, ``defect_type``.

    Args:
        samples: the images of one split.
        image_size: output side; images are resized to image_size x image_size (no crop).
        interpolation: "bilinear" or "bicubic" (PIL, antialiased) for images.
        mask_resize: "nearest" or "bilinear_threshold" for masks (binarised with > 0 before resizing).
        transform: optional albumentations ``Compose`` applied jointly to the uint8 image and mask before
            normalisation (training augmentations). It must keep the image uint8.
        cache: decode cache, shared between the splits of a data module; a private memory cache if None.
        pixel_ground_truth: False when the dataset has no pixel annotations at all (e.g. a user's folder
            without masks): then ``has_mask`` is False for every sample. When True, normal samples count as
            annotated (their ground truth is all zeros) and anomalous ones when they have a mask file.
        synthesis: optional pseudo-anomaly maker (``kdad.data.synthesis``), called as
            ``synthesis(image_uint8, rng[, foreground=mask])`` and returning (image uint8 or float in [0, 1],
            bool mask). Items then also hold ``image_aug`` and ``mask_aug``. The generator is seeded from
            (synthesis_seed, index, draw count), so every epoch draws new anomalies, reproducibly.
        foreground: optional ``foreground_mask`` arguments (e.g. ``{"method": "grabcut"}``); the mask is
            computed once per image from the resized image, cached like decoded images, passed to
            ``synthesis`` and returned as ``foreground``.
        foreground_by_category: ``{category: foreground_mask arguments or None}`` for samples of several
            categories (``Sample.category``; unified training), used instead of ``foreground``. When any category
            has a foreground rule, every item carries ``foreground`` (so batches mixing categories collate): the
            samples of a category without one get the whole image, which restricts nothing.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        image_size: int = 256,
        interpolation: str = "bilinear",
        mask_resize: str = "nearest",
        transform: Any | None = None,
        cache: DecodeCache | None = None,
        pixel_ground_truth: bool = True,
        synthesis: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
        foreground: Mapping[str, Any] | None = None,
        synthesis_seed: int = 0,
        foreground_by_category: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> None:
        if image_size <= 0:
            raise DatasetError(f"image_size must be a positive number of pixels, got {image_size}.")
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.interpolation = check_choice(interpolation, tuple(INTERPOLATIONS), "interpolation")
        self.mask_resize = check_choice(mask_resize, MASK_RESIZE_MODES, "mask_resize")
        self.transform = transform
        self.cache = cache if cache is not None else DecodeCache()
        self.pixel_ground_truth = pixel_ground_truth
        self.synthesis = synthesis
        self.foreground = dict(foreground) if foreground else None
        self.foreground_by_category = (
            {str(c): (dict(spec) if spec else None) for c, spec in foreground_by_category.items()}
            if foreground_by_category
            else None
        )
        if self.foreground_by_category is not None and not any(self.foreground_by_category.values()):
            self.foreground_by_category = None  # no category restricts its anomalies
        self.synthesis_seed = int(synthesis_seed)
        self._draws = 0
        self._synthesis_takes_foreground = synthesis is not None and (
            "foreground" in inspect.signature(synthesis).parameters
        )

    def __len__(self) -> int:
        return len(self.samples)

    def _decode_image(self, path: Path) -> np.ndarray:
        return decode_image(path, self.image_size, self.interpolation)

    def _decode_mask(self, path: Path | tuple[Path, ...]) -> np.ndarray:
        return decode_mask(path, self.image_size, self.mask_resize)

    def load_image(self, index: int) -> np.ndarray:
        """Resized uint8 image [S, S, 3] (read-only, shared with the cache)."""
        variant = f"image|{self.image_size}|{self.interpolation}"
        return self.cache.get(self.samples[index].image_path, variant, self._decode_image)

    def load_mask(self, index: int) -> np.ndarray:
        """Resized binary uint8 mask [S, S] in {0, 1}; zeros when the sample has no mask file."""
        files = self.samples[index].mask_files
        if not files:
            return np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        variant = f"mask|{self.image_size}|{self.mask_resize}"
        # One file keeps its plain-path cache key; several are cached as one merged entry keyed by all of them.
        return self.cache.get(files[0] if len(files) == 1 else files, variant, self._decode_mask)

    @property
    def uses_foreground(self) -> bool:
        """True when items carry a foreground mask (``foreground`` or a category's rule)."""
        return self.foreground is not None or self.foreground_by_category is not None

    def foreground_spec(self, index: int) -> dict[str, Any] | None:
        """The ``foreground_mask`` arguments of sample ``index`` (its category's with ``foreground_by_category``)."""
        if self.foreground_by_category is not None:
            return self.foreground_by_category.get(str(self.samples[index].category))
        return self.foreground

    def load_foreground(self, index: int) -> np.ndarray:
        """Binary uint8 foreground mask [S, S] of the resized image (computed once, then cached); all ones for a
        sample whose category has no foreground rule (``foreground_by_category``)."""
        from kdad.data.synthesis import foreground_mask

        spec = self.foreground_spec(index)
        if spec is None:
            assert self.foreground_by_category is not None
            return np.ones((self.image_size, self.image_size), dtype=np.uint8)
        params = ",".join(f"{k}={v}" for k, v in sorted(spec.items()))
        variant = f"foreground|{self.image_size}|{self.interpolation}|{params}"
        image = self.load_image(index)
        return self.cache.get(
            self.samples[index].image_path,
            variant,
            lambda _path: foreground_mask(image, **spec).astype(np.uint8),
        )

    def _synthesise(self, index: int, image: np.ndarray) -> dict[str, torch.Tensor]:
        assert self.synthesis is not None
        rng = np.random.default_rng((self.synthesis_seed, index, self._draws))
        self._draws += 1
        out: dict[str, torch.Tensor] = {}
        kwargs: dict[str, Any] = {}
        if self.uses_foreground:
            foreground = self.load_foreground(index) > 0
            out["foreground"] = torch.from_numpy(foreground.astype(np.float32)[None])
            if self._synthesis_takes_foreground:
                kwargs["foreground"] = foreground
        augmented, mask = self.synthesis(image, rng, **kwargs)
        out["image_aug"] = normalize(np.asarray(augmented))
        out["mask_aug"] = torch.from_numpy(np.asarray(mask, dtype=np.float32)[None])
        return out

    def has_mask(self, index: int) -> bool:
        sample = self.samples[index]
        return self.pixel_ground_truth and (sample.label == 0 or sample.mask_path is not None)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = self.load_image(index)
        mask = self.load_mask(index)
        if self.transform is not None:
            # Copies: cached arrays are shared and read-only, augmentations may work in place.
            out = self.transform(image=image.copy(), mask=mask.copy())
            image, mask = out["image"], out["mask"]
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise DatasetError(
                    "train_augmentations must return uint8 numpy images (kdad normalises afterwards); "
                    f"got {type(image).__name__} {getattr(image, 'dtype', '')} for {sample.image_path}. "
                    "Remove Normalize/ToTensorV2 from the augmentation list."
                )
        item = {
            "image": normalize(image),
            "mask": torch.from_numpy((np.asarray(mask) > 0).astype(np.float32)[None]),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "has_mask": torch.tensor(self.has_mask(index), dtype=torch.bool),
            "image_path": str(sample.image_path),
            "defect_type": sample.defect_type,
        }
        if sample.category is not None:
            item["category"] = sample.category
        if self.synthesis is not None:
            item.update(self._synthesise(index, np.ascontiguousarray(image)))
        return item

    def preload(self, num_threads: int | None = None) -> None:
        """Decode + resize every image and mask into the cache, in threads (PIL releases the GIL).

        Also surfaces every corrupt file at once, before any training starts.
        """
        if not self.samples:
            return
        threads = num_threads or min(8, os.cpu_count() or 1)
        start = time.perf_counter()
        before = (self.cache.stats.decodes, self.cache.stats.disk_hits)

        def load(index: int) -> DatasetError | None:
            try:
                self.load_image(index)
                self.load_mask(index)
                if self.uses_foreground:
                    self.load_foreground(index)
            except DatasetError as exc:
                return exc
            return None

        with ThreadPoolExecutor(max_workers=threads) as pool:
            failures = [exc for exc in pool.map(load, range(len(self.samples))) if exc is not None]
        if failures:
            listed = "\n  ".join(str(exc) for exc in failures[:_MAX_LISTED_FAILURES])
            more = len(failures) - _MAX_LISTED_FAILURES
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise DatasetError(f"{len(failures)} file(s) could not be loaded:\n  {listed}{tail}") from failures[0]
        log.info(
            "preloaded %d samples in %.1fs (%d decoded, %d from disk cache)",
            len(self.samples),
            time.perf_counter() - start,
            self.cache.stats.decodes - before[0],
            self.cache.stats.disk_hits - before[1],
        )
