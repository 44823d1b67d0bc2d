"""STFPM against its released code (gdwang08/STFPM @ 2598a5e), numerically: tests/parity_reference/stfpm.*.

The reference was recorded by running the released ``main.py`` (``ResNet18_MS3``, ``test``, ``train_val``) on CPU
with seeded ResNet-18 weights and ``parity_images()`` (provenance in ``stfpm.json``; how to re-record in
``kdad/methods/stfpm/README.md``). kdad's STFPM is built here from ``conf/method/stfpm.yaml`` with the released
value of every switch (``RELEASED``) and filled with the same seeded weights under its own keys; every recorded
tensor is compared at ``tests/parity.py::RTOL`` (1e-5 of its magnitude, fp32 on CPU).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import pytest
import torch
from helpers import compose_config
from omegaconf import OmegaConf
from parity import RTOL, assert_close, grads_and_steps, load_reference, parity_images, seed_module

from kdad.blocks.anomaly_map import finest_size, fuse_scales
from kdad.blocks.teacher import Teacher, encoder_student
from kdad.errors import ConfigError
from kdad.methods.base import AnomalyModule

pytestmark = pytest.mark.usefixtures("one_thread")  # one CPU thread, as recorded (parity.one_cpu_thread)

ARCHITECTURE = {"backbone": "resnet18", "taps": ["layer1", "layer2", "layer3"], "batch": 2, "image_size": 256}
# The released code's value of each of kdad's STFPM switches (kdad's defaults are in conf/method/stfpm.yaml).
RELEASED = [
    "method.model.anomaly_map.distance=normalised_l2",
    "method.model.anomaly_map.fuse_at=finest",
    "method.model.val_criterion=map",
    "method.model.zero_init_last=false",
    "method.model.batch_reduction=mean",
]


def _module(tmp_path: Path, overrides: list[str]) -> AnomalyModule:
    cfg = compose_config(["method=stfpm", "teacher=resnet18", "teacher.weights=none", *overrides], tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-teacher warning: the weights are seeded below
        return hydra.utils.instantiate(cfg.method)


def test_stfpm_matches_the_released_code(tmp_path: Path) -> None:
    reference = load_reference("stfpm", ARCHITECTURE)
    module = _module(tmp_path, RELEASED)
    model = module.model
    filled = seed_module(model)
    assert any(k.startswith("teacher.body.") for k in filled) and any(k.startswith("student.") for k in filled)
    images = parity_images(batch=2, size=256)
    assert_close(reference, "input", images)
    head = model.anomaly_map

    def evaluation(prefix: str) -> None:
        with torch.no_grad():
            teacher, student = model.features(images)
            levels = head.scale_maps(teacher, student)
            for k, level in enumerate(levels, 1):
                assert_close(reference, f"{prefix}map_level/{k}", level)
            fused = fuse_scales(levels, finest_size(levels), head.fusion, head.align_corners)
            assert_close(reference, f"{prefix}map_fused_64", fused.squeeze(1))
            out = model(images)
        assert_close(reference, f"{prefix}anomaly_map", out.anomaly_map)
        assert_close(reference, f"{prefix}score", out.score)

    # Evaluation with the seeded weights: features, per-level maps, the 64x64 product, the 256 map, the score.
    model.eval()
    with torch.no_grad():
        teacher, student = model.features(images)
    for k in range(3):
        assert_close(reference, f"teacher/{k + 1}", teacher[k])
        assert_close(reference, f"student_eval/{k + 1}", student[k])
    evaluation("")

    # One training step with kdad's own optimiser (the config's _partial_ SGD over the parameter groups).
    model.train()
    optimizer = module.configure_optimizers()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert named and all(n.startswith("student.") for n, _ in named)
    before = {n: p.detach().clone() for n, p in named}
    captured: list[list[torch.Tensor]] = []
    hook = model.student.register_forward_hook(lambda m, i, o: captured.append([x.detach() for x in o]))
    loss = model.loss({"image": images})["loss"]
    hook.remove()
    assert_close(reference, "loss", loss)
    (train_features,) = captured
    for k in range(3):
        assert_close(reference, f"student_train/{k + 1}", train_features[k])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    updates = grads_and_steps(named, before)
    assert sorted(updates) == sorted(n for n in reference.names() if n.startswith(("grad/", "step/")))
    for name, tensor in updates.items():
        assert_close(reference, name, tensor)
    state = model.state_dict()
    for name in (n for n in reference.names() if n.startswith("state/")):
        assert_close(reference, name, state[name.removeprefix("state/")])

    # The released validation pass after the step: the checkpoint criterion, the maps and the scores.
    model.eval()
    with torch.no_grad():
        assert_close(reference, "after/val_criterion", model.loss({"image": images})["loss"])
    evaluation("after/")
    assert reference.meta["tolerance"]["rtol"] == RTOL


def test_paper_preset_has_the_released_switches(tmp_path: Path) -> None:
    """experiment=paper/stfpm_mvtec composes to the very setting this file holds to the released numbers."""
    cfg = compose_config(["experiment=paper/stfpm_mvtec", "teacher.weights=none"], tmp_path)
    for override in RELEASED:
        key, value = override.split("=")
        assert str(OmegaConf.select(cfg, key)).lower() == value, override
    assert cfg.teacher.backbone.startswith("resnet18") and cfg.data.batch_size == 32


def test_kdad_defaults_differ_from_the_released_map_only_as_documented(tmp_path: Path) -> None:
    """kdad's default head: 1 - cos (1/2 of each released level map, so the product is 1/8) fused at 256."""
    released, default = _module(tmp_path, RELEASED).model, _module(tmp_path, []).model
    assert default.batch_reduction == "mean" and default.val_criterion == "loss"
    assert default.anomaly_map.distance == "cosine" and default.anomaly_map.fuse_at == "input"
    for model in (released, default):
        seed_module(model)
        model.eval()
    images = parity_images(batch=1, size=64)
    with torch.no_grad():
        (t, s) = released.features(images)
        for a, b in zip(released.anomaly_map.scale_maps(t, s), default.anomaly_map.scale_maps(t, s), strict=True):
            torch.testing.assert_close(a, 2 * b, rtol=1e-5, atol=1e-6)
        ours, theirs = default(images), released(images)
    # the same map up to the interpolation order (measured: scores within 0.4 %)
    assert ours.anomaly_map.shape == theirs.anomaly_map.shape == (1, 64, 64)
    torch.testing.assert_close(8 * ours.score, theirs.score, rtol=0.02, atol=0.0)


def test_released_student_init_is_torchvisions_resnet18() -> None:
    """``zero_init_last=False``: bit-identical, seed for seed, to torchvision.models.resnet18() (the released
    student, ``ResNet18_MS3(pretrained=False)``); timm's default differs only by each block's last BN weight."""
    torchvision = pytest.importorskip("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = Teacher(backbone="resnet18", weights="none")
    torch.manual_seed(7)
    released = torchvision.models.resnet18().state_dict()
    torch.manual_seed(7)
    student = encoder_student(teacher, zero_init_last=False).state_dict()
    assert all(torch.equal(student[k], released[k]) for k in student)
    torch.manual_seed(7)
    timm_default = encoder_student(teacher).state_dict()
    differ = sorted(k for k in student if not torch.equal(student[k], timm_default[k]))
    assert differ == [f"layer{i}.{j}.bn2.weight" for i in (1, 2, 3) for j in (0, 1)]
    assert all(torch.equal(timm_default[k], torch.zeros_like(timm_default[k])) for k in differ)
    with pytest.raises(ConfigError, match="zero_init_last"):
        encoder_student(Teacher(), zero_init_last=False)  # EfficientNet has no such option
