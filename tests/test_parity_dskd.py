"""DSKD against its specification (methods.md §6, kdad/methods/dskd/README.md) on hand-computed cases.

No DSKD code is public, so there is no recorded reference: every expected number here is derived by hand from the
specification's formulas (written next to it) or, for the blurred maps, computed by a plain numpy/scipy
implementation of the same formulas that shares no code with kdad. Feature pyramids are fed to the model by
replacing its ``features`` method, so the loss and map code under test is the model's own.

* loss: L = w_se * sum_k d(T_k, Se_k) + w_sd * sum_k d(T_k, Sd_k), each d averaged over the batch, the total
  times B for ``batch_reduction='sum'``; d = STFPM's per-pixel ||t/|t| - s/|s|||^2 (channel sum, position mean),
  the per-pixel 1 - cos, or RD's 1 - cos of the flattened maps;
* map: per student and level the per-pixel 1 - cos, bilinear upsampling (align_corners=True), levels fused by sum
  or product, students by mean or product, Gaussian sigma (scipy semantics), score = max.

Tolerances: float32 against exact values, 1e-6 absolute (hand cases, all values O(1)); 1e-5 relative (blurred
maps against scipy in float64).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import Tensor

from kdad.blocks.anomaly_map import AnomalyMapHead
from kdad.blocks.teacher import Teacher
from kdad.methods.dskd.model import DualStudentDistillation

pytestmark = pytest.mark.usefixtures("one_thread")  # one CPU thread, as recorded (parity.one_cpu_thread)

ATOL = 1e-6


@pytest.fixture(scope="module")
def resnet18() -> Teacher:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-teacher warning
        return Teacher(backbone="resnet18", weights="none")


def _pixels(rows: list[list[tuple[float, ...]]]) -> Tensor:
    """[[(c0, c1, ...) per column] per row] -> a [1,C,H,W] tensor (one image)."""
    return torch.tensor(rows, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0)


def _small(teacher: Teacher, **options: object) -> DualStudentDistillation:
    """A DSKD with the smallest DF and Sd (its pyramids are fed by hand below, so their size does not matter)."""
    return DualStudentDistillation(teacher, embedding_blocks=1, decoder_blocks=(1, 1, 1), **options)


def _fed(model: DualStudentDistillation, feats: dict[str, list[Tensor]]) -> DualStudentDistillation:
    model.features = lambda images: feats  # type: ignore[method-assign]
    return model


# ------------------------------------------------------------------ the pyramid matching loss
# Two levels, batch of two. Level 1: C=2, 1x2 pixels; level 2: C=2, 1x1.
T1 = torch.cat([_pixels([[(3, 4), (1, 0)]]), _pixels([[(1, 1), (2, 0)]])])
SE1 = torch.cat([_pixels([[(4, 3), (0, 2)]]), _pixels([[(1, 1), (-3, 0)]])])
T2 = torch.cat([_pixels([[(0, 5)]]), _pixels([[(1, 0)]])])
SE2 = torch.cat([_pixels([[(0, 1)]]), _pixels([[(1, 1)]])])
# Sd: the teacher except image 0's second level-1 pixel, which points the other way; level 2 twice the teacher.
SD1 = T1.clone()
SD1[0, :, 0, 1] = torch.tensor([-1.0, 0.0])
SD2 = 2 * T2

# Per pixel, cos(T, Se): level 1 image 0: (3,4).(4,3) = 24/25 and (1,0).(0,2) = 0; image 1: 1 and -1;
# level 2: 1 (image 0) and 1/sqrt2 (image 1). ||t^ - s^||^2 = 2 - 2cos.
SE_STFPM = ((2 * (1 / 25) + 2) / 2 + (0 + 4) / 2) / 2 + (0 + (2 - math.sqrt(2))) / 2  # 1.52 + (2 - sqrt2)/2
SE_PIXEL_COSINE = ((1 / 25 + 1) / 2 + (0 + 2) / 2) / 2 + (0 + (1 - 1 / math.sqrt(2))) / 2  # half of the above
# Flattened maps: image 0 (3,1,4,0).(4,0,3,2) = 24, norms sqrt26, sqrt29; image 1 (1,2,1,0).(1,-3,1,0) = -4,
# norms sqrt6, sqrt11; level 2 is one pixel, so the flattened cosine is the pixel cosine.
SE_GLOBAL_COSINE = ((1 - 24 / math.sqrt(26 * 29)) + (1 + 4 / math.sqrt(66))) / 2 + (0 + (1 - 1 / math.sqrt(2))) / 2
# Sd: only image 0's level-1 pixel (1,0) vs (-1,0) differs: cos -1.
SD_STFPM = ((0 + 4) / 2 + 0) / 2  # = 1
SD_PIXEL_COSINE = ((0 + 2) / 2 + 0) / 2  # = 1/2
SD_GLOBAL_COSINE = (1 - (9 + 16 - 1) / (math.sqrt(26) * math.sqrt(26))) / 2  # image 0: (3,-1,4,0).(3,1,4,0) = 24


@pytest.mark.parametrize(
    ("se_loss", "sd_loss", "se_expected", "sd_expected"),
    [
        ("stfpm", "stfpm", SE_STFPM, SD_STFPM),
        ("pixel_cosine", "pixel_cosine", SE_PIXEL_COSINE, SD_PIXEL_COSINE),
        ("global_cosine", "global_cosine", SE_GLOBAL_COSINE, SD_GLOBAL_COSINE),
        ("stfpm", "global_cosine", SE_STFPM, SD_GLOBAL_COSINE),
    ],
    ids=["stfpm", "pixel_cosine", "global_cosine", "stfpm+global_cosine"],
)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pyramid_matching_loss_by_hand(
    se_loss: str, sd_loss: str, se_expected: float, sd_expected: float, reduction: str, resnet18: Teacher
) -> None:
    assert math.isclose(SE_STFPM, 2 * SE_PIXEL_COSINE) and math.isclose(SE_STFPM, 1.52 + 1 - math.sqrt(2) / 2)
    model = _small(
        resnet18, se_loss=se_loss, sd_loss=sd_loss, se_weight=0.5, sd_weight=2.0, batch_reduction=reduction
    ).eval()
    _fed(model, {"teacher": [T1, T2], "se": [SE1, SE2], "sd": [SD1, SD2]})
    parts = model.loss({"image": torch.zeros(2, 3, 2, 2)})
    assert float(parts["se"]) == pytest.approx(se_expected, abs=ATOL)
    assert float(parts["sd"]) == pytest.approx(sd_expected, abs=ATOL)
    scale = 2 if reduction == "sum" else 1  # B = 2
    assert float(parts["loss"]) == pytest.approx(scale * (0.5 * se_expected + 2.0 * sd_expected), abs=ATOL)


def test_stfpm_distance_gradient_by_hand(resnet18: Teacher) -> None:
    """One pixel, t = (1,0), s = (3,4): d = ||t^ - s^||^2, dd/ds = -(2/|s|) (t^ - (t^.s^) s^) = (-0.256, 0.192)."""
    model = DualStudentDistillation(resnet18, students="se").eval()
    s = _pixels([[(3, 4)]]).requires_grad_(True)
    _fed(model, {"teacher": [_pixels([[(1, 0)]])], "se": [s]})
    parts = model.loss({"image": torch.zeros(1, 3, 1, 1)})
    assert float(parts["loss"].detach()) == pytest.approx((1 - 0.6) ** 2 + 0.8**2, abs=ATOL)  # 2 - 2 * 3/5 = 0.8
    parts["loss"].backward()
    torch.testing.assert_close(s.grad.flatten(), torch.tensor([-0.256, 0.192]), rtol=0, atol=ATOL)


# ------------------------------------------------------------------ structure: DF, the two inverted students
def test_df_embedding_and_inverted_students_shapes(resnet18: Teacher) -> None:
    """ResNet18 at 64 px: T and Se tap 64@16², 128@8², 256@4² (shallow to deep); DF fuses Se's three taps into one
    code 512@2² (twice the deepest channels, one more stride 2); Sd decodes it deep to shallow (256@4² first,
    64@16² last) and returns its levels shallow to deep, level for level the teacher's shapes (at 256 px:
    64@64², 128@32², 256@16², DF 512@8²)."""
    model = DualStudentDistillation(resnet18).eval()
    images = torch.randn(2, 3, 64, 64)
    seen: dict[str, object] = {}
    model.embedding.register_forward_hook(lambda m, i, o: seen.update(df_in=i[0], df_out=o))
    order: list[tuple[int, ...]] = []
    for stage in model.decoder.stages:
        stage.register_forward_hook(lambda m, i, o: order.append(tuple(o.shape)))
    with torch.no_grad():
        feats = model.features(images)
    expected = [(2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4)]
    for name in ("teacher", "se", "sd"):
        assert [tuple(f.shape) for f in feats[name]] == expected, name
    assert all(a is b for a, b in zip(seen["df_in"], feats["se"], strict=True))  # DF reads Se, not T
    assert tuple(seen["df_out"].shape) == (2, 512, 2, 2)
    assert order == expected[::-1]


@pytest.mark.parametrize("df_gradient", [True, False])
def test_bidirectional_gradient_and_its_stop_switch(df_gradient: bool, resnet18: Teacher) -> None:
    """Sd's loss reaches Se's parameters through DF (df_gradient=True) or not at all (False); Se's loss never
    reaches DF or Sd; DF's and Sd's gradients do not depend on the switch (same weights, same input)."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = DualStudentDistillation(resnet18, df_gradient=df_gradient).train()
    parts = model.loss({"image": images})
    se_params = list(model.encoder.parameters())
    df_sd_params = [*model.embedding.parameters(), *model.decoder.parameters()]
    grads = torch.autograd.grad(parts["sd"], se_params + df_sd_params, allow_unused=True, retain_graph=True)
    se_grads, df_sd_grads = grads[: len(se_params)], grads[len(se_params) :]
    if df_gradient:
        assert sum(float(g.abs().sum()) for g in se_grads if g is not None) > 0
    else:
        assert all(g is None for g in se_grads)
    assert all(g is not None for g in df_sd_grads)
    from_se = torch.autograd.grad(parts["se"], df_sd_params, allow_unused=True)
    assert all(g is None for g in from_se)
    # same seed, same initial weights: DF's and Sd's gradient of Sd's loss is the same with the switch either way
    torch.manual_seed(0)
    other = DualStudentDistillation(resnet18, df_gradient=not df_gradient).train()
    other_parts = other.loss({"image": images})
    other_params = [*other.embedding.parameters(), *other.decoder.parameters()]
    other_grads = torch.autograd.grad(other_parts["sd"], other_params)
    for a, b in zip(df_sd_grads, other_grads, strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ the anomaly map, by hand
# Input 2x2; level 1 at 2x2 (upsampling is the identity), level 2 at 1x1 (upsampled to a constant).
# Teacher (1,0) everywhere; 1 - cos against (3,4), (0,1), (4,3), (1,0), (-1,0), (-3,4) is 0.4, 1, 0.2, 0, 2, 1.6.
T_MAP = [_pixels([[(1, 0), (1, 0)], [(1, 0), (1, 0)]]), _pixels([[(1, 0)]])]
SE_MAP = [_pixels([[(3, 4), (0, 1)], [(4, 3), (1, 0)]]), _pixels([[(-3, 4)]])]  # [[0.4, 1], [0.2, 0]], 1.6
SD_MAP = [_pixels([[(1, 0), (4, 3)], [(0, 1), (-1, 0)]]), _pixels([[(3, 4)]])]  # [[0, 0.2], [1, 2]], 0.4
SE_LEVEL_FUSED = {"sum": [[2.0, 2.6], [1.8, 1.6]], "product": [[0.64, 1.6], [0.32, 0.0]]}
SD_LEVEL_FUSED = {"sum": [[0.4, 0.6], [1.4, 2.4]], "product": [[0.0, 0.08], [0.4, 0.8]]}
FUSED = {
    ("sum", "mean"): [[1.2, 1.6], [1.6, 2.0]],
    ("sum", "product"): [[0.8, 1.56], [2.52, 3.84]],
    ("product", "mean"): [[0.32, 0.84], [0.36, 0.4]],
    ("product", "product"): [[0.0, 0.128], [0.128, 0.0]],
}


@pytest.mark.parametrize(("scale_fusion", "student_fusion"), list(FUSED))
def test_map_fusion_by_hand(scale_fusion: str, student_fusion: str, resnet18: Teacher) -> None:
    head = AnomalyMapHead(fusion=scale_fusion, sigma=0.0, align_corners=True)
    model = _small(resnet18, student_fusion=student_fusion, anomaly_map=head).eval()
    _fed(model, {"teacher": T_MAP, "se": SE_MAP, "sd": SD_MAP})
    out = model(torch.zeros(1, 3, 2, 2))
    expected = torch.tensor([FUSED[(scale_fusion, student_fusion)]])
    torch.testing.assert_close(out.anomaly_map, expected, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.score, expected.flatten(1).amax(1), rtol=0, atol=ATOL)
    for name, level_fused in (("se", SE_LEVEL_FUSED), ("sd", SD_LEVEL_FUSED)):
        score, anomaly_map = out.auxiliary[name]
        torch.testing.assert_close(anomaly_map, torch.tensor([level_fused[scale_fusion]]), rtol=0, atol=ATOL)
        assert float(score) == pytest.approx(max(max(r) for r in level_fused[scale_fusion]), abs=ATOL)


def test_blur_of_a_constant_map_is_the_constant(resnet18: Teacher) -> None:
    """sigma = 4 with scipy's reflect boundary: a constant fused map stays constant (the kernel sums to 1)."""
    model = _small(resnet18).eval()  # sum over levels, mean over students, sigma 4
    t = [torch.ones(1, 2, 4, 4), torch.ones(1, 2, 2, 2)]
    s = [_pixels([[(0, 1)] * 4] * 4), _pixels([[(-1, 0)] * 2] * 2)]  # 1 - cos = 1 and 2 everywhere
    _fed(model, {"teacher": [torch.cat([x[:, :1], 0 * x[:, 1:]], 1) for x in t], "se": s, "sd": s})
    out = model(torch.zeros(1, 3, 16, 16))
    torch.testing.assert_close(out.anomaly_map, torch.full((1, 16, 16), 3.0), rtol=0, atol=ATOL)


# ------------------------------------------------------------------ the anomaly map, independent numpy/scipy
def _np_cosine_distance(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """[C,H,W] x2 -> [H,W]: 1 - cos over channels."""
    dot = (t * s).sum(0)
    return 1.0 - dot / (np.maximum(np.linalg.norm(t, axis=0), 1e-8) * np.maximum(np.linalg.norm(s, axis=0), 1e-8))


def _np_bilinear_align_corners(m: np.ndarray, size: int) -> np.ndarray:
    """[h,w] -> [size,size], bilinear with the corner pixels aligned (source x = i * (h-1)/(size-1))."""

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        src = np.arange(size) * (n - 1) / (size - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = src - lo
        a0, a1 = np.take(a, lo, axis=axis), np.take(a, hi, axis=axis)
        shape = [1, 1]
        shape[axis] = size
        return a0 * (1 - w).reshape(shape) + a1 * w.reshape(shape)

    return along(along(m, 0), 1)


@pytest.mark.parametrize(("scale_fusion", "student_fusion"), list(FUSED))
def test_blurred_map_against_independent_numpy(scale_fusion: str, student_fusion: str, resnet18: Teacher) -> None:
    """A 2-level toy (4 ch @ 16², 6 ch @ 8², batch 2) at 32 px with sigma 4, against numpy + scipy.ndimage."""
    g = torch.Generator().manual_seed(5)
    feats = {
        name: [torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 6, 8, 8, generator=g)]
        for name in ("teacher", "se", "sd")
    }
    head = AnomalyMapHead(fusion=scale_fusion, sigma=4.0, align_corners=True)
    model = _small(resnet18, student_fusion=student_fusion, anomaly_map=head).eval()
    out = _fed(model, feats)(torch.zeros(2, 3, 32, 32))

    np_feats = {k: [f.double().numpy() for f in v] for k, v in feats.items()}
    for b in range(2):
        students = []
        for name in ("se", "sd"):
            levels = [
                _np_bilinear_align_corners(_np_cosine_distance(t[b], s[b]), 32)
                for t, s in zip(np_feats["teacher"], np_feats[name], strict=True)
            ]
            students.append(levels[0] + levels[1] if scale_fusion == "sum" else levels[0] * levels[1])
        fused = (students[0] + students[1]) / 2 if student_fusion == "mean" else students[0] * students[1]
        expected = gaussian_filter(fused, sigma=4.0)  # mode 'reflect', truncate 4: radius 16
        got = out.anomaly_map[b].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert float(out.score[b]) == pytest.approx(expected.max(), rel=1e-5)
