"""Unified (multi-class) training: one data module over several categories of one benchmark.

``data.unified=true`` with ``data.category=all`` or a list (``data.category=[brick,grass]``) trains ONE model on the
union of the categories' normal training images and tests it on each category (docs/data.md, "Unified training").

:class:`UnifiedDataModule` builds the benchmark's own data module once per category (so every per-category rule
applies unchanged: the finder, the validation and calibration hold-outs, the checks, the foreground rule of
``conf/foreground/<benchmark>.yaml``) and joins their splits into one dataset per split, each sample tagged with its
category (``Sample.category``; items then carry ``category``). One dataset, one decode cache, one augmentation
pipeline and one pseudo-anomaly stream: memory and time per epoch grow with the number of images, not with
categories × images. Batches mix categories: ``unified_sampling=shuffle`` (default) shuffles the union, every image
once per epoch; ``balanced`` draws the categories in turn (:class:`BalancedCategorySampler`), as many draws per epoch
as there are training images, so a category with few images is seen as often as one with many.

Data modules know nothing about methods: what the test path does with ``category`` (metrics and thresholds per
category) is :mod:`kdad.methods.base`'s business.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Sampler

from kdad.data.datamodule import AnomalyDataModule
from kdad.data.dataset import AnomalyDataset, Sample
from kdad.data.errors import DatasetError
from kdad.errors import check_choice

ALL = "all"
SAMPLING = ("shuffle", "balanced")
FOLDER_PREFIX = "unified-"
#: a run-folder name longer than this is shortened to "unified-<n>-categories-<hash>" (paths stay well under the
#: 255-byte name limit of common file systems)
MAX_FOLDER_NAME = 80


# ------------------------------------------------------------------------------------- categories and names
def requested_categories(category: Any) -> str | list[str]:
    """``data.category`` as ``"all"`` or a sorted list of distinct names (a plain name gives a list of one)."""
    if isinstance(category, ListConfig):
        category = OmegaConf.to_container(category)
    if isinstance(category, str):
        return ALL if category == ALL else [category]
    if isinstance(category, Sequence):
        names = [str(c) for c in category]
        if ALL in names:
            raise DatasetError("data.category lists 'all' among other names: give data.category=all or a list of names")
        return sorted(dict.fromkeys(names))
    return [str(category)]


def check_unified_categories(category: Any, unified: bool) -> str | list[str]:
    """The requested categories, or the error a user fixes: several categories without ``data.unified=true`` (or
    ``all`` without it outside a sweep, which kdad.run reports itself), one category with it."""
    names = requested_categories(category)
    if not unified:
        if isinstance(names, list) and (len(names) > 1 or not isinstance(category, str)):
            listed = ",".join(names)
            raise DatasetError(
                f"data.category=[{listed}] lists categories, which trains one model on all of them only with "
                f"data.unified=true; for one model per category sweep them instead: -m data.category={listed}"
            )
        return names
    if isinstance(names, list) and len(names) < 2:
        raise DatasetError(
            f"data.unified=true trains one model on several categories, but data.category names only "
            f"'{names[0] if names else ''}': list them (data.category=[a,b,c]) or give data.category=all; for one "
            "category drop data.unified=true"
        )
    return names


def folder_name(category: Any, unified: bool = False) -> str:
    """The category part of a run folder: the category itself, or ``unified-<c1>+<c2>+...`` (sorted; ``unified-all``
    for ``all``; ``unified-<n>-categories-<hash>`` when the joined names would exceed ``MAX_FOLDER_NAME``)."""
    if not unified:
        check_unified_categories(category, unified=False)
        return str(category)
    names = check_unified_categories(category, unified=True)
    if names == ALL:
        return f"{FOLDER_PREFIX}{ALL}"
    joined = FOLDER_PREFIX + "+".join(names)
    if len(joined) <= MAX_FOLDER_NAME:
        return joined
    digest = hashlib.sha1("\n".join(names).encode()).hexdigest()[:10]
    return f"{FOLDER_PREFIX}{len(names)}-categories-{digest}"


def _folder_resolver(category: Any, unified: Any = False) -> str:
    """``folder_name`` for run_dir; a combination it refuses gets a plain name instead, so that the config resolves
    (Hydra resolves run_dir before any kdad code runs) and kdad.run reports the error itself, with its fix."""
    try:
        return folder_name(category, bool(unified))
    except DatasetError:
        names = requested_categories(category)
        return "+".join(names) if isinstance(names, list) else str(names)


# run_dir (conf/config.yaml) and the W&B run name: runs/<tag>/<benchmark>/${kdad.category_dir:...}/<method>/seed<seed>
OmegaConf.register_new_resolver("kdad.category_dir", _folder_resolver, replace=True)


# ------------------------------------------------------------------------------------- sampling
class BalancedCategorySampler(Sampler[int]):
    """Indices that give every category the same share of an epoch: per block of draws each category once, in a
    random order, each category's images in a random order that restarts (reshuffled) when used up.

    An epoch has ``len(categories)`` draws (the training set's size), so the budget is the one of ``shuffle``;
    seeded by ``generator`` (advanced by every epoch), so runs are reproducible.
    """

    def __init__(self, categories: Sequence[str], generator: torch.Generator) -> None:
        self.n = len(categories)
        groups: dict[str, list[int]] = {}
        for index, name in enumerate(categories):
            groups.setdefault(str(name), []).append(index)
        self.groups = [torch.tensor(groups[name]) for name in sorted(groups)]
        self.generator = generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        orders = [group[torch.randperm(len(group), generator=self.generator)] for group in self.groups]
        cursors = [0] * len(self.groups)
        drawn = 0
        for _ in range(math.ceil(self.n / max(1, len(self.groups)))):
            for k in torch.randperm(len(self.groups), generator=self.generator).tolist():
                if drawn == self.n:
                    return
                if cursors[k] == len(orders[k]):
                    group = self.groups[k]
                    orders[k], cursors[k] = group[torch.randperm(len(group), generator=self.generator)], 0
                yield int(orders[k][cursors[k]])
                cursors[k] += 1
                drawn += 1


# ------------------------------------------------------------------------------------- the data module
_BASE_ARGUMENTS = frozenset(inspect.signature(AnomalyDataModule.__init__).parameters) - {"self", "root", "category"}


def _benchmark_class(benchmark: str | type) -> type[AnomalyDataModule]:
    if isinstance(benchmark, str):
        from hydra.utils import get_class

        benchmark = get_class(benchmark)
    if not (isinstance(benchmark, type) and issubclass(benchmark, AnomalyDataModule)):
        raise DatasetError(f"data.unified=true needs a kdad benchmark data module, got {benchmark!r}")
    if issubclass(benchmark, UnifiedDataModule):
        raise DatasetError("data.unified=true: the benchmark is already a unified data module")
    return benchmark


class UnifiedDataModule(AnomalyDataModule):
    """One data module over several categories of ``benchmark`` (see the module docstring).

    Args:
        benchmark: the benchmark's data module class (or its import path, as in a config's ``_target_``).
        category: ``"all"`` (every category the benchmark finds under ``root``) or a list of at least two names.
        unified_sampling: ``shuffle`` (default: every training image once per epoch, in random order) or
            ``balanced`` (categories drawn in turn, :class:`BalancedCategorySampler`).
        unified: must be true (the config key that selects this module; ``kdad.data.build_datamodule``).
        **kwargs: every argument of the benchmark's data module (root, image_size, ..., benchmark-specific ones),
            given to each category's module alike.
    """

    def __init__(
        self,
        benchmark: str | type,
        category: Any,
        unified_sampling: str = "shuffle",
        unified: bool = True,
        **kwargs: Any,
    ) -> None:
        if not unified:
            raise DatasetError("UnifiedDataModule is the data module of data.unified=true")
        cls = _benchmark_class(benchmark)
        names = check_unified_categories(category, unified=True)
        root = kwargs.pop("root", None)
        if root is None:
            default = inspect.signature(cls.__init__).parameters.get("root")
            root = default.default if default is not None and default.default is not inspect.Parameter.empty else "."
        self.sampling = check_choice(str(unified_sampling), SAMPLING, "data.unified_sampling", DatasetError)
        super().__init__(
            root=root,
            category=folder_name(category, unified=True),
            **{k: v for k, v in kwargs.items() if k in _BASE_ARGUMENTS},
        )
        if self.calibration_dir is not None:
            raise DatasetError(
                "threshold=f1_val (a labelled calibration folder) is not available with data.unified=true: its folder "
                "would serve every category. Use threshold=normal_quantile (each category's held-out normal images) "
                "or threshold=f1_test"
            )
        self.benchmark = cls
        self.name = cls.name
        self.official_categories = tuple(getattr(cls, "official_categories", ()))
        self.fixed_categories = cls.fixed_categories
        self.has_validation_split = cls.has_validation_split
        self.defect_groups = dict(cls.defect_groups)
        if names == ALL:
            names = self._all_categories(cls)
        self.categories: list[str] = list(names)
        self.children: dict[str, AnomalyDataModule] = {}
        for name in self.categories:
            child = cls(root=root, category=name, **{**kwargs, "unified": False})
            child.cache = self.cache  # one decode cache: each image decoded (and its foreground computed) once
            self.children[name] = child
        # Synthetic, fixed-category benchmarks: unknown names are known without reading the disk.
        self.official_categories = tuple(getattr(next(iter(self.children.values())), "official_categories", ()))
        if self.fixed_categories or cls.name == "synthetic":
            self._check_names(self.official_categories)

    def _all_categories(self, cls: type[AnomalyDataModule]) -> list[str]:
        found = sorted(cls.available_categories(self.root)) if self.root.is_dir() or cls.name == "synthetic" else []
        if len(found) < 2:
            raise DatasetError(
                f"data.category=all with data.unified=true found {len(found)} {cls.name} categor"
                f"{'y' if len(found) == 1 else 'ies'} under {self.root} ({', '.join(found) or 'none'}): set data.root "
                "to the folder holding the category folders (see docs/data.md), or list the categories"
            )
        return found

    def _check_names(self, known: Sequence[str]) -> None:
        unknown = [c for c in self.categories if known and c not in known]
        if unknown:
            raise DatasetError(
                f"data.unified=true: unknown {self.name} categor{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(unknown)}: {self.name} has the categories {', '.join(known)}. Fix data.category "
                "(a list of them, or all)."
            )

    # ----------------------------------------------------------------------------------- benchmark hooks
    def find_samples(self, split: str) -> list[Sample]:
        """Every category's samples of ``split``, tagged with their category (read-only uses: export checks)."""
        return [
            dataclasses.replace(s, category=c) for c, child in self.children.items() for s in child.find_samples(split)
        ]

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        return []  # a unified module is built over the benchmark's categories, never selected by name

    def locate_root(self) -> Path:
        return next(iter(self.children.values())).data_root

    def check_category(self) -> None:
        """Every category must exist in the benchmark; the first one missing is reported with the categories found."""
        for name, child in self.children.items():
            try:
                child.data_root  # noqa: B018 (locates, or generates, the data)
                child.check_category()
            except DatasetError as exc:
                raise DatasetError(f"data.unified=true, category '{name}': {exc}") from exc

    def check_sizes(self) -> None:
        """Every category's images must come out at one model input size. The resize policy (every image resized to
        image_size x image_size, no crop) reconciles any native size; a benchmark module that keeps its own size or
        resampling per category cannot be trained unified."""
        policies = {c: (m.image_size, m.interpolation, m.mask_resize) for c, m in self.children.items()}
        if len(set(policies.values())) > 1:
            listed = "; ".join(f"{c}: {s}x{s} {i}, masks {r}" for c, (s, i, r) in policies.items())
            raise DatasetError(
                f"data.unified=true: the categories' images do not come out at one size ({listed}), so one model "
                "cannot take them all. Set one data.image_size (and data.interpolation / data.mask_resize) for every "
                "category: kdad resizes every image to image_size x image_size, whatever its native size."
            )

    def test_units(self) -> dict[str, str]:
        return {path: unit for child in self.children.values() for path, unit in child.test_units().items()}

    @property
    def foreground_spec(self) -> dict[str, Any] | None:
        return None  # per category: foreground_by_category

    @property
    def foreground_by_category(self) -> dict[str, dict[str, Any] | None]:
        return {c: child.foreground_spec for c, child in self.children.items()}

    @foreground_by_category.setter
    def foreground_by_category(self, value: Any) -> None:
        self._foreground_table = value  # the base constructor's table; the categories' modules read it

    # ----------------------------------------------------------------------------------- set-up
    def setup(self, stage: str | None = None) -> None:
        if self._samples is not None:
            return
        self.check_category()
        self.check_sizes()
        for child in self.children.values():
            child.setup(stage)
        samples: dict[str, list[Sample]] = {}
        sources = []
        for name, child in self.children.items():
            for split, found in child._samples_or_setup().items():
                samples.setdefault(split, []).extend(dataclasses.replace(s, category=name) for s in found)
            sources.append(child.calibration_source)
        missing = [
            (split, [c for c, m in self.children.items() if split not in m._samples_or_setup()]) for split in samples
        ]
        for split, lacking in missing:
            if lacking:
                raise DatasetError(
                    f"data.unified=true: categories {', '.join(lacking)} have no {split} images while the others "
                    "do; every category needs the same splits (check the dataset layout, see docs/data.md)"
                )
        self.calibration_source = (
            sources[0]
            if len(set(sources)) == 1
            else "; ".join(f"{c}: {s}" for c, s in zip(self.children, sources, strict=True))
        )
        self._samples = samples
        self._build_datasets()  # the categories' modules preloaded every file into the shared cache

    def _make_dataset(self, samples: list[Sample], transform: Any | None = None, train: bool = False) -> AnomalyDataset:
        synthesis = self.train_synthesis if train else None
        return AnomalyDataset(
            samples,
            image_size=self.image_size,
            interpolation=self.interpolation,
            mask_resize=self.mask_resize,
            transform=transform,
            cache=self.cache,
            pixel_ground_truth=self.has_pixel_masks if self._samples is not None else True,
            synthesis=synthesis,
            foreground_by_category=self.foreground_by_category if synthesis is not None else None,
            synthesis_seed=self.seed,
        )

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        described.update(
            unified=True,
            categories=list(self.categories),
            unified_sampling=self.sampling,
            foreground=self.foreground_by_category if self.train_synthesis is not None else None,
            counts_per_category={c: child.describe()["counts"] for c, child in self.children.items()},
        )
        return described

    def describe_layout(self) -> dict[str, Any]:
        return next(iter(self.children.values())).describe_layout()

    # ----------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        if self.sampling == "shuffle":
            return super().train_dataloader()
        dataset = self.train_dataset
        generator = torch.Generator().manual_seed(self.seed)
        sampler = BalancedCategorySampler([str(s.category) for s in dataset.samples], generator)
        return self._loader(dataset, self.batch_size, train=True, sampler=sampler, generator=generator)


def build_datamodule(config: DictConfig | Mapping[str, Any]) -> AnomalyDataModule:
    """The data module of a run's ``data`` config: the benchmark's own, or with ``unified: true`` a
    :class:`UnifiedDataModule` over its categories (what ``kdad.run`` and ``kdad.export`` build)."""
    import hydra

    if not bool(config.get("unified", False)):
        return hydra.utils.instantiate(config)
    return hydra.utils.instantiate(config, _target_=f"{__name__}.UnifiedDataModule", benchmark=config["_target_"])
