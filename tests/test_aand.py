"""AAND: RAA block, its losses, the two-stage training flow (resume, stage-I reuse, checkpoint policies), configs."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config
from omegaconf import DictConfig

from kdad.blocks.losses import global_cosine_loss
from kdad.methods.aand import AANDModule, multistep_at_fractions
from kdad.methods.aand.amplification import (
    ResidualAnomalyAmplification,
    ResidualAnomalyAmplifier,
    level_mask,
    sinusoidal_position_encoding,
)
from kdad.methods.aand.losses import (
    amplification_loss,
    binary_focal_loss,
    hard_cosine_loss,
    hard_knowledge_distillation_loss,
)
from kdad.methods.aand.module import stage_lengths
from kdad.runner.compare import run_comparison
from kdad.runner.report import find_runs
from kdad.runner.train import run

# ------------------------------------------------------------------------------------------------ RAA block


def test_gate_is_a_probability_of_abnormal_prototypes() -> None:
    raa = ResidualAnomalyAmplification(16, normal_prototypes=3, abnormal_prototypes=5)
    features = 10 * torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        out = raa(features)
    assert out.gate.shape == (2, 1, 6, 7)
    # Identical prototypes draw equal attention: the gate is the abnormal share of the keys, 5 of 8, everywhere.
    with torch.no_grad():
        raa.prototypes[:] = torch.randn(16)
        torch.testing.assert_close(raa(features).gate, torch.full((2, 1, 6, 7), 5 / 8))
    # Prototypes aligned with the queries attract the attention: normal ones push the gate down, abnormal ones up.
    with torch.no_grad():
        query = F.normalize(raa.query(features + raa.position_encoding(6, 7, features)), dim=1).mean((0, 2, 3))
        raa.prototypes[:3], raa.prototypes[3:] = query, -query
        assert float(raa(features).gate.mean()) < 0.5
        raa.prototypes[:3], raa.prototypes[3:] = -query, query
        assert float(raa(features).gate.mean()) > 0.5


def test_teacher_forcing_leaves_normal_positions_unchanged() -> None:
    amplifier = ResidualAnomalyAmplifier([8, 16])
    with torch.no_grad():
        for level in amplifier.levels:  # large factors, so a changed position is obvious
            level.generator[-1].bias.fill_(5.0)
    features = [torch.rand(2, 8, 16, 16) + 0.1, torch.rand(2, 16, 8, 8) + 0.1]
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, :32, :32] = 1.0
    outputs = amplifier(features, mask=mask)
    for f, out in zip(features, outputs, strict=True):
        forced = level_mask(mask, f.shape[-2:])
        assert torch.equal(out.applied_gate, forced)
        normal = (forced == 0).expand_as(f)
        assert torch.equal(out.features[normal], f[normal])
        assert not torch.allclose(out.features[~normal], f[~normal])
    # Without a mask the soft predicted gate is applied.
    soft = amplifier(features)
    assert all(torch.equal(o.applied_gate, o.gate) for o in soft)


def test_raa_size_for_wrn50_matches_the_released_architecture() -> None:
    """1.08 M + 4.25 M + 6.40 M parameters for WRN50's 256/512/1024 channels (hidden width min(2C, 1024))."""
    amplifier = ResidualAnomalyAmplifier([256, 512, 1024])
    counts = [sum(p.numel() for p in level.parameters()) for level in amplifier.levels]
    assert counts == [1_076_736, 4_250_624, 6_400_000]


def test_level_mask_pools_and_thresholds_at_0_3() -> None:
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 0] = 1.0  # covers 1/4 of the top-left 2x2 cell: below 0.3
    mask[0, 0, 2:4, 2] = 1.0  # covers 1/2 of the bottom-right cell: above 0.3
    assert level_mask(mask, (2, 2)).flatten().tolist() == [0.0, 0.0, 0.0, 1.0]


