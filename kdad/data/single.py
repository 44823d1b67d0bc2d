"""Benchmarks that are a single category (Magnetic Tile Defects, KSDD2): ``data.root`` is that category's folder."""

from __future__ import annotations

import abc
from pathlib import Path

from kdad.data.datamodule import AnomalyDataModule


class SingleCategoryDataModule(AnomalyDataModule):
    """Base of the one-category benchmarks: ``official_categories`` holds the one name ``data.category`` must be.

    The category is only checked by name; whether ``data.root`` holds the layout is left to ``find_samples``, whose
    errors name the missing folder (a category search would only say "no categories found").
    """

    fixed_categories = True

    @classmethod
    @abc.abstractmethod
    def holds_layout(cls, root: Path) -> bool:
        """True when ``root`` looks like this benchmark (for ``available_categories``, i.e. sweeps)."""

    @classmethod
    def available_categories(cls, root: str | Path) -> list[str]:
        return list(cls.official_categories) if cls.holds_layout(Path(root).expanduser()) else []

    def check_category(self) -> None:
        self.check_official_category()

    @property
    def category_dir(self) -> Path:
        return self.data_root
