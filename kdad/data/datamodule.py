"""LightningDataModule base shared by every benchmark.

A subclass only says where the files are (``find_samples``) and which categories exist; splitting,
validation policy, checks, caching, preloading and loaders are implemented once here.
"""

from __future__ import annotations

import abc
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader, get_worker_info

from kdad.data.cache import DecodeCache
from kdad.data.dataset import IMAGENET_MEAN, IMAGENET_STD, AnomalyDataset, Sample
from kdad.data.decode import INTERPOLATIONS, MASK_RESIZE_MODES, check_choice, read_size
from kdad.data.errors import DatasetError

log = logging.getLogger(__name__)

VAL_SOURCES = ("none", "train_split", "test")
SPLITS = ("train", "validation", "calibration", "test")


def hold_out(samples: Sequence[Sample], fraction: float, seed: int, what: str) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into (kept, held_out) with ``round(fraction * n)`` (at least 1) held out, seeded.

    Both parts keep the input order, so the split only depends on the file list and the seed.
    """
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"{what}: the held-out fraction must be between 0 and 1 (exclusive), got {fraction}.")
    n = len(samples)
    n_out = max(1, round(fraction * n))
    if n_out >= n:
        raise DatasetError(
            f"{what}: cannot hold out {fraction:.0%} of {n} image(s) and keep at least one; add images or "
            "lower the fraction."
        )
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_out].tolist())
    kept = [s for i, s in enumerate(samples) if i not in chosen]
    held = [s for i, s in enumerate(samples) if i in chosen]
    return kept, held


def seed_augmentation_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own random streams.

    albumentations' Compose carries its own RNG, copied verbatim into every worker, so without this all
    workers would draw identical augmentations; numpy and ``random`` are reseeded too, as Lightning's own
    worker seeding (which this function replaces) would. ``torch.initial_seed()`` in a worker derives from
    the loader's seeded generator and the worker id, so runs stay reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def count_by_defect(samples: Sequence[Sample]) -> dict[str, int]:
    counts = Counter(s.defect_type for s in samples)
    return {"total": len(samples), **dict(sorted(counts.items()))}


class AnomalyDataModule(L.LightningDataModule, abc.ABC):
    """Base data module: train (normal images), optional validation, and test splits of one category.

    Args:
        root: dataset folder on disk (``~`` is expanded).
        category: category (sub-dataset) name, e.g. "bottle".
        image_size: side of the square images fed to the model (resize, no crop).
        interpolation: "bilinear" or "bicubic" image resampling.
        mask_resize: "nearest" or "bilinear_threshold" mask resizing.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (defaults to batch_size).
        num_workers: DataLoader worker processes (persistent when > 0), or "auto": on a GPU min(8, cores - 1) for
            every loader; on a CPU one worker for the training loader when it synthesises pseudo-anomalies (~3 ms
            an image, which would otherwise stall every step; see README "Performance") and none otherwise (the
            model uses every core, and a worker's start-up costs more than a test set's loading).
        pin_memory: pin host memory in the loaders, or "auto": when the trainer runs on a GPU.
        val_source: "none"; "train_split" (hold out ``val_split`` of the normal training images, seeded, or
            the benchmark's own validation split where it has one); "test" (validate on the test set).
        val_split: fraction held out for val_source="train_split".
        seed: seeds the validation hold-out, the training shuffle and the augmentations.
        cache_dir: folder for the on-disk decode cache; None keeps decoded images in memory only.
        preload: decode every image of every split into the cache at setup (also finds corrupt files early).
        train_augmentations: albumentations transforms (or a Compose) applied to training images and masks.
        train_synthesis: pseudo-anomaly maker for training images (see ``AnomalyDataset``); set by methods
            that train on synthetic anomalies (RD++, RD with Expert, AAND) through the ``synthesis`` group.
        foreground: foreground-mask settings per category, ``{category: {method: ..., ...}, "default": ...}``,
            used to restrict synthetic anomalies to the object; computed once per training image and cached.
        calibration_split: normal images the decision thresholds are calibrated on (``threshold=normal_quantile``,
            set there from ``threshold.holdout``); 0 means none. Normal images the model never trains on are
            used without taking any from training where they exist: the normal validation hold-out of
            ``val_source="train_split"`` (checkpoint=val_loss) or the benchmark's own validation split. Otherwise
            this fraction of the normal training images is held out (seeded with ``seed``, at least one image)
            and NOT trained on.
        calibration_dir: a labelled folder in MVTec test layout (``good/`` and one sub-folder per defect type)
            the thresholds are fitted on (``threshold=f1_val``); relative to ``root`` or absolute.
        calibration_mask_dir: masks of ``calibration_dir``'s defect images, mirroring its sub-folders (optional).
        unified: False here; ``data.unified=true`` (several categories, one model) builds a
            :class:`kdad.data.unified.UnifiedDataModule` over this benchmark instead (``kdad.data.build_datamodule``).
        unified_sampling: read by the unified module only (``shuffle`` or ``balanced``).
    """

    name: ClassVar[str] = ""
    official_categories: ClassVar[tuple[str, ...]] = ()
    has_validation_split: ClassVar[bool] = False  # True where the benchmark ships normal validation images
    # True where the benchmark is its shipped categories only (BTAD, MPDD, ...): any other name is refused, even with
    # a folder of that name; False where users put their own categories in the layout (MVTec, VisA).
    fixed_categories: ClassVar[bool] = False
    # Groups of defect types the test set is also evaluated on apart, {group: defect types}: each group's metrics
    # are computed over the normal test images plus that group's anomalous ones (MVTec LOCO AD's logical and
    # structural anomalies) and reported as "<group>/<metric>" next to the whole test set's. Empty: none.
    defect_groups: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        root: str,
        category: str,
        image_size: int = 256,
        interpolation: str = "bilinear",
        mask_resize: str = "nearest",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        val_source: str = "none",
        val_split: float = 0.2,
        seed: int = 0,
        cache_dir: str | None = None,
        preload: bool = True,
        train_augmentations: list | None = None,
        train_synthesis: Any | None = None,
        foreground: dict[str, Any] | None = None,
        calibration_split: float = 0.0,
        calibration_dir: str | None = None,
        calibration_mask_dir: str | None = None,
        unified: bool = False,
        unified_sampling: str = "shuffle",
    ) -> None:
        super().__init__()
        if unified:
            raise DatasetError(
                "data.unified=true: build the data module with kdad.data.build_datamodule(cfg.data), which trains one "
                "model over the categories (kdad.run does); hydra.utils.instantiate(cfg.data) builds one category's"
            )
        if not isinstance(category, str):
            from kdad.data.unified import check_unified_categories  # unified.py imports this module

            check_unified_categories(category, unified=False)  # raises for a list: it needs data.unified=true
        self.root = Path(str(root)).expanduser()
        self.category = str(category)
        if int(image_size) <= 0:
            raise DatasetError(f"image_size must be a positive number of pixels, got {image_size}.")
        self.image_size = int(image_size)
        self.interpolation = check_choice(interpolation, tuple(INTERPOLATIONS), "interpolation")
        self.mask_resize = check_choice(mask_resize, MASK_RESIZE_MODES, "mask_resize")
        self.val_source = check_choice(val_source, VAL_SOURCES, "val_source")
        if val_source == "train_split" and not 0.0 < val_split < 1.0:
            raise DatasetError(f"val_split must be between 0 and 1 (exclusive), got {val_split}.")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers: int | str = "auto" if num_workers == "auto" else int(num_workers)
        self.pin_memory: bool | str = "auto" if pin_memory == "auto" else bool(pin_memory)
        if self.num_workers != "auto" and self.num_workers < 0:
            raise DatasetError(f"num_workers must be >= 0 or 'auto', got {num_workers}.")
        self.val_split = float(val_split)
        self.seed = int(seed)
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir is not None else None
        self.preload = bool(preload)
        self.train_transform = self._compose(train_augmentations)
        self.train_synthesis = train_synthesis
        self.foreground_by_category = dict(foreground) if foreground else {}
        self.calibration_split = float(calibration_split)
        if not 0.0 <= self.calibration_split < 1.0:
            raise DatasetError(f"calibration_split must be in [0, 1), got {calibration_split}.")
        self.calibration_dir = str(calibration_dir) if calibration_dir is not None else None
        self.calibration_mask_dir = str(calibration_mask_dir) if calibration_mask_dir is not None else None
        self.calibration_source = "none"
        self.cache = DecodeCache(self.cache_dir)
        self._data_root: Path | None = None
        self._samples: dict[str, list[Sample]] | None = None
        self._datasets: dict[str, AnomalyDataset | None] = {}

    # ----------------------------------------------------------------------------------- benchmark hooks
    @abc.abstractmethod
    def find_samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` ("train", "test", or "validation" where the benchmark has one)."""

    @classmethod
    @abc.abstractmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        """Categories present under ``root`` in this benchmark's layout (sorted)."""

    def locate_root(self) -> Path:
        """The folder ``find_samples`` reads (generators override this to create it first)."""
        if not self.root.is_dir():
            problem = "is a file, not a folder" if self.root.exists() else "does not exist"
            raise DatasetError(
                f"{self.name} dataset root {self.root} {problem}. Set data.root to the folder that holds the "
                f"category folders (see docs/data.md)."
            )
        return self.root

    def check_official_category(self) -> None:
        """With ``fixed_categories``, raise a DatasetError unless ``self.category`` is one of the official ones."""
        if self.fixed_categories and self.category not in self.official_categories:
            raise DatasetError(
                f"unknown {self.name} category '{self.category}' (data.root {self.data_root}): {self.name} has the "
                f"categories {', '.join(self.official_categories)}. Set data.category to one of them."
            )

    def check_category(self) -> None:
        """Raise a DatasetError listing the valid categories unless ``self.category`` is one."""
        self.check_official_category()
        found = self.available_categories(self.data_root)
        # A category folder that exists but is malformed gets the more precise layout error of find_samples.
        if self.category in found or (self.data_root / self.category).is_dir():
            return
        hint = ""
        if (self.data_root / "train").is_dir():
            hint = f" {self.data_root} itself looks like a category folder: set data.root to its parent."
        elif not found:
            hint = f" {self.layout_help()}"
        raise DatasetError(
            f"unknown {self.name} category '{self.category}' under {self.data_root}. Categories found there: "
            f"{', '.join(found) or 'none'}. Official {self.name} categories: "
            f"{', '.join(self.official_categories) or 'n/a'}.{hint}"
        )

    def layout_help(self) -> str:
        """One sentence describing the expected folder layout, for error messages."""
        return "See docs/data.md for the expected folder layout."

    def describe_layout(self) -> dict[str, Any]:
        """Benchmark-specific entries for ``describe()`` (e.g. the detected VisA layout)."""
        return {}

    def test_units(self) -> dict[str, str]:
        """``{test image path: unit}`` where several test images show one physical item (Real-IAD's five camera
        views of a sample): image-level metrics are then also computed per unit, a unit scoring the maximum of its
        images' scores and counting as anomalous when any of its images is. Empty (the default): none."""
        return {}

    # ----------------------------------------------------------------------------------- set-up
    @property
    def data_root(self) -> Path:
        if self._data_root is None:
            self._data_root = self.locate_root()
        return self._data_root

    @property
    def category_dir(self) -> Path:
        return self.data_root / self.category

    def setup(self, stage: str | None = None) -> None:
        """Index, check and (optionally) preload every split once; later calls are no-ops."""
        if self._samples is not None:
            return
        self.check_category()
        train = self.find_samples("train")
        test = self.find_samples("test")
        validation: list[Sample] | None = None
        if self.val_source == "train_split":
            if self.has_validation_split:
                validation = self.find_samples("validation")
            else:
                normals = [s for s in train if s.label == 0]
                others = [s for s in train if s.label != 0]
                kept, validation = hold_out(
                    normals, self.val_split, self.seed, f"validation split of {self.category_dir}"
                )
                train = kept + others
        train, calibration = self._calibration_samples(train, validation)
        if not train:
            raise DatasetError(
                f"no training images found for {self.name} category '{self.category}' under "
                f"{self.category_dir}. Add normal images to the training folder (see docs/data.md for the "
                "expected layout)."
            )
        if not test:
            raise DatasetError(
                f"no test images found for {self.name} category '{self.category}' under {self.category_dir}. "
                "Add test images (see docs/data.md for the expected layout)."
            )
        for split_samples in (train, validation or [], calibration or [], test):
            check_mask_sizes(split_samples)
        self._samples = {"train": train, "test": test}
        if validation is not None:
            self._samples["validation"] = validation
        if calibration is not None:
            self._samples["calibration"] = calibration
        self._build_datasets()
        if self.preload:
            # One pass over the files of every split (same cache keys as the split datasets), so that all
            # corrupt files are reported together.
            unique = list(dict.fromkeys(s for split in self._samples.values() for s in split))
            try:
                self._make_dataset(unique).preload()
                if self.train_synthesis is not None and self.foreground_spec is not None:
                    self._datasets["train"].preload()  # foreground masks: GrabCut is ~0.5 s an image
            except DatasetError:
                self._samples, self._datasets = None, {}  # a later setup() must not skip the failed checks
                raise

    def _calibration_samples(
        self, train: list[Sample], validation: list[Sample] | None
    ) -> tuple[list[Sample], list[Sample] | None]:
        """(training samples, calibration samples or None): see ``calibration_split`` / ``calibration_dir``."""
        if self.calibration_dir is not None:
            from kdad.data.folder import find_labelled_samples  # folder.py imports this module

            folder = self.data_root / Path(self.calibration_dir).expanduser()
            masks = self.data_root / Path(self.calibration_mask_dir).expanduser() if self.calibration_mask_dir else None
            self.calibration_source = f"labelled folder {folder}"
            return train, find_labelled_samples(folder, masks)
        if self.calibration_split <= 0.0:
            return train, None
        if validation is not None:
            self.calibration_source = "normal validation split (not trained on; training set unchanged)"
            return train, validation
        if self.has_validation_split:
            self.calibration_source = "benchmark validation split (training set unchanged)"
            return train, self.find_samples("validation")
        normals = [s for s in train if s.label == 0]
        others = [s for s in train if s.label != 0]
        kept, held = hold_out(
            normals, self.calibration_split, self.seed, f"threshold calibration hold-out of {self.category_dir}"
        )
        self.calibration_source = f"{self.calibration_split:g} of the normal training images, held out (not trained on)"
        return kept + others, held

    @property
    def foreground_spec(self) -> dict[str, Any] | None:
        """This category's foreground_mask() arguments, or None when synthesis is unrestricted."""
        spec = self.foreground_by_category.get(self.category, self.foreground_by_category.get("default"))
        if not spec or spec.get("method", "none") == "none":
            return None
        return dict(spec)

    def _make_dataset(self, samples: list[Sample], transform: Any | None = None, train: bool = False) -> AnomalyDataset:
        synthesis = self.train_synthesis if train else None
        return AnomalyDataset(
            samples,
            image_size=self.image_size,
            interpolation=self.interpolation,
            mask_resize=self.mask_resize,
            transform=transform,
            cache=self.cache,
            pixel_ground_truth=self.has_pixel_masks,
            synthesis=synthesis,
            foreground=self.foreground_spec if synthesis is not None else None,
            synthesis_seed=self.seed,
        )

    def _build_datasets(self) -> None:
        assert self._samples is not None
        make = self._make_dataset
        test = make(self._samples["test"])
        if self.val_source == "test":
            val: AnomalyDataset | None = test
        elif "validation" in self._samples:
            val = make(self._samples["validation"])
        else:
            val = None
        calibration = self._samples.get("calibration")
        self._datasets = {
            "train": make(self._samples["train"], self.train_transform, train=True),
            "validation": val,
            "calibration": make(calibration) if calibration is not None else None,
            "test": test,
        }

    def _compose(self, augmentations: Any) -> A.Compose | None:
        if augmentations is None:
            return None
        if isinstance(augmentations, A.Compose):
            return augmentations
        transforms = list(augmentations)
        for index, transform in enumerate(transforms):
            if not isinstance(transform, A.BasicTransform | A.BaseCompose):
                raise DatasetError(
                    f"train_augmentations[{index}] is a {type(transform).__name__}, not an albumentations "
                    "transform: give instantiated transforms (in Hydra, entries with a _target_ such as "
                    "albumentations.HorizontalFlip)."
                )
        return A.Compose(transforms, seed=self.seed) if transforms else None

    def _samples_or_setup(self) -> dict[str, list[Sample]]:
        if self._samples is None:
            self.setup()
        assert self._samples is not None
        return self._samples

    # ----------------------------------------------------------------------------------- properties
    @property
    def has_pixel_masks(self) -> bool:
        """False when no test sample has a mask (folder data without mask_dir): image-level metrics only."""
        return any(s.mask_path is not None for s in self._samples_or_setup()["test"])

    @property
    def train_dataset(self) -> AnomalyDataset:
        self._samples_or_setup()
        return self._datasets["train"]

    @property
    def val_dataset(self) -> AnomalyDataset | None:
        self._samples_or_setup()
        return self._datasets["validation"]

    @property
    def test_dataset(self) -> AnomalyDataset:
        self._samples_or_setup()
        return self._datasets["test"]

    @property
    def calibration_dataset(self) -> AnomalyDataset | None:
        """Images the decision thresholds are calibrated on (never trained on), or None."""
        self._samples_or_setup()
        return self._datasets["calibration"]

    def describe(self) -> dict[str, Any]:
        """Everything needed to log what data a run used."""
        samples = self._samples_or_setup()
        counts = {split: count_by_defect(samples[split]) for split in SPLITS if split in samples}
        if self.val_source == "test":
            counts["validation"] = counts["test"]
        return {
            "benchmark": self.name,
            "root": str(self.data_root),
            "category": self.category,
            "image_size": self.image_size,
            "interpolation": self.interpolation,
            "mask_resize": self.mask_resize,
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "val_source": self.val_source,
            "calibration_source": self.calibration_source,
            "has_pixel_masks": self.has_pixel_masks,
            "cache_dir": str(self.cache_dir) if self.cache_dir is not None else None,
            "train_synthesis": type(self.train_synthesis).__name__ if self.train_synthesis is not None else None,
            "foreground": self.foreground_spec if self.train_synthesis is not None else None,
            "counts": counts,
            **self.describe_layout(),
        }

    # ----------------------------------------------------------------------------------- loaders
    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)  # set by Lightning when the module is fitted or tested
        return trainer is not None and isinstance(trainer.accelerator, CUDAAccelerator)

    def loader_workers(self, train: bool) -> int:
        """Worker processes of the training (``train``) or evaluation loaders; resolves ``num_workers="auto"``."""
        if self.num_workers != "auto":
            return self.num_workers
        if self._on_gpu():
            return min(8, max(1, (os.cpu_count() or 2) - 1))
        return 1 if train and self.train_synthesis is not None else 0

    def _loader(
        self,
        dataset: AnomalyDataset,
        batch_size: int,
        train: bool,
        sampler: Any | None = None,
        generator: torch.Generator | None = None,
    ) -> DataLoader:
        """``sampler`` (with the ``generator`` it draws from) replaces the training shuffle (unified training's
        balanced sampling)."""
        workers = self.loader_workers(train)
        if train and generator is None:
            # A fresh generator per fit: the shuffle order (and the workers' seeds) depend only on `seed`.
            generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            pin_memory=self._on_gpu() if self.pin_memory == "auto" else self.pin_memory,
            # Persistent: the synthesis draw counter carries on across epochs, so every epoch draws new anomalies.
            persistent_workers=workers > 0,
            worker_init_fn=seed_augmentation_worker if train else None,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        # An empty list tells Lightning there is nothing to validate on (val_source="none").
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, self.eval_batch_size, train=False)

    def calibration_dataloader(self) -> DataLoader | None:
        """Loader of :attr:`calibration_dataset` (evaluation settings), or None without calibration images."""
        if self.calibration_dataset is None:
            return None
        return self._loader(self.calibration_dataset, self.eval_batch_size, train=False)


def check_mask_sizes(samples: Sequence[Sample]) -> None:
    """Every mask must have its image's size (header reads only); a mismatch means a wrong pairing or a
    mask exported at another resolution, which would silently misalign the pixel ground truth."""
    for sample in samples:
        if sample.mask_path is None:
            continue
        image_size = read_size(sample.image_path)
        for mask_path in sample.mask_files:
            mask_size = read_size(mask_path)
            if image_size != mask_size:
                raise DatasetError(
                    f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {sample.image_path} "
                    f"is {image_size[0]}x{image_size[1]}. Masks must have the image's size: re-export "
                    "the mask at the image resolution, or check that it belongs to this image."
                )
