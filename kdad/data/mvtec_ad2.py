"""MVTec AD 2: the public test set (test_public) with masks; the private test sets have no labels.

<root>/<category>/train/good/<id>_<lighting>.png                 e.g. 000_regular.png, 012_overexposed.png
<root>/<category>/validation/good/<id>_<lighting>.png            (normal images the model is not trained on)
<root>/<category>/test_public/{good,bad}/<id>_<lighting>.png
<root>/<category>/test_public/ground_truth/bad/<stem>_mask.png   (0/255)
<root>/<category>/test_private/*.png, test_private_mixed/*.png   (no ground truth: evaluated by MVTec's server)

Protocol: trained on train/good; with val_source="train_split" the shipped validation/good images are the
validation split (the training set stays whole). Tested on test_public (good + bad), the only split with labels;
all anomalies have the defect type "bad" as on disk. MVTec's own benchmark reports AU-PRO up to FPR 0.05 and the
thresholded segmentation F1 on the private sets: ``method.aupro_limit=0.05`` gives the former on test_public, and
the run's ``pixel_f1`` (at the threshold policy's pixel threshold) the latter. test_private and
test_private_mixed are never read as a test split (asking for one is an error); score them with ``kdad.predict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdad.data.dataset import Sample
from kdad.data.decode import check_choice
from kdad.data.errors import DatasetError
from kdad.data.files import check_masks_have_images, find_mask, index_by_stem, list_images, require_dir
from kdad.data.mvtec import MVTecLayoutDataModule, find_normal_samples

MVTEC_AD2_CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")

NORMAL = "good"
DEFECT = "bad"
PUBLIC_TEST = "test_public"
UNLABELLED_TESTS = ("test_private", "test_private_mixed")
MASK_SUFFIX = "_mask"


def _layout(category_dir: Path) -> str:
    return (
        f"Expected the MVTec AD 2 layout: {category_dir}/{{train,validation}}/good/*.png, "
        f"{category_dir}/{PUBLIC_TEST}/{{good,bad}}/*.png and {category_dir}/{PUBLIC_TEST}/ground_truth/bad/"
        f"<stem>{MASK_SUFFIX}.png."
    )


def check_test_split(test_split: str, category_dir: Path) -> str:
    """``test_split`` if it is the labelled test_public; a DatasetError pointing to kdad.predict otherwise."""
    if test_split in UNLABELLED_TESTS:
        raise DatasetError(
            f"data.test_split={test_split}: MVTec AD 2's {test_split} has no labels or masks (MVTec evaluates it on "
            f"its server), so kdad cannot test on it. Test on {PUBLIC_TEST} (the default), and score "
            f"{category_dir / test_split} with the trained run: python -m kdad.predict run_dir=<run folder> "
            f"input={category_dir / test_split}"
        )
    return check_choice(test_split, (PUBLIC_TEST,), "data.test_split (MVTec AD 2)")


def find_mvtec_ad2_samples(category_dir: Path, split: str) -> list[Sample]:
    """Samples of ``split`` ("train", "validation" or "test" = test_public) of one MVTec AD 2 category."""
    layout = _layout(category_dir)
    check_choice(split, ("train", "validation", "test"), f"MVTec AD 2 split (in {category_dir})")
    if split in ("train", "validation"):
        return find_normal_samples(category_dir / split / NORMAL, f"{split} folder", layout)
    test_dir = require_dir(category_dir / PUBLIC_TEST, "test folder", layout)
    normals = list_images(require_dir(test_dir / NORMAL, "test folder", layout))
    defect_dir = require_dir(test_dir / DEFECT, "test folder", layout)
    defects = list_images(defect_dir)
    mask_dir = require_dir(test_dir / "ground_truth" / DEFECT, "mask folder", layout)
    masks = index_by_stem(mask_dir)
    # The archive pairs every mask with an image: an unclaimed mask means a deleted, renamed or mixed-up image.
    check_masks_have_images(masks, defects, defect_dir, (MASK_SUFFIX,))
    samples = [Sample(p, None, 0, NORMAL) for p in normals]
    samples += [Sample(p, find_mask(p, masks, mask_dir, (MASK_SUFFIX,)), 1, DEFECT) for p in defects]
    return samples


class MVTecAD2DataModule(MVTecLayoutDataModule):
    """MVTec AD 2 (8 categories); ``root`` holds the category folders; tested on test_public (module docstring).

    Args:
        test_split: the test set: only "test_public" has labels; "test_private" and "test_private_mixed" are
            refused with the kdad.predict command that scores them.
        **kwargs: see :class:`~kdad.data.datamodule.AnomalyDataModule`.
    """

    name = "mvtec_ad2"
    official_categories = MVTEC_AD2_CATEGORIES
    has_validation_split = True
    fixed_categories = True

    def __init__(self, *args: Any, test_split: str = PUBLIC_TEST, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Checked here, so that asking for an unlabelled test set stops before anything is indexed or trained.
        self.test_split = check_test_split(str(test_split), self.root / self.category)

    def category_layout(self, category_dir: Path) -> str:
        return _layout(category_dir)

    def find_samples(self, split: str) -> list[Sample]:
        return find_mvtec_ad2_samples(self.category_dir, split)

    def describe_layout(self) -> dict[str, Any]:
        return {
            "protocol": {
                "train": "train/good",
                "validation": "validation/good (val_source=train_split; training set left whole)",
                "test": f"{PUBLIC_TEST}/{{good,bad}} (test_private, test_private_mixed: unlabelled, kdad.predict only)",
                "masks": f"{PUBLIC_TEST}/ground_truth/bad/<stem>{MASK_SUFFIX}.png, binarised > 0",
                "official_metrics": "MVTec reports AU-PRO@0.05 (method.aupro_limit=0.05) and the thresholded "
                "segmentation F1 (pixel_f1) on its private sets",
            }
        }
