"""RD with Expert (URD) and rdpp_expert: GII, the teacher/student losses, the iteration order, checkpoints, presets."""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config

from kdad.blocks.teacher import Teacher
from kdad.methods.rd_expert import RDExpertModule
from kdad.methods.rd_expert.injection import GuidedInjection, InjectedDecoder
from kdad.methods.rd_expert.model import ReverseDistillationExpert, level_masks, student_loss, teacher_loss
from kdad.runner.train import run

SMALL = ["data.image_size=64", "logger=none", "data.category=leatherette", "data.batch_size=25"]


# ---------------------------------------------------------------- Guided Information Injection
def _gii_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    decoded = torch.randn(2, 8, 4, 4, generator=generator)
    deep = torch.randn(2, 8, 4, 4, generator=generator)
    shallow = torch.randn(2, 4, 8, 8, generator=generator)
    return decoded, deep, shallow


def test_gii_with_similarity_one_passes_pure_teacher_context() -> None:
    gii = GuidedInjection(8, 4, mode="gated").eval()
    decoded, deep, shallow = _gii_inputs()
    ones = torch.ones(2, 1, 4, 4)
    context = gii.context(deep, shallow)
    gated = gii.gate(context, decoded, ones)
    assert torch.allclose(gated, gii.attend(context))
    # The decoder path does not reach the gate at all...
    assert torch.allclose(gated, gii.gate(context, torch.randn_like(decoded), ones))
    # ...and the stage input is FS(concat[decoded, SA(context)]).
    expected = gii.fuse(torch.cat([decoded, gii.attend(context)], dim=1))
    assert torch.allclose(gii(decoded, deep, shallow, similarity=ones), expected)


def test_gii_with_similarity_zero_passes_the_decoder_path() -> None:
    gii = GuidedInjection(8, 4, mode="gated").eval()
    decoded, deep, shallow = _gii_inputs()
    zeros = torch.zeros(2, 1, 4, 4)
    _, other_deep, other_shallow = _gii_inputs(seed=1)
    out = gii(decoded, deep, shallow, similarity=zeros)
    assert torch.allclose(out, gii.fuse(torch.cat([decoded, gii.attend(decoded)], dim=1)))
    assert torch.allclose(out, gii(decoded, other_deep, other_shallow, similarity=zeros))  # teacher ignored


def test_gii_similarity_is_channel_cosine_without_gradient() -> None:
    decoded, deep, _ = _gii_inputs()
    decoded.requires_grad_(True)
    s = GuidedInjection.similarity(decoded, deep)
    assert s.shape == (2, 1, 4, 4) and not s.requires_grad
    assert torch.allclose(s[:, 0], F.cosine_similarity(decoded, deep, dim=1))
    assert torch.allclose(GuidedInjection.similarity(deep, deep), torch.ones(2, 1, 4, 4), atol=1e-6)


def test_released_gii_concatenates_the_context_ungated() -> None:
    gii = GuidedInjection(8, 4, mode="released").eval()
    decoded, deep, shallow = _gii_inputs()
    assert gii.attend is None
    expected = gii.fuse(torch.cat([decoded, gii.context(deep, shallow)], dim=1))
    assert torch.allclose(gii(decoded, deep, shallow), expected)
    with pytest.raises(ValueError, match="GII mode"):
        GuidedInjection(8, 4, mode="attn")


