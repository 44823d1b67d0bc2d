"""The dataset core: decoding, resizing, mask binarisation, normalisation, augmentations, has_mask."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from fixtures import write_image, write_mask
from PIL import Image

from kdad.data import IMAGENET_MEAN, IMAGENET_STD, AnomalyDataset, DatasetError, Sample
from kdad.data.dataset import normalize
from kdad.data.decode import decode_image, decode_mask


def _solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, rgb).save(path)
    return path


def test_batch_keys_types_and_shapes(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.png", box=(4, 4, 20, 20))
    mask = write_mask(tmp_path / "a_mask.png", (4, 4, 20, 20))
    item = AnomalyDataset([Sample(image, mask, 1, "crack")], image_size=32)[0]
    assert set(item) == {"image", "mask", "label", "has_mask", "image_path", "defect_type"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and item["mask"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0 and int(item["label"]) == 1
    assert item["has_mask"].dtype == torch.bool and bool(item["has_mask"])
    assert item["image_path"] == str(image) and item["defect_type"] == "crack"
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}


def test_imagenet_normalisation(tmp_path: Path) -> None:
    rgb = (255, 0, 128)
    item = AnomalyDataset([Sample(_solid(tmp_path / "s.png", rgb), None, 0, "good")], image_size=16)[0]
    for channel in range(3):
        expected = (rgb[channel] / 255.0 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(item["image"][channel], torch.full((16, 16), expected), atol=1e-6)


def test_normalize_every_uint8_value_and_float_input() -> None:
    values = np.arange(256, dtype=np.uint8)
    image = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(16, 16, 3)
    expected = (image.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    out = normalize(image)
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16) and out.is_contiguous()
    assert np.abs(out.numpy() - expected.transpose(2, 0, 1)).max() < 1e-6
    # float images in [0, 1] (what a synthesis may return) take the arithmetic path to bit-identical values
    assert torch.equal(normalize(image.astype(np.float32) / np.float32(255.0)), out)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_image_resize_is_pils_antialiased_resize(tmp_path: Path, interpolation: str) -> None:
    path = write_image(tmp_path / "a.png", size=(64, 48))
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    reference = np.asarray(Image.open(path).convert("RGB").resize((24, 24), resample))
    dataset = AnomalyDataset([Sample(path, None, 0, "good")], image_size=24, interpolation=interpolation)
    assert np.array_equal(dataset.load_image(0), reference)


def test_bilinear_and_bicubic_differ(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", size=(64, 48))
    assert not np.array_equal(decode_image(path, 24, "bilinear"), decode_image(path, 24, "bicubic"))


def test_grayscale_images_become_three_channels(tmp_path: Path) -> None:
    path = write_image(tmp_path / "gray.png", mode="L")
    image = decode_image(path, 16, "bilinear")
    assert image.shape == (16, 16, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])


@pytest.mark.parametrize("mode", ["nearest", "bilinear_threshold"])
def test_masks_binarised_before_resizing_whatever_the_stored_value(tmp_path: Path, mode: str) -> None:
    box = (8, 8, 40, 40)
    results = [
        decode_mask(write_mask(tmp_path / f"m{value}.png", box, (64, 64), value=value), 16, mode)
        for value in (255, 1, 3)
    ]
    results.append(decode_mask(write_mask(tmp_path / "p.png", box, (64, 64), value=2, mode="P"), 16, mode))
    expected = np.zeros((16, 16), dtype=np.uint8)
    expected[2:10, 2:10] = 1  # an exact 4x downscale of the box
    for result in results:
        assert result.dtype == np.uint8 and np.array_equal(result, expected)


def test_rgba_and_rgb_masks_ignore_alpha(tmp_path: Path) -> None:
    pixels = np.zeros((32, 32, 4), dtype=np.uint8)
    pixels[..., 3] = 255  # opaque everywhere: alpha must not count as foreground
    pixels[4:12, 4:12, 0] = 200
    Image.fromarray(pixels).save(tmp_path / "rgba.png")
    mask = decode_mask(tmp_path / "rgba.png", 32, "nearest")
    assert mask.sum() == 64 and mask[4:12, 4:12].all()


def test_mask_resize_modes_differ_on_thin_structures(tmp_path: Path) -> None:
    # A one-pixel line on a column that nearest-neighbour samples at a 4x downscale (src = 4 * j + 2):
    # nearest keeps it, bilinear averaging dilutes it below 0.5.
    pixels = np.zeros((64, 64), dtype=np.uint8)
    pixels[:, 6] = 255
    Image.fromarray(pixels).save(tmp_path / "line.png")
    nearest = decode_mask(tmp_path / "line.png", 16, "nearest")
    bilinear = decode_mask(tmp_path / "line.png", 16, "bilinear_threshold")
    assert nearest[:, 1].all() and nearest.sum() == 16
    assert bilinear.sum() == 0


def test_bilinear_threshold_matches_reference_resize_then_half(tmp_path: Path) -> None:
    # Reference code: torchvision Resize (PIL bilinear) on the 0/255 mask, ToTensor, then > 0.5.
    path = write_mask(tmp_path / "m.png", (5, 7, 37, 29), (64, 48))
    reference = np.asarray(Image.open(path).resize((20, 20), Image.Resampling.BILINEAR)) / 255.0 > 0.5
    assert np.array_equal(decode_mask(path, 20, "bilinear_threshold"), reference.astype(np.uint8))


def test_has_mask_semantics(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.png")
    mask = write_mask(tmp_path / "a_mask.png", (1, 1, 5, 5))
    samples = [Sample(image, None, 0, "good"), Sample(image, mask, 1, "x"), Sample(image, None, 1, "x")]
    with_gt = AnomalyDataset(samples, image_size=8)
    assert [bool(with_gt[i]["has_mask"]) for i in range(3)] == [True, True, False]
    without_gt = AnomalyDataset(samples, image_size=8, pixel_ground_truth=False)
    assert [bool(without_gt[i]["has_mask"]) for i in range(3)] == [False, False, False]
    assert without_gt[2]["mask"].sum() == 0  # no mask file: zeros


def test_transform_applies_jointly_before_normalisation(tmp_path: Path) -> None:
    image = write_image(tmp_path / "a.png", box=(0, 0, 10, 48))
    mask = write_mask(tmp_path / "a_mask.png", (0, 0, 10, 48))
    sample = Sample(image, mask, 1, "x")
    plain = AnomalyDataset([sample], image_size=32)[0]
    flipped = AnomalyDataset([sample], image_size=32, transform=A.Compose([A.HorizontalFlip(p=1.0)]))[0]
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))


def test_transform_must_keep_uint8(tmp_path: Path) -> None:
    dataset = AnomalyDataset(
        [Sample(write_image(tmp_path / "a.png"), None, 0, "good")],
        image_size=8,
        transform=A.Compose([A.Normalize()]),
    )
    with pytest.raises(DatasetError, match="uint8"):
        dataset[0]


def test_sample_coerces_paths_and_checks_label(tmp_path: Path) -> None:
    sample = Sample(str(tmp_path / "a.png"), str(tmp_path / "m.png"), 1, "x")
    assert isinstance(sample.image_path, Path) and isinstance(sample.mask_path, Path)
    with pytest.raises(DatasetError, match="a.png"):
        Sample(tmp_path / "a.png", None, 2, "x")


def test_dataset_rejects_unknown_options(tmp_path: Path) -> None:
    samples = [Sample(tmp_path / "a.png", None, 0, "good")]
    with pytest.raises(DatasetError, match="interpolation 'lanczos'"):
        AnomalyDataset(samples, interpolation="lanczos")
    with pytest.raises(DatasetError, match="mask_resize 'area'"):
        AnomalyDataset(samples, mask_resize="area")
    with pytest.raises(DatasetError, match="image_size"):
        AnomalyDataset(samples, image_size=0)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(tmp_path / "deep.png")  # mid-grey
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    assert np.all(decode_image(tmp_path / "deep.png", 4, "bilinear") == 128)
