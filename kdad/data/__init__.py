"""Data layer: one dataset core for every benchmark, one finder per benchmark, Lightning data modules.

See docs/data.md for how to point kdad at each benchmark on disk.
"""

from kdad.data.btad import BTAD_CATEGORIES, BTADDataModule
from kdad.data.cache import CacheStats, DecodeCache
from kdad.data.datamodule import VAL_SOURCES, AnomalyDataModule
from kdad.data.dataset import IMAGENET_MEAN, IMAGENET_STD, AnomalyDataset, Sample
from kdad.data.decode import INTERPOLATIONS, MASK_RESIZE_MODES
from kdad.data.embedded.datamodule import SyntheticDataModule
from kdad.data.errors import DatasetError
from kdad.data.folder import FolderDataModule
from kdad.data.ksdd2 import KSDD2DataModule
from kdad.data.mpdd import MPDD_CATEGORIES, MPDDDataModule
from kdad.data.mtd import MagneticTileDataModule
from kdad.data.mvtec import MVTEC_CATEGORIES, MVTecDataModule
from kdad.data.mvtec3d import MVTEC3D_CATEGORIES, MVTec3DDataModule
from kdad.data.mvtec_ad2 import MVTEC_AD2_CATEGORIES, MVTecAD2DataModule
from kdad.data.mvtec_loco import MVTEC_LOCO_CATEGORIES, MVTecLOCODataModule
from kdad.data.realiad import REALIAD_CATEGORIES, RealIADDataModule
from kdad.data.unified import UnifiedDataModule, build_datamodule
from kdad.data.visa import VISA_CATEGORIES, VisADataModule

DATA_MODULES: dict[str, type[AnomalyDataModule]] = {
    cls.name: cls for cls in (MVTecDataModule, VisADataModule, MVTec3DDataModule, FolderDataModule, SyntheticDataModule)
}
# Shipped benchmarks with fixed categories (docs/data.md)
DATA_MODULES.update(
    {cls.name: cls for cls in (BTADDataModule, MPDDDataModule, MagneticTileDataModule, KSDD2DataModule)}
)

# Benchmarks with their own test protocol: LOCO's logical/structural groups, MVTec AD 2's public test set, Real-IAD's
# multi-view samples (docs/data.md)
DATA_MODULES.update({cls.name: cls for cls in (MVTecLOCODataModule, MVTecAD2DataModule, RealIADDataModule)})

__all__ = [
    "BTAD_CATEGORIES",
    "DATA_MODULES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "MASK_RESIZE_MODES",
    "MPDD_CATEGORIES",
    "MVTEC3D_CATEGORIES",
    "MVTEC_AD2_CATEGORIES",
    "MVTEC_CATEGORIES",
    "MVTEC_LOCO_CATEGORIES",
    "REALIAD_CATEGORIES",
    "VAL_SOURCES",
    "VISA_CATEGORIES",
    "build_datamodule",
    "AnomalyDataModule",
    "AnomalyDataset",
    "BTADDataModule",
    "CacheStats",
    "DatasetError",
    "DecodeCache",
    "FolderDataModule",
    "KSDD2DataModule",
    "MPDDDataModule",
    "MVTec3DDataModule",
    "MVTecAD2DataModule",
    "MVTecDataModule",
    "MVTecLOCODataModule",
    "MagneticTileDataModule",
    "RealIADDataModule",
    "Sample",
    "SyntheticDataModule",
    "UnifiedDataModule",
    "VisADataModule",
]