@pytest.mark.parametrize("mode", ["gated", "released"])
def test_injected_decoder_matches_teacher_shapes(mode: str) -> None:
    channels = [24, 40, 112]
    teacher = [torch.randn(2, c, 32 // 2**k, 32 // 2**k) for k, c in enumerate(channels)]
    decoder = InjectedDecoder(channels, 224, blocks=(1, 1, 1), mode=mode)
    outputs = decoder(torch.randn(2, 224, 4, 4), teacher)
    assert [o.shape for o in outputs] == [t.shape for t in teacher]
    assert len(decoder.injections) == 2


# ---------------------------------------------------------------- losses
def test_level_masks_follow_urd_rule() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    (level,) = level_masks(mask, [torch.zeros(1, 3, 4, 4)])
    assert torch.equal(level[0, 0], torch.tensor([[1.0] * 4, [1.0] * 4, [0.0] * 4, [0.0] * 4]))


def test_student_loss_is_zero_when_student_reproduces_clean_features() -> None:
    features = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    parts = student_loss(features, features, features, features)
    assert float(parts["student"]) == pytest.approx(0.0, abs=1e-6)
    noisy = [f + torch.randn_like(f) for f in features]
    assert float(student_loss(features, noisy, features, features)["student"]) > 0.1


def test_teacher_loss_drives_distance_to_one_inside_mask_and_zero_outside() -> None:
    torch.manual_seed(0)
    expert, teacher = Teacher(), Teacher(frozen=False)
    images = F.interpolate(torch.randn(4, 3, 8, 8), size=64, mode="bilinear")
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    augmented = images + 0.5 * mask  # a mild change: teacher and expert start close inside the mask
    expert_clean, expert_aug = expert(images), expert(augmented)
    masks = level_masks(mask, expert_clean)

    def inside_outside() -> list[tuple[float, float]]:
        with torch.no_grad():
            distances = [
                1 - F.cosine_similarity(t, e, dim=1).unsqueeze(1)
                for t, e in zip(teacher(augmented), expert_clean, strict=True)
            ]
        return [(float(d[m > 0].mean()), float(d[m == 0].mean())) for d, m in zip(distances, masks, strict=True)]

    teacher.train()  # BatchNorm in train mode while the teacher is updated, as URD
    before = inside_outside()
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3, betas=(0.5, 0.999))
    first = None
    for _ in range(12):
        parts = teacher_loss(teacher(images), teacher(augmented), expert_clean, expert_aug, mask)
        first = first if first is not None else float(parts["t_mask"])
        optimizer.zero_grad()
        parts["teacher"].backward()
        optimizer.step()
    after = inside_outside()
    assert float(parts["t_mask"]) < 0.8 * first
    for (in0, out0), (in1, out1) in zip(before, after, strict=True):
        assert in1 - out1 > in0 - out0  # more separable at every level
    deepest_in, deepest_out = after[-1]
    assert deepest_in > 0.8 and deepest_out < 0.2


# ---------------------------------------------------------------- the iteration
@pytest.mark.parametrize(("method", "teacher_bn"), [("rd_expert", "train"), ("rdpp_expert", "eval")])
def test_stages_update_teacher_then_student(method: str, teacher_bn: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", f"method.model.teacher_bn={teacher_bn}"], tmp_path)
    module = hydra.utils.instantiate(cfg.method)
    model: ReverseDistillationExpert = module.model
    assert isinstance(module, RDExpertModule) and model.expert is not None and model.expert.frozen
    assert (model.projection is not None) == (method == "rdpp_expert")
    groups = model.parameter_groups()
    model.train()
    image = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., 20:40, 20:40] = 1
    stages = model.optimizer_steps({"image": image, "image_aug": image + mask, "mask_aug": mask})

    stage = next(stages)
    assert stage.optimizers == ("teacher",)
    assert model.teacher.training == (teacher_bn == "train")  # URD: BatchNorm in train mode while T is updated
    stage.loss.backward()
    assert any(p.grad is not None for p in groups["teacher"])  # (timm keeps unused deeper blocks: no grad there)
    assert all(p.grad is None for name in groups if name != "teacher" for p in groups[name])
    for p in groups["teacher"]:
        p.grad = None

    stage = next(stages)
    assert not model.teacher.training  # the student learns from the updated teacher in eval mode
    assert set(stage.optimizers) == set(groups) - {"teacher"}
    assert ("proj" in stage.logs) == (method == "rdpp_expert")
    stage.loss.backward()
    assert all(p.grad is None for p in groups["teacher"])
    assert any(p.grad is not None for p in groups["student"])
    with pytest.raises(StopIteration):
        next(stages)
    # The validation loss (checkpoint=val_loss) works on plain normal batches: clean pairs with empty masks, so the
    # mask term L1(1 - cos(T(x), E(x)), 0) is exactly the normal term mean(1 - cos(T(x), E(x))).
    parts = model.loss({"image": image})
    assert torch.isfinite(parts["loss"]) and float(parts["t_normal"]) > 0
    torch.testing.assert_close(parts["t_mask"], parts["t_normal"])


@pytest.mark.parametrize("teacher_bn", ["train", "eval"])
def test_warns_once_when_the_teacher_does_not_start_as_the_expert(teacher_bn: str, tmp_path: Path) -> None:
    """Batches of one near-uniform 'category': their statistics are far from ImageNet's, so a teacher normalising with
    them (teacher_bn=train) does not start as a copy of the expert; with the pretrained statistics it does, exactly."""
    cfg = compose_config(["method=rd_expert", f"method.model.teacher_bn={teacher_bn}"], tmp_path)
    model: ReverseDistillationExpert = hydra.utils.instantiate(cfg.method).model
    model.train()
    image = 0.3 + 0.05 * torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = {"image": image, "image_aug": image, "mask_aug": torch.zeros(8, 1, 64, 64)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = next(model.optimizer_steps(batch))
        next(model.optimizer_steps(batch))  # only the first iteration is checked
    gap_warnings = [w for w in caught if "from the expert on normal images" in str(w.message)]
    levels = len(model.teacher.channels)
    if teacher_bn == "train":
        assert len(gap_warnings) == 1 and float(first.logs["t_normal"]) / levels > 0.1
    else:
        assert not gap_warnings and float(first.logs["t_normal"]) < 1e-5


def test_rd_expert_config_follows_the_release(tmp_path: Path) -> None:
    module = hydra.utils.instantiate(compose_config(["method=rd_expert"], tmp_path).method)
    teacher, student = module.configure_optimizers()
    assert teacher.defaults["lr"] == 1e-4 and student.defaults["lr"] == 0.005
    assert teacher.defaults["betas"] == student.defaults["betas"] == (0.5, 0.999)
    assert module.model.gii == "gated" and not module.model.teacher.frozen
    # The expert and the teacher start from the same pretrained weights.
    for (name, a), b in zip(
        module.model.expert.state_dict().items(), module.model.teacher.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_rd_expert_run_counts_iterations_and_checkpoint_serves_inference(tmp_path: Path) -> None:
    common = ["method=rd_expert", "method.model.gii=released", *SMALL, "trainer.max_epochs=-1", "trainer.max_steps=3"]
    cfg = compose_config(common, tmp_path)
    summary = run(cfg, quiet=True)
    ckpt = Path(cfg.run_dir) / "checkpoints/last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 3  # iterations, though each iteration steps two optimisers
    keys = state["state_dict"]
    assert not any(k.startswith("model.expert.") for k in keys)  # frozen expert: rebuilt, not stored
    assert any(k.startswith("model.teacher.") for k in keys)  # the trained teacher is needed for inference
    assert state["kdad"]["frozen"]["model.expert."]["weights"] == "package:efficientnet_lite0"
    eval_only = [*common, "train=false", f"ckpt_path={ckpt}", "tag=eval"]
    evaluated = run(compose_config(eval_only, tmp_path), quiet=True)
    without_expert = run(
        compose_config([*eval_only, "tag=eval_noexpert", "method.model.expert=null"], tmp_path), quiet=True
    )
    for key, value in summary["metrics"].items():
        assert evaluated["metrics"][key] == pytest.approx(value, abs=1e-5)
        assert without_expert["metrics"][key] == pytest.approx(value, abs=1e-5)


# ---------------------------------------------------------------- presets and synthesis settings
@pytest.mark.parametrize(
    ("experiment", "category", "steps"),
    [
        ("rd_expert_mvtec", "bottle", 5000),
        ("rd_expert_mvtec", "cable", 10000),
        ("rd_expert_mvtec", "transistor", 10000),
        ("rd_expert_visa", "pcb1", 10000),
    ],
)
def test_rd_expert_presets_resolve_iterations_per_category(
    experiment: str, category: str, steps: int, tmp_path: Path
) -> None:
    cfg = compose_config([f"experiment=paper/{experiment}", f"data.category={category}"], tmp_path)
    assert cfg.trainer.max_steps == steps and cfg.trainer.max_epochs == -1
    assert cfg.teacher.backbone == cfg.method.model.teacher.backbone == "wide_resnet50_2.tv_in1k"
    assert cfg.data.image_size == 256 and cfg.data.batch_size == 16 and cfg.seed == 111
    assert cfg.checkpoint.policy == "best_on_test" and cfg.checkpoint.monitor == "val/method_selection"


@pytest.mark.parametrize(
    ("data", "category", "method"),
    [
        ("mvtec", "hazelnut", "grabcut"),
        ("mvtec", "bottle", "grabcut"),
        ("mvtec", "capsule", "otsu"),
        ("mvtec", "screw", "otsu"),
        ("mvtec", "transistor", "none"),
        ("mvtec", "carpet", "none"),
        ("visa", "pcb1", "grabcut"),
        ("visa", "candle", "grabcut"),
        ("mvtec3d", "bagel", "grabcut"),
        ("synthetic", "gelcap", "grabcut"),
        ("synthetic", "hexnut", "grabcut"),
        ("synthetic", "leatherette", "none"),
        ("folder", None, "none"),
    ],
)
@pytest.mark.parametrize("expert_method", ["rd_expert", "rdpp_expert"])
def test_expert_methods_pick_the_benchmarks_foreground_rule(
    expert_method: str, data: str, category: str | None, method: str, tmp_path: Path
) -> None:
    """Without a synthesis override, the method selects URD's recipe (synthesis=draem_rd_expert) and the data group
    the foreground rule of its benchmark (conf/foreground/<data>.yaml, table rd_expert; MVTec: GrabCut / Otsu / none
    per category; VisA: GrabCut everywhere)."""
    overrides = [f"method={expert_method}", f"data={data}"] + ([f"data.category={category}"] if category else [])
    cfg = compose_config(overrides, tmp_path)
    foreground = cfg.data.foreground
    rule = foreground.get(category, foreground["default"]) if category else foreground["default"]
    assert rule["method"] == method
    assert cfg.synthesis.synthesizer.clean_probability == 0.0 and cfg.synthesis.synthesizer.texture_augmenters == 0


def test_rdpp_preset_resolves_epochs_per_category(tmp_path: Path) -> None:
    for category, epochs in (("carpet", 10), ("grid", 260), ("zipper", 300), ("bottle", 200)):
        cfg = compose_config(["experiment=paper/rdpp_mvtec", f"data.category={category}"], tmp_path)
        assert cfg.trainer.max_epochs == epochs and cfg.method.name == "rdpp"
        assert cfg.checkpoint.policy == "best_on_test"


# ---------------------------------------------------------------- learning (slow)
LEARN = ["data=synthetic", "data.category=leatherette", "data.image_size=128", "logger=none"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rd_expert", "rdpp_expert"])
def test_expert_methods_learn_on_a_synthetic_category(method: str, tmp_path: Path) -> None:
    """105 iterations at 128 px, Lite0 expert/teacher. Measured (docs/rd_expert.md): image AUROC 0.72-0.86 and pixel
    AUROC 0.93-0.96 over 7 runs of rd_expert / rdpp_expert, far above chance but below the issue's 0.9 (plain RD: 0.93
    at the same budget; rd_expert with 315 iterations: 0.84). The thresholds check that these methods learn; reaching
    0.9 is open work (issue 5), not something this test pretends."""
    summary = run(compose_config([*LEARN, f"method={method}", "trainer.max_epochs=15"], tmp_path), quiet=True)
    assert summary["metrics"]["image_auroc"] >= 0.7
    assert summary["metrics"]["pixel_auroc"] >= 0.9
