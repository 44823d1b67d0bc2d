"""The embedded synthetic benchmark: generated on first use (kdad.data.embedded), then read as MVTec.

It needs no download, so quick-starts, notebooks and CI train on it. Images are generated at
``generation_size`` (256 px) whatever the training resolution, so one generated set serves every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdad.data.datamodule import AnomalyDataModule
from kdad.data.dataset import Sample
from kdad.data.errors import DatasetError
from kdad.data.mvtec import find_mvtec_samples


def _synthetic_categories() -> tuple[str, ...]:
    # Imported lazily: the generator is only needed when this benchmark is used.
    from kdad.data.embedded import SYNTHETIC_CATEGORIES

    return tuple(SYNTHETIC_CATEGORIES)


class SyntheticDataModule(AnomalyDataModule):
    """Synthetic MVTec-layout benchmark, generated under ``root`` if not there yet.

    Args:
        root: where generated data lives (created if missing).
        category: one of ``kdad.data.embedded.SYNTHETIC_CATEGORIES``.
        n_train, n_test_good, n_test_per_defect: generated image counts.
        generation_seed: seed of the generator (not of training).
        generation_size: side of the generated images; training resizes them to ``image_size``.
        **kwargs: every other AnomalyDataModule argument.
    """

    name = "synthetic"

    def __init__(
        self,
        root: str = "~/.cache/kdad/synthetic",
        category: str = "",
        n_train: int = 100,
        n_test_good: int = 20,
        n_test_per_defect: int = 15,
        generation_seed: int = 0,
        generation_size: int = 256,
        **kwargs: Any,
    ) -> None:
        categories = _synthetic_categories()
        super().__init__(root=root, category=category or categories[0], **kwargs)
        self.official_categories = categories
        self.n_train = int(n_train)
        self.n_test_good = int(n_test_good)
        self.n_test_per_defect = int(n_test_per_defect)
        self.generation_seed = int(generation_seed)
        self.generation_size = int(generation_size)

    @classmethod
    def available_categories(cls, root: str | Path | None = None) -> list[str]:
        return list(_synthetic_categories())

    def check_category(self) -> None:
        """Checked in ``locate_root`` already, before anything is generated."""

    def locate_root(self) -> Path:
        """Generate the category if needed (idempotent) and return the folder holding the category folders."""
        if self.category not in self.official_categories:
            raise DatasetError(
                f"unknown synthetic category '{self.category}' (data root {self.root}); choose one of "
                f"{', '.join(self.official_categories)}."
            )
        if self.root.exists() and not self.root.is_dir():
            raise DatasetError(f"synthetic data root {self.root} is a file, not a folder: point data.root elsewhere.")
        from kdad.data.embedded import ensure_synthetic_benchmark

        try:
            generated = ensure_synthetic_benchmark(
                self.root,
                categories=[self.category],
                image_size=self.generation_size,
                n_train=self.n_train,
                n_test_good=self.n_test_good,
                n_test_per_defect=self.n_test_per_defect,
                seed=self.generation_seed,
            )
        except DatasetError:
            raise
        except ValueError as exc:  # the generator's own checks (sizes, counts)
            raise DatasetError(f"cannot generate synthetic '{self.category}' under {self.root}: {exc}") from exc
        return Path(generated)

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node before setup: generation happens once there.
        self.locate_root()

    def find_samples(self, split: str) -> list[Sample]:
        return find_mvtec_samples(self.category_dir, split)

    def describe_layout(self) -> dict[str, Any]:
        return {
            "generation": {
                "n_train": self.n_train,
                "n_test_good": self.n_test_good,
                "n_test_per_defect": self.n_test_per_defect,
                "seed": self.generation_seed,
                "size": self.generation_size,
            }
        }