def test_generator_factors_are_bounded() -> None:
    raa = ResidualAnomalyAmplification(8)
    features = 1e4 * torch.randn(3, 8, 5, 5)
    out = raa(features, forced_gate=torch.ones(3, 1, 5, 5))
    assert float(out.factors.abs().max()) <= 1.0
    # f' = f + g * factors * f: with g = 1 the amplified feature lies between 0 and 2f, channel by channel.
    ratio = out.features / features
    assert float(ratio.min()) >= -1e-4 and float(ratio.max()) <= 2.0 + 1e-4


def test_positional_encoding_is_bounded_and_position_specific() -> None:
    encoding = sinusoidal_position_encoding(24, 5, 6)
    assert encoding.shape == (24, 5, 6) and float(encoding.abs().max()) <= 1.0
    flat = encoding.flatten(1).T  # [positions, C]
    assert torch.unique(flat, dim=0).shape[0] == 30
    # First half: column code (constant down a column); second half: row code (constant along a row).
    assert torch.equal(encoding[:12, 0], encoding[:12, 4]) and torch.equal(encoding[12:, :, 0], encoding[12:, :, 5])
    assert torch.equal(sinusoidal_position_encoding(10, 2, 2)[8:], torch.zeros(2, 2, 2))


# ------------------------------------------------------------------------------------------------ losses


def _unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values), dim=0)


