"""DSKD (kdad's interpretation of Yao & Gao, arXiv 2402.00448): structure, losses, gradient paths, maps, configs."""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import pytest
import torch
from helpers import compose_config
from torch import Tensor, nn

from kdad.blocks.anomaly_map import fuse_scales
from kdad.blocks.losses import DISTANCES
from kdad.blocks.teacher import Teacher
from kdad.methods.base import AnomalyModule
from kdad.methods.dskd.model import DualStudentDistillation
from kdad.methods.dskd.students import RunningLevelMean, fuse_students
from kdad.methods.stfpm import StudentTeacherPyramid
from kdad.runner.train import run


def _random_resnet18() -> Teacher:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Teacher(backbone="resnet18", weights="none")


@pytest.fixture(scope="module")
def lite0() -> Teacher:
    return Teacher()


@pytest.fixture(scope="module")
def resnet18() -> Teacher:
    return _random_resnet18()


@pytest.mark.parametrize(
    ("backbone", "channels"),
    [("lite0", [24, 40, 112]), ("resnet18", [64, 128, 256])],
)
def test_both_students_reproduce_the_teacher_pyramid_shapes(
    backbone: str, channels: list[int], request: pytest.FixtureRequest
) -> None:
    teacher: Teacher = request.getfixturevalue(backbone)
    model = DualStudentDistillation(teacher)
    feats = model.features(torch.randn(2, 3, 64, 64))
    expected = [(2, c, 64 // r, 64 // r) for c, r in zip(channels, (4, 8, 16), strict=True)]
    for name in ("teacher", "se", "sd"):
        assert [tuple(f.shape) for f in feats[name]] == expected, name
    # DF: one compact code at a quarter of the deepest tap's resolution (stride 32).
    code = model.embedding(feats["se"])
    assert tuple(code.shape) == (2, 2 * channels[-1], 2, 2)


@pytest.mark.parametrize("backbone", ["lite0", "resnet18"])
def test_eval_returns_score_and_map_with_each_students_map(backbone: str, request: pytest.FixtureRequest) -> None:
    model = DualStudentDistillation(request.getfixturevalue(backbone)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.score.shape == (3,) and out.anomaly_map.shape == (3, 64, 64)
    assert out.score.dtype == torch.float32 and out.anomaly_map.dtype == torch.float32
    assert set(out.auxiliary) == {"se", "sd"}
    for score, anomaly_map in out.auxiliary.values():
        assert score.shape == (3,) and anomaly_map.shape == (3, 64, 64)
    # mean fusion of the two students' (linearly blurred) maps is the main map
    se_map, sd_map = out.auxiliary["se"][1], out.auxiliary["sd"][1]
    torch.testing.assert_close(out.anomaly_map, (se_map + sd_map) / 2, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.score, out.anomaly_map.flatten(1).amax(1))


class _Echo(nn.Module):
    """Stands in for Sd: returns fixed feature maps whatever the embedding."""

    def __init__(self, features: list[Tensor]) -> None:
        super().__init__()
        self.features = features

    def forward(self, embedding: Tensor) -> list[Tensor]:
        return self.features


@pytest.mark.parametrize("distance", sorted(DISTANCES))
def test_loss_and_map_vanish_when_students_equal_the_teacher(distance: str, resnet18: Teacher) -> None:
    model = DualStudentDistillation(resnet18, loss=distance)
    model.encoder.load_state_dict(resnet18.body.state_dict())
    model.eval()  # Se with the teacher's weights and BN statistics computes exactly the teacher's features
    images = torch.randn(2, 3, 64, 64)
    model.decoder = _Echo(resnet18(images))
    parts = model.loss({"image": images})
    for name in ("se", "sd", "loss"):
        assert float(parts[name].detach()) == pytest.approx(0.0, abs=1e-5), name
    with torch.no_grad():
        out = model(images)
    assert float(out.anomaly_map.abs().max()) < 1e-3


@pytest.mark.parametrize(("reduction", "factor"), [("mean", 1.0), ("sum", 2.0)])
def test_losses_are_weighted_sums_of_the_two_students(reduction: str, factor: float, lite0: Teacher) -> None:
    model = DualStudentDistillation(
        lite0, se_weight=0.25, sd_weight=2.0, sd_loss="global_cosine", batch_reduction=reduction
    ).train()
    parts = model.loss({"image": torch.randn(2, 3, 64, 64)})  # parts are batch means; 'sum' scales by B = 2
    assert model.se_loss_name == "stfpm" and model.sd_loss_name == "global_cosine"
    torch.testing.assert_close(parts["loss"], factor * (0.25 * parts["se"] + 2.0 * parts["sd"]))


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("df_gradient", [True, False])
def test_decoder_students_loss_reaches_the_encoder_student_only_through_df(df_gradient: bool, lite0: Teacher) -> None:
    model = DualStudentDistillation(lite0, df_gradient=df_gradient).train()
    model.loss({"image": torch.randn(2, 3, 64, 64)})["sd"].backward()
    assert _grad_norm(model.embedding) > 0 and _grad_norm(model.decoder) > 0
    assert (_grad_norm(model.encoder) > 0) == df_gradient
    assert all(p.grad is None for p in lite0.parameters())


def test_encoder_students_loss_never_trains_df_or_sd(lite0: Teacher) -> None:
    model = DualStudentDistillation(lite0).train()
    model.loss({"image": torch.randn(2, 3, 64, 64)})["se"].backward()
    assert _grad_norm(model.encoder) > 0
    assert _grad_norm(model.embedding) == 0 and _grad_norm(model.decoder) == 0


def test_single_student_ablations(lite0: Teacher) -> None:
    se_only = DualStudentDistillation(lite0, students="se")
    assert se_only.embedding is None and se_only.decoder is None
    parts = se_only.train().loss({"image": torch.randn(2, 3, 64, 64)})
    assert set(parts) == {"loss", "se"}
    assert list(se_only.parameter_groups()) == ["se"]
    with torch.no_grad():
        out = se_only.eval()(torch.randn(2, 3, 64, 64))
    assert out.auxiliary == {} and out.anomaly_map.shape == (2, 64, 64)

    sd_only = DualStudentDistillation(lite0, students="sd")
    parts = sd_only.train().loss({"image": torch.randn(2, 3, 64, 64)})
    assert set(parts) == {"loss", "sd"}
    parts["loss"].backward()
    assert _grad_norm(sd_only.encoder) > 0  # Se is trained, by Sd's loss alone
    assert list(sd_only.parameter_groups()) == ["se", "df_sd"]
    with pytest.warns(UserWarning, match="random, frozen encoder"):
        frozen_front = DualStudentDistillation(lite0, students="sd", df_gradient=False)
    assert list(frozen_front.parameter_groups()) == ["df_sd"]


def test_encoder_student_is_stfpms_student(lite0: Teacher) -> None:
    """One builder (kdad.blocks.teacher.encoder_student): with the same seed Se starts as STFPM's student."""
    torch.manual_seed(3)
    se = DualStudentDistillation(lite0).encoder.state_dict()
    torch.manual_seed(3)
    student = StudentTeacherPyramid(lite0).student.state_dict()
    assert list(se) == list(student) and all(torch.equal(se[k], student[k]) for k in se)


def test_teacher_never_in_the_optimiser_and_se_lr_is_its_own_group(lite0: Teacher) -> None:
    model = DualStudentDistillation(lite0, se_lr=0.01)
    module = AnomalyModule(model, optimizer=lambda params: torch.optim.Adam(params, lr=0.005))
    optimizer = module.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"se": 0.01, "df_sd": 0.005}
    in_optimiser = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not in_optimiser & {id(p) for p in lite0.parameters()}
    expected = {id(p) for m in (model.encoder, model.embedding, model.decoder) for p in m.parameters()}
    assert in_optimiser == expected


def test_fusion_switches(lite0: Teacher) -> None:
    a, b = torch.rand(2, 1, 8, 8) + 0.1, torch.rand(2, 1, 8, 8) + 0.1
    torch.testing.assert_close(fuse_students([a, b], "mean"), (a + b) / 2)
    torch.testing.assert_close(fuse_students([a, b], "product"), a * b)
    with pytest.raises(ValueError, match="student fusion"):
        fuse_students([a, b], "max")
    # a product is blind to a constant rescaling of one student; a mean is not
    assert torch.equal(fuse_students([a, 10 * b], "product").flatten().argsort(), (a * b).flatten().argsort())
    images = torch.randn(2, 3, 64, 64)
    for scale_fusion in ("sum", "product"):
        for student_fusion in ("mean", "product"):
            model = DualStudentDistillation(lite0, student_fusion=student_fusion)
            model.anomaly_map.fusion = scale_fusion
            with torch.no_grad():
                out = model.eval()(images)
            se, sd = out.auxiliary["se"][1], out.auxiliary["sd"][1]
            assert out.anomaly_map.shape == (2, 64, 64) and torch.isfinite(out.anomaly_map).all()
            if student_fusion == "mean":  # the blur is linear, so fusing before or after it is the same
                torch.testing.assert_close(out.anomaly_map, (se + sd) / 2, rtol=1e-5, atol=1e-6)


def test_map_normalisation_divides_by_the_running_normal_level(lite0: Teacher) -> None:
    images = torch.randn(2, 3, 64, 64)
    model = DualStudentDistillation(lite0, map_norm="none").train()
    model.loss({"image": images})  # one training step sets the running normal levels
    se_level, sd_level = model.se_level_mean.value.clone(), model.sd_level_mean.value.clone()
    assert int(model.se_level_mean.updates) == 1 and not torch.equal(se_level, torch.ones(3))
    model.eval()
    with torch.no_grad():
        raw = model(images).auxiliary
        model.map_norm = "student"
        normed = model(images).auxiliary
    torch.testing.assert_close(normed["se"][1], raw["se"][1] / se_level.sum(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(normed["sd"][1], raw["sd"][1] / sd_level.sum(), rtol=1e-5, atol=1e-7)
    assert "se_level_mean.value" in model.state_dict()  # checkpoints carry the statistics
    # 'level' divides each level's map by its own normal level before the levels are summed
    model.map_norm = "level"
    with torch.no_grad():
        feats = model.features(images)
        levels = model.anomaly_map.scale_maps(feats["teacher"], feats["sd"])
        expected = fuse_scales([m / sd_level[k] for k, m in enumerate(levels)], (64, 64))
        torch.testing.assert_close(model.student_map(feats["teacher"], feats["sd"], "sd", (64, 64)), expected)


def test_running_level_mean_is_an_ema() -> None:
    running = RunningLevelMean(levels=2, momentum=0.5)
    running.update([torch.tensor(2.0), torch.tensor(4.0)])
    running.update([torch.tensor(4.0), torch.tensor(0.0)])
    torch.testing.assert_close(running.value, torch.tensor([3.0, 2.0]))


def test_invalid_switches_fail_early(lite0: Teacher) -> None:
    for kwargs, match in (
        ({"students": "three"}, "students"),
        ({"map_norm": "zscore"}, "map_norm"),
        ({"loss": "l1"}, "unknown distillation loss 'l1'"),
        ({"student_fusion": "max"}, "student fusion"),
        ({"batch_reduction": "max"}, "batch_reduction"),
    ):
        with pytest.raises(ValueError, match=match):
            DualStudentDistillation(lite0, **kwargs)


@pytest.mark.parametrize("policy", ["last", "val_loss", "best_on_test"])
def test_config_composes_under_every_checkpoint_policy(policy: str, tmp_path: Path) -> None:
    cfg = compose_config(["method=dskd", f"checkpoint={policy}"], tmp_path)
    module = hydra.utils.instantiate(cfg.method)
    assert isinstance(module.model, DualStudentDistillation) and module.name == "dskd"
    assert module.validation == {"last": "none", "val_loss": "loss", "best_on_test": "metrics"}[policy]
    assert cfg.run_dir.endswith("synthetic/weave/dskd/seed0")


def test_paper_preset_composes(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=paper/dskd_mvtec", "data.root=/nonexistent"], tmp_path)
    assert cfg.method.name == "dskd" and cfg.teacher.backbone == "resnet18.tv_in1k"
    assert cfg.data.image_size == 256 and cfg.teacher.weights == "hub"
    assert cfg.method.model.students == "both" and cfg.method.model.df_gradient


def test_end_to_end_run_reports_each_students_metrics(mvtec_root: Path, tmp_path: Path) -> None:
    overrides = [
        "method=dskd",
        "data=mvtec",
        f"data.root={mvtec_root}",
        "data.category=bottle",
        "data.image_size=64",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "logger=csv",
    ]
    summary = run(compose_config(overrides, tmp_path), quiet=True)
    metrics = summary["metrics"]
    for prefix in ("", "se/", "sd/"):
        for metric in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            assert 0.0 <= metrics[f"{prefix}{metric}"] <= 1.0


@pytest.mark.slow
def test_dskd_learns_on_a_synthetic_category(tmp_path: Path) -> None:
    overrides = ["method=dskd", "data.category=leatherette", "data.image_size=128", "logger=none"]
    summary = run(compose_config([*overrides, "trainer.max_epochs=5"], tmp_path), quiet=True)
    assert summary["metrics"]["image_auroc"] >= 0.9
    assert summary["metrics"]["pixel_auroc"] >= 0.95
