"""Data layer: one dataset core for every benchmark, one finder per benchmark, Lightning data modules.

See docs/data.md for how to point kdad at each benchmark on disk.
"""

from kdad.data.cache import CacheStats, DecodeCache
from kdad.data.datamodule import VAL_SOURCES, AnomalyDataModule
from kdad.data.dataset import IMAGENET_MEAN, IMAGENET_STD, AnomalyDataset, Sample
from kdad.data.decode import INTERPOLATIONS, MASK_RESIZE_MODES
from kdad.data.embedded.datamodule import SyntheticDataModule
from kdad.data.errors import DatasetError
from kdad.data.folder import FolderDataModule
from kdad.data.mvtec import MVTEC_CATEGORIES, MVTecDataModule
from kdad.data.mvtec3d import MVTEC3D_CATEGORIES, MVTec3DDataModule
from kdad.data.visa import VISA_CATEGORIES, VisADataModule

DATA_MODULES: dict[str, type[AnomalyDataModule]] = {
    cls.name: cls for cls in (MVTecDataModule, VisADataModule, MVTec3DDataModule, FolderDataModule, SyntheticDataModule)
}

__all__ = [
    "DATA_MODULES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "MASK_RESIZE_MODES",
    "MVTEC3D_CATEGORIES",
    "MVTEC_CATEGORIES",
    "VAL_SOURCES",
    "VISA_CATEGORIES",
    "AnomalyDataModule",
    "AnomalyDataset",
    "CacheStats",
    "DatasetError",
    "DecodeCache",
    "FolderDataModule",
    "MVTec3DDataModule",
    "MVTecDataModule",
    "Sample",
    "SyntheticDataModule",
    "VisADataModule",
]