def _level(normal: torch.Tensor, anomalous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A [1,C,1,2] map with one normal and one anomalous position, and its anomaly mask."""
    features = torch.stack([normal, anomalous], dim=1)[None, :, None, :]
    mask = torch.tensor([[[[0.0, 1.0]]]])
    return features, mask


def test_amplification_loss_is_zero_once_anomalies_are_0_3_less_similar() -> None:
    normal = _unit(1.0, 0.0)
    original, mask = _level(normal, _unit(1.0, 0.0))  # cos(normal, anomaly) = 1
    far = original.clone()
    far[0, :, 0, 1] = torch.tensor([0.6, 0.8])  # cos = 0.6 <= 1 - 0.3
    assert float(amplification_loss(original, far, mask)) == 0.0
    near = original.clone()
    near[0, :, 0, 1] = torch.tensor([0.8, 0.6])  # cos = 0.8 > 0.7
    assert float(amplification_loss(original, near, mask)) == pytest.approx(0.1, abs=1e-6)
    assert float(amplification_loss(original, near, mask, margin=0.1)) == 0.0


def test_amplification_loss_uses_only_foreground_normals_and_gradients_reach_amplified() -> None:
    features = torch.zeros(1, 2, 1, 3)
    features[0, :, 0, 0] = _unit(1.0, 0.0)  # normal, foreground
    features[0, :, 0, 1] = _unit(0.0, 1.0)  # normal, background
    features[0, :, 0, 2] = _unit(1.0, 1.0)  # anomalous
    mask = torch.tensor([[[[0.0, 0.0, 1.0]]]])
    foreground = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    amplified = features.clone().requires_grad_(True)
    # Unchanged anomaly: cos - (cos - 0.3) = 0.3 for every pair, with or without the background normal.
    loss = amplification_loss(features, amplified, mask, foreground)
    assert float(loss) == pytest.approx(0.3, abs=1e-6)
    loss.backward()
    assert amplified.grad[0, :, 0, 2].abs().sum() > 0 and amplified.grad[0, :, 0, :2].abs().sum() == 0
    moved = features.clone()
    moved[0, :, 0, 2] = _unit(0.0, 1.0)  # cos 0.71 -> 0 to the foreground normal, but 0.71 -> 1 to the background one
    assert float(amplification_loss(features, moved, mask, foreground)) == 0.0
    assert float(amplification_loss(features, moved, mask)) > 0.0  # the background normal counts without foreground


def test_amplification_loss_without_anomalies_is_zero_with_a_graph() -> None:
    features = torch.randn(2, 4, 3, 3)
    amplified = features.clone().requires_grad_(True)
    loss = amplification_loss(features, amplified, torch.zeros(2, 1, 3, 3))
    assert float(loss) == 0.0 and loss.requires_grad


def test_focal_loss_matches_its_formula() -> None:
    p = torch.tensor([0.9, 0.2, 0.7, 0.1])
    y = torch.tensor([1.0, 1.0, 0.0, 0.0])
    expected = torch.tensor(
        [
            -0.8 * 0.1**2 * torch.log(torch.tensor(0.9)),
            -0.8 * 0.8**2 * torch.log(torch.tensor(0.2)),
            -0.2 * 0.7**2 * torch.log(torch.tensor(0.3)),
            -0.2 * 0.1**2 * torch.log(torch.tensor(0.9)),
        ]
    ).mean()
    assert float(binary_focal_loss(p, y)) == pytest.approx(float(expected), rel=1e-5)
    assert torch.isfinite(binary_focal_loss(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))


def test_hkd_hard_term_uses_exactly_the_top_k_positions() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 8, 5, 5)
    student = torch.randn(2, 8, 5, 5, requires_grad=True)
    k = 4
    loss = hard_cosine_loss(teacher, student, k)
    distance = (1 - F.cosine_similarity(teacher, student.detach(), dim=1)).flatten(1)
    top = distance.topk(k, dim=1)
    assert float(loss) == pytest.approx(float(top.values.mean()), rel=1e-6)
    loss.backward()
    touched = student.grad.abs().sum(1).flatten(1) > 0  # [B, H*W]
    expected = torch.zeros_like(touched)
    expected.scatter_(1, top.indices, True)
    assert torch.equal(touched, expected)
    # k beyond the level's positions is capped; HKD = hard terms + RD's global cosine, summed over levels.
    assert float(hard_cosine_loss(teacher, student, 1000)) == pytest.approx(float(distance.mean()), rel=1e-6)
    levels_t, levels_s = [teacher, teacher[:, :, :2, :2]], [student.detach(), student.detach()[:, :, :2, :2]]
    hkd = hard_knowledge_distillation_loss(levels_t, levels_s, k=k)
    manual = sum(hard_cosine_loss(t, s, k) for t, s in zip(levels_t, levels_s, strict=True))
    assert float(hkd) == pytest.approx(float(manual + global_cosine_loss(levels_t, levels_s)), rel=1e-6)


def test_multistep_milestones_at_80_and_90_percent() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = multistep_at_fractions(optimizer, epochs=120)
    assert sorted(scheduler.milestones.elements()) == [96, 108]
    lrs = []
    for _ in range(120):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[95] == 1.0 and lrs[96] == pytest.approx(0.2) and lrs[108] == pytest.approx(0.04)
    # A one-epoch stage (milestones 0.8 and 0.9 round to 0) trains at its base rate, not decayed before it starts.
    short = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    multistep_at_fractions(short, epochs=1)
    assert short.param_groups[0]["lr"] == 1.0


# ------------------------------------------------------------------------------------------------ model + configs

SMALL = ["data.image_size=64", "logger=csv", "data.batch_size=4", "data.eval_batch_size=8"]


def _stages(stage1: int, stage2: int) -> list[str]:
    return [f"method.stage1_epochs={stage1}", f"method.stage2_epochs={stage2}", f"trainer.max_epochs={stage1 + stage2}"]


UNSET_STAGES = ["method.stage1_epochs=null", "method.stage2_epochs=null"]


def _composed_stages(cfg: DictConfig) -> tuple[int, int]:
    """The stage lengths AANDModule.setup derives for this config's trainer."""
    m = cfg.method
    return stage_lengths(
        cfg.trainer.max_epochs, m.stage1_epochs, m.stage2_epochs, m.stage1_fraction, bool(m.stage1_ckpt)
    )


def test_stage_lengths_follow_trainer_max_epochs() -> None:
    assert stage_lengths(20) == (10, 10)  # the defaults: stage1_fraction 0.5, trainer.max_epochs 20
    assert stage_lengths(5) == (3, 2) and stage_lengths(2) == (1, 1)  # rounded half up
    assert stage_lengths(10, stage1_fraction=0.05) == (1, 9) and stage_lengths(10, stage1_fraction=0.99) == (9, 1)
    assert stage_lengths(220, stage1_fraction=100 / 220) == (100, 120)
    assert stage_lengths(220, 100, 120) == (100, 120)  # the paper presets
    assert stage_lengths(20, stage1_epochs=5) == (5, 15) and stage_lengths(20, stage2_epochs=15) == (5, 15)
    assert stage_lengths(7, reuse_stage1=True) == (0, 7) and stage_lengths(7, 3, 7, reuse_stage1=True) == (0, 7)


@pytest.mark.parametrize(
    ("max_epochs", "stage1", "stage2", "reuse", "message"),
    [
        (10, 100, 120, False, r"make 100 \+ 120 epochs.*Set trainer.max_epochs=220, or method.stage1_epochs=null"),
        (10, 10, None, False, r"make 10 \+ 0 epochs.*Set a longer trainer.max_epochs"),
        (1, None, None, False, r"two stages of at least one epoch each: trainer.max_epochs=1 is too short"),
        (-1, None, None, False, r"must be >= 1, got -1"),
        (3, None, 1, True, r"stage II only.*set trainer.max_epochs=1, or method.stage2_epochs=null"),
    ],
)
def test_stage_lengths_that_do_not_fit_the_run_say_how_to_fix_them(
    max_epochs: int, stage1: int | None, stage2: int | None, reuse: bool, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        stage_lengths(max_epochs, stage1, stage2, reuse_stage1=reuse)


def test_trainer_max_epochs_alone_sets_the_run_as_for_every_method(tmp_path: Path) -> None:
    """What `-m method=rd,aand trainer.max_epochs=10` composes: both jobs train 10 epochs."""
    for method in ("rd", "aand"):
        cfg = compose_config([f"method={method}", "trainer.max_epochs=10"], tmp_path)
        assert cfg.trainer.max_epochs == 10
    assert _composed_stages(cfg) == (5, 5)
    module = hydra.utils.instantiate(cfg.method)
    assert (module.stage1_epochs, module.stage2_epochs, module.total_epochs) == (None, None, None)  # until fit


@pytest.mark.parametrize(
    ("data", "category", "foreground"),
    [
        ("synthetic", "bolt", "grabcut"),
        ("mvtec", "cable", "disc"),
        ("mvtec", "screw", "threshold"),
        ("visa", "capsules", "threshold"),
        ("mvtec3d", "foam", "rect"),
        ("folder", "custom", "none"),
    ],
)
def test_method_selects_aand_synthesis_of_the_benchmark(data: str, category: str, foreground: str, tmp_path: Path):
    cfg = compose_config(["method=aand", f"data={data}", f"data.category={category}"], tmp_path)
    synthesis = cfg.synthesis
    assert synthesis.synthesizer.clean_probability == 0.2 and synthesis.synthesizer.texture_augmenters == 3
    spec = synthesis.foreground.get(category, synthesis.foreground.default)
    assert spec.method == foreground
    if category == "screw":
        assert spec.invert and spec.threshold == 150


@pytest.mark.parametrize("benchmark", ["mvtec", "visa", "mvtec3d"])
def test_paper_presets_compose_with_consistent_schedules(benchmark: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment=paper/aand_{benchmark}"], tmp_path)
    assert cfg.method.name == "aand" and cfg.teacher.backbone == "wide_resnet50_2.tv_in1k"
    assert (cfg.method.stage1_epochs, cfg.method.stage2_epochs) == (100, 120)
    assert cfg.trainer.max_epochs == 220 and cfg.seed == 0
    assert _composed_stages(cfg) == (100, 120)
    # the paper's lengths are explicit: a shorter run has to say how to split (or drop them)
    with pytest.raises(ValueError, match=r"trainer.max_epochs=220, or method.stage1_epochs=null"):
        _composed_stages(compose_config([f"experiment=paper/aand_{benchmark}", "trainer.max_epochs=22"], tmp_path))
    shorter = [f"experiment=paper/aand_{benchmark}", "trainer.max_epochs=22", *UNSET_STAGES]
    assert _composed_stages(compose_config(shorter, tmp_path)) == (11, 11)
    assert cfg.data.interpolation == "bicubic" and cfg.data.image_size == 256 and cfg.data.batch_size == 16
    assert cfg.synthesis.synthesizer.texture_source.root.endswith("dtd/images")
    assert cfg.method.optimizer.lr == 0.005 and list(cfg.method.scheduler.fractions) == [0.8, 0.9]


def test_model_forward_reports_the_stage1_map_and_refuses_batches_without_synthesis(tmp_path: Path) -> None:
    cfg = compose_config(["method=aand"], tmp_path)
    module = hydra.utils.instantiate(cfg.method)
    assert isinstance(module, AANDModule)
    model = module.model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.score.shape == (2,) and out.anomaly_map.shape == (2, 64, 64)
    assert set(out.auxiliary) == {"stage1"} and out.auxiliary["stage1"][1].shape == (2, 64, 64)
    with pytest.raises(ValueError, match="image_aug"):
        model.stage1_loss({"image": torch.randn(2, 3, 64, 64)})
    with pytest.raises(ValueError, match="stage1_ckpt"):
        AANDModule(model, optimizer=torch.optim.Adam, stage1_epochs=0)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.teacher.parameters())
    assert {id(p) for p in model.stage_parameters(1)}.isdisjoint({id(p) for p in model.stage_parameters(2)})


# ------------------------------------------------------------------------------------------------ two-stage runs


def _mvtec(root: Path) -> list[str]:
    return ["data=mvtec", f"data.root={root}", "data.category=bottle", "method=aand", *SMALL]


def _amplifier_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.amplifier.")}


def test_interrupted_between_stages_resumes_in_stage2_and_stage1_is_reusable(mvtec_root: Path, tmp_path: Path) -> None:
    interrupt = ["+callbacks.interrupt_at._target_=helpers.InterruptAt", "+callbacks.interrupt_at.epoch=1"]
    cfg = compose_config([*_mvtec(mvtec_root), "trainer.max_epochs=2", *interrupt], tmp_path)  # 1 + 1 epochs
    checkpoints = Path(cfg.run_dir) / "checkpoints"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning turns the Ctrl-C into exit(1) after saving last.ckpt
            run(cfg, quiet=True)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert (checkpoints / "stage1.ckpt").is_file() and not (Path(cfg.run_dir) / "metrics.json").exists()
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["epoch"] == 1
    stage1 = _amplifier_state(checkpoints / "stage1.ckpt")

    summary = run(compose_config([*_mvtec(mvtec_root), "trainer.max_epochs=2"], tmp_path), quiet=True)
    assert summary["epochs_trained"] == 2
    assert {"image_auroc", "stage1/image_auroc", "stage1/pixel_aupro"} <= set(summary["metrics"])
    final = _amplifier_state(checkpoints / "last.ckpt")
    assert final.keys() == stage1.keys() and all(torch.equal(final[k], stage1[k]) for k in stage1)

    # A new run reusing that stage I trains stage II only, for trainer.max_epochs; an explicit stage II must agree.
    reuse = [*_mvtec(mvtec_root), f"method.stage1_ckpt={checkpoints / 'stage1.ckpt'}", "tag=reuse"]
    with pytest.raises(ValueError, match="trainer.max_epochs=1"):
        run(compose_config([*reuse, "method.stage2_epochs=1", "trainer.max_epochs=3"], tmp_path), quiet=True)
    reused_cfg = compose_config([*reuse, "trainer.max_epochs=1"], tmp_path)
    reused = run(reused_cfg, quiet=True)
    assert reused["epochs_trained"] == 1
    assert reused["metrics"]["stage1/image_auroc"] == pytest.approx(summary["metrics"]["stage1/image_auroc"])
    reused_state = _amplifier_state(Path(reused_cfg.run_dir) / "checkpoints/last.ckpt")
    assert all(torch.equal(reused_state[k], stage1[k]) for k in stage1)


@pytest.mark.parametrize("warmup", ["rd", "none"])
def test_student_warmup_steps_the_student_during_stage1_only_when_asked(
    warmup: str, mvtec_root: Path, tmp_path: Path
) -> None:
    interrupt = ["+callbacks.interrupt_at._target_=helpers.InterruptAt", "+callbacks.interrupt_at.epoch=1"]
    overrides = [*_mvtec(mvtec_root), "trainer.max_epochs=2", f"method.student_warmup={warmup}", *interrupt]
    cfg = compose_config(overrides, tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # stopped at the start of stage II: what stage I did is in last.ckpt
            run(cfg, quiet=True)
    finally:
        signal.signal(signal.SIGINT, handler)
    state = torch.load(Path(cfg.run_dir) / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    stage1_steps = state["optimizer_states"][0]["state"]
    student_steps = state["optimizer_states"][1]["state"]
    assert stage1_steps, "stage I took no step"
    if warmup == "none":  # the released schedule: the student is untouched until stage II
        assert not student_steps
    else:  # one student step per stage-I iteration, at stage II's initial learning rate
        steps = {float(s["step"]) for s in student_steps.values()}
        assert steps == {float(s["step"]) for s in stage1_steps.values()}
        assert state["optimizer_states"][1]["param_groups"][0]["lr"] == pytest.approx(0.005)


def test_comparison_reports_stage1_view_and_best_on_test_picks_a_stage2_epoch(mvtec_root: Path, tmp_path: Path):
    """One AAND run (best_on_test: stage-I epochs must never be selected) and the stage-I map as a view column."""
    spec = tmp_path / "aand_tiny.yaml"
    spec.write_text(
        "title: tiny\n"
        f"common: [data=mvtec, data.root={mvtec_root}, data.category=bottle, data.image_size=64, data.batch_size=4,"
        f" logger=none, paths.runs_dir={tmp_path / 'runs'}, data.cache_dir={tmp_path / 'cache'},"
        " trainer.enable_progress_bar=false]\n"
        "seeds: [0]\ncategories: [bottle]\nmetrics: [image_auroc, pixel_auroc]\nvariants:\n"
        "  AAND: [method=aand, method.stage1_epochs=1, method.stage2_epochs=1, trainer.max_epochs=2,"
        " checkpoint=best_on_test]\n"
        "  AAND stage I: {of: AAND, prefix: stage1}\n"
    )
    text = run_comparison(str(spec), out=tmp_path / "out" / "aand_tiny")
    assert "| category | AAND | AAND stage I |" in text
    assert "### I-AUROC" in text and "### P-AUROC" in text and "### I-AP" not in text  # the spec's metrics only
    results = {r.column: r for r in find_runs([tmp_path / "runs"])}
    assert set(results) == {"AAND"}  # the view trained nothing
    summary = json.loads(next((tmp_path / "runs").rglob("metrics.json")).read_text())
    assert summary["checkpoint_used"].endswith("best-epoch001.ckpt")
    rows = list(csv.DictReader((tmp_path / "out" / "aand_tiny.csv").open()))
    view = next(r for r in rows if r["column"] == "AAND stage I")
    assert float(view["image_auroc"]) == pytest.approx(summary["metrics"]["stage1/image_auroc"])


# ------------------------------------------------------------------------------------------------ learning (slow)
@pytest.mark.slow
def test_aand_learns_on_a_synthetic_category(tmp_path: Path) -> None:
    """5 stage-I + 30 stage-II epochs at 128 px: image AUROC 0.915 / 0.938 for seeds 0 / 1 when measured (with
    5 + 15 epochs the HKD student is not there yet: 0.854-0.949 over three seeds, see docs/aand.md)."""
    overrides = ["method=aand", "data.category=leatherette", "data.image_size=128", "logger=none", "review_cases=0"]
    summary = run(compose_config([*overrides, *_stages(5, 30)], tmp_path), quiet=True)
    assert summary["metrics"]["image_auroc"] >= 0.9
    assert summary["metrics"]["stage1/image_auroc"] >= 0.9  # the stage-I map alone (0.947 when measured)
