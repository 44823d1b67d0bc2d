"""Finding image files on disk: listing, stem indexes and mask pairing shared by all benchmark finders."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kdad.data.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def _visible(path: Path) -> bool:
    # Archives unpacked on macOS carry "._name.png" resource forks next to every image; they are not images.
    return not path.name.startswith(".")


def is_image_file(path: Path) -> bool:
    """True for a visible regular file with an image extension (any case: VisA ships ``.JPG``)."""
    return _visible(path) and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (for determinism only, never for pairing)."""
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def list_subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)


def require_dir(path: Path, what: str, fix: str) -> Path:
    """Return ``path`` if it is a folder, else raise a DatasetError naming it."""
    if not path.is_dir():
        problem = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetError(f"{what} {path} {problem}. {fix}")
    return path


def index_by_stem(folder: Path, paths: Iterable[Path] | None = None) -> dict[str, Path]:
    """Map file stem -> image path for the images in ``folder`` (or for ``paths``, some of them: layouts that keep
    images and masks side by side index each kind apart); two images sharing a stem is an error."""
    index: dict[str, Path] = {}
    for path in list_images(folder) if paths is None else paths:
        if path.stem in index:
            raise DatasetError(
                f"{index[path.stem]} and {path} share the file stem '{path.stem}', so kdad cannot tell which "
                "one belongs to an image. Keep one file per stem in this folder."
            )
        index[path.stem] = path
    return index


def find_mask(image: Path, masks: dict[str, Path], mask_folder: Path, suffixes: Iterable[str]) -> Path:
    """The mask of ``image`` in a stem index of ``mask_folder``: stem + one of ``suffixes`` (e.g. "_mask").

    Pairing is by name, never by position in a sorted listing: one missing or extra file would otherwise
    shift every later pair silently.
    """
    suffixes = tuple(suffixes)
    candidates = [masks[image.stem + s] for s in suffixes if image.stem + s in masks]
    if not candidates:
        expected = " or ".join(f"'{image.stem}{s}.<ext>'" for s in suffixes)
        raise DatasetError(
            f"defect image {image} has no mask: expected {expected} in {mask_folder}. Add the mask, or "
            "remove the image if it has no pixel ground truth."
        )
    if len(candidates) > 1:
        raise DatasetError(
            f"defect image {image} matches several masks in {mask_folder}: "
            f"{', '.join(str(c) for c in candidates)}. Keep exactly one mask per image."
        )
    return candidates[0]


def check_masks_have_images(
    masks: dict[str, Path], images: Iterable[Path], image_folder: Path, suffixes: Iterable[str]
) -> None:
    """Raise a DatasetError for a mask in ``masks`` (stem index) that no image in ``images`` claims.

    For the shipped benchmarks, whose archives pair every mask with an image: an unclaimed mask means a deleted or
    renamed image, or images and masks from different extractions, which pairing by stem would otherwise hide.
    """
    suffixes = tuple(suffixes)
    claimed = {image.stem + s for image in images for s in suffixes}
    orphans = sorted((stem, path) for stem, path in masks.items() if stem not in claimed)
    if orphans:
        stem, path = orphans[0]
        names = " or ".join(f"'{stem.removesuffix(s)}.<ext>'" for s in suffixes if stem.endswith(s))
        more = f" ({len(orphans) - 1} more such mask(s) there)" if len(orphans) > 1 else ""
        raise DatasetError(
            f"mask {path} has no image: expected {names or 'an image of the same stem'} in {image_folder}{more}. "
            "Restore the image from the dataset archive, or remove the mask."
        )
