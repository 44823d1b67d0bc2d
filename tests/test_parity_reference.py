"""The parity machinery itself: seeded weights, reference files and their errors, the drift check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from parity import (
    ParityReferenceError,
    assert_close,
    load_reference,
    parity_images,
    parity_mask,
    save_reference,
    seed_module,
    seeded_tensor,
)
from torch import nn

ARCH = {"backbone": "resnet18", "image_size": 64, "batch": 2}


def test_seeded_tensor_depends_on_name_shape_and_seed_only() -> None:
    a = seeded_tensor("layer1.0.conv1.weight", (8, 4, 3, 3))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, seeded_tensor("layer1.0.conv1.weight", (8, 4, 3, 3)))
    assert not torch.equal(a, seeded_tensor("layer1.0.conv2.weight", (8, 4, 3, 3)))
    assert not torch.equal(a, seeded_tensor("layer1.0.conv1.weight", (8, 4, 3, 3), seed=1))
    assert abs(float(a.std()) - (1 / 36) ** 0.5) < 0.05  # N(0, 1/fan_in)
    var = seeded_tensor("bn1.running_var", (64,))
    assert float(var.min()) >= 0.5 and float(var.max()) <= 1.5


def test_seed_module_fills_by_renamed_keys_so_two_layouts_agree() -> None:
    ours = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    theirs = nn.ModuleDict({"conv": nn.Conv2d(3, 4, 3), "bn": nn.BatchNorm2d(4)})
    seed_module(ours)
    names = {"conv": "0", "bn": "1"}
    filled = seed_module(theirs, rename=lambda key: names[key.split(".")[0]] + key[key.index(".") :])
    assert "1.running_var" in filled and "1.num_batches_tracked" not in filled
    for key, value in ours.state_dict().items():
        other = theirs.state_dict()[{v: k for k, v in names.items()}[key.split(".")[0]] + key[key.index(".") :]]
        assert torch.equal(value, other), key


def test_fixed_inputs_are_deterministic_and_nontrivial() -> None:
    assert torch.equal(parity_images(2, 64), parity_images(2, 64))
    mask = parity_mask(2, 64)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert all(0 < float(m.mean()) < 0.5 for m in mask)


def test_reference_round_trip_and_drift_detection(tmp_path: Path) -> None:
    features = torch.randn(2, 8, 4, 4)
    save_reference("toy", {"features": features}, ARCH, {"repository": "none"}, directory=tmp_path)
    reference = load_reference("toy", ARCH, directory=tmp_path)
    assert_close(reference, "features", features.clone())
    assert_close(reference, "features", features * (1 + 1e-7))
    drifted = features.clone()
    drifted[1, 3, 2, 2] += 1e-3 * float(features.abs().max())
    with pytest.raises(AssertionError, match=r"toy\.npz \[features\] drifted"):
        assert_close(reference, "features", drifted)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(reference, "features", features[:1])
    with pytest.raises(ParityReferenceError, match="no tensor 'missing'"):
        assert_close(reference, "missing", features)


def test_missing_reference_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ParityReferenceError, match=r"absent\.npz: parity reference missing"):
        load_reference("absent", ARCH, directory=tmp_path)


def test_reference_from_another_architecture_is_refused_naming_it(tmp_path: Path) -> None:
    save_reference("toy", {"x": torch.ones(3)}, ARCH, {"repository": "none"}, directory=tmp_path)
    other = {**ARCH, "backbone": "wide_resnet50_2", "image_size": 128}
    with pytest.raises(ParityReferenceError, match=r"toy\.json: recorded for a different architecture") as info:
        load_reference("toy", other, directory=tmp_path)
    assert "backbone: recorded 'resnet18' -> expected 'wide_resnet50_2'" in str(info.value)
    assert "image_size: recorded 64 -> expected 128" in str(info.value)


def test_reference_arrays_are_loaded_without_pickle(tmp_path: Path) -> None:
    save_reference("toy", {"x": torch.ones(3)}, ARCH, {"repository": "none"}, directory=tmp_path)
    # An object array inside the npz would need pickle to load: refused with the file's name.
    np.savez(tmp_path / "toy.npz", **{"x/sample": np.array([object()], dtype=object)})
    with pytest.raises(ParityReferenceError, match=r"toy\.npz: unreadable"):
        load_reference("toy", ARCH, directory=tmp_path).fields("x")
