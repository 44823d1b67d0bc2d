"""RD++'s multi-projection layers and projection loss.

Source: Tien et al., CVPR 2023; code ``tientrandinh/Revisiting-Reverse-Distillation``.

Released code, re-expressed (``utils/utils_train.py``):

* one projection P_k per teacher level: 4 x [conv3x3 pad 1 -> InstanceNorm2d (no affine) -> LeakyReLU(0.01)],
  channels C -> C/2 -> C/4 -> C/2 -> C (convs with bias, PyTorch default init);
* ``L_proj = (L_ssot + 0.01 L_recon + 0.1 L_contrast) / 1.11``, each term summed over the three levels, where
  ``L_recon`` = mean per-pixel 1 - cos(P(E(x_noise)), P(E(x))), ``L_contrast`` = CosineEmbeddingLoss(margin 0.5,
  target -1) between the flattened *raw* noisy features and the flattened projected clean features (per sample
  max(0, cos - 0.5), i.e. the post-paper fix of the released code), and ``L_ssot`` a debiased Sinkhorn
  divergence (geomloss ``SamplesLoss('sinkhorn', p=2, blur=0.05, scaling=0.95, debias=True)`` there).

The SSOT term (``ssot=``):

* ``released``: what the released code computes. It passes softmax(flatten(P_k(E(x)))) as a [B, D] tensor, which
  geomloss reads as ONE cloud of B points, and compares it with the same tensor in shuffled batch order: the same
  uniform measure, so the divergence is ~0 and carries ~no gradient. The published numbers were produced with this
  inert term.
* ``per_sample``: the paper's intent, OT between sample i's and sample pi(i)'s feature distributions. kdad's
  reading: the points of sample i are its pixels' channel vectors, softmax-normalised per pixel (so every point lies
  on the probability simplex and the 0.05 blur is meaningful), subsampled to ``points`` random positions (the same
  positions for the whole batch) to keep the cost O(B * points^2); pi is a random cyclic shift of the batch, so no
  sample is paired with itself. The loss per level is the mean over the batch.

geomloss is not a dependency: :func:`sinkhorn_divergence` is a small log-domain implementation of the same
debiased, epsilon-scaled symmetric Sinkhorn loop (Feydy et al., AISTATS 2019), with the usual "last extrapolation"
(iterations without autograd, one final differentiable update). Its value and gradient agree with geomloss 0.2.6 as
the released code configures it (``tests/test_parity_rd.py``); the gradient was 2x geomloss's until the final update
differentiated each potential through its own cloud only, as geomloss does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdad.errors import check_choice

SSOT_MODES = ("released", "per_sample", "off")


class ProjectionLayer(nn.Module):
    """One RD++ projection P_k: four conv3x3-InstanceNorm-LeakyReLU units, C -> C/2 -> C/4 -> C/2 -> C."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = [channels, max(1, channels // 2), max(1, channels // 4), max(1, channels // 2), channels]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.InstanceNorm2d(c_out), nn.LeakyReLU()]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class MultiProjection(nn.Module):
    """One :class:`ProjectionLayer` per teacher level; shapes are kept."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ProjectionLayer(c) for c in channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [layer(f) for layer, f in zip(self.layers, features, strict=True)]


# ---------------------------------------------------------------- debiased Sinkhorn divergence
def _cost(x: Tensor, y: Tensor, p: int) -> Tensor:
    """Ground cost |x - y|^p / p between the points of [B,N,D] and [B,M,D] (geomloss' convention)."""
    if p == 2:
        sq = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2.0 * x @ y.transpose(-1, -2)
        return sq.clamp_min(0.0) / 2.0
    return torch.cdist(x, y).pow(p) / p


def _softmin(eps: float, cost: Tensor, h: Tensor) -> Tensor:
    """-eps * log sum_j exp(h_j - C_ij / eps), for [B,N,M] costs and [B,M] log-weights: [B,N]."""
    return -eps * torch.logsumexp(h.unsqueeze(-2) - cost / eps, dim=-1)


def epsilon_schedule(diameter: float, blur: float, scaling: float, p: int = 2) -> list[float]:
    """Annealed temperatures diameter^p -> blur^p, multiplied by scaling^p at each step (geomloss' schedule)."""
    start, stop, step = p * math.log(diameter), p * math.log(blur), p * math.log(scaling)
    inner = [math.exp(start + k * step) for k in range(max(0, math.ceil((stop - start) / step)))]
    return [diameter**p, *inner, blur**p]


def sinkhorn_divergence(
    x: Tensor, y: Tensor, blur: float = 0.05, scaling: float = 0.95, p: int = 2, diameter: float | None = None
) -> Tensor:
    """Debiased Sinkhorn divergence between uniform point clouds: S = OT(a,b) - OT(a,a)/2 - OT(b,b)/2.

    Args:
        x: [N, D] or [B, N, D] points (a batch of B independent clouds).
        y: [M, D] or [B, M, D] points.
        blur: final temperature eps = blur^p (geomloss' ``blur``).
        scaling: eps is multiplied by scaling^p per iteration (closer to 1: more iterations, more accurate).
        p: cost exponent, C(x, y) = |x - y|^p / p.
        diameter: start of the schedule; None estimates it from the bounding box of both clouds.

    Returns:
        A scalar for 2-D inputs, a [B] vector for 3-D ones. Gradients flow through the points.
    """
    single = x.dim() == 2
    if single:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    x, y = x.float(), y.float()
    if diameter is None:
        both = torch.cat([x.detach(), y.detach()], dim=1)
        diameter = max(float((both.amax(1) - both.amin(1)).norm(dim=-1).max()), blur)
    schedule = epsilon_schedule(diameter, blur, scaling, p)
    log_a = torch.full(x.shape[:2], -math.log(x.shape[1]), device=x.device)
    log_b = torch.full(y.shape[:2], -math.log(y.shape[1]), device=y.device)

    with torch.no_grad():
        c_xy, c_xx, c_yy = _cost(x, y, p), _cost(x, x, p), _cost(y, y, p)
        c_yx = c_xy.transpose(-1, -2)
        eps = schedule[0]
        f_ba, g_ab = _softmin(eps, c_xy, log_b), _softmin(eps, c_yx, log_a)
        f_aa, g_bb = _softmin(eps, c_xx, log_a), _softmin(eps, c_yy, log_b)
        for eps in schedule:
            # Symmetric updates, averaged with the previous potentials (stabilises the annealing).
            ft_ba = _softmin(eps, c_xy, log_b + g_ab / eps)
            gt_ab = _softmin(eps, c_yx, log_a + f_ba / eps)
            ft_aa = _softmin(eps, c_xx, log_a + f_aa / eps)
            gt_bb = _softmin(eps, c_yy, log_b + g_bb / eps)
            f_ba, g_ab = (f_ba + ft_ba) / 2, (g_ab + gt_ab) / 2
            f_aa, g_bb = (f_aa + ft_aa) / 2, (g_bb + gt_bb) / 2

    # Last extrapolation with autograd: the potentials are constants, the costs carry the gradient. Each potential
    # is differentiated through the points it lives on only (the other cloud detached, as geomloss does): by the
    # envelope theorem dS/dx_i = a_i * grad(f_ba - f_aa)(x_i). Letting the gradient also flow through the second
    # argument (g_ab's x, f_aa's other x) counts every term twice: a gradient 2x the divergence's.
    eps = schedule[-1]
    f_ba, g_ab = (
        _softmin(eps, _cost(x, y.detach(), p), log_b + g_ab / eps),
        _softmin(eps, _cost(y, x.detach(), p), log_a + f_ba / eps),
    )
    f_aa = _softmin(eps, _cost(x, x.detach(), p), log_a + f_aa / eps)
    g_bb = _softmin(eps, _cost(y, y.detach(), p), log_b + g_bb / eps)
    divergence = (log_a.exp() * (f_ba - f_aa)).sum(-1) + (log_b.exp() * (g_ab - g_bb)).sum(-1)
    return divergence[0] if single else divergence


# ---------------------------------------------------------------- the three projection-loss terms
def reconstruction_loss(projected_noisy: Sequence[Tensor], projected_clean: Sequence[Tensor]) -> Tensor:
    """Sum over levels of the mean per-pixel 1 - cos(P(E(x_noise)), P(E(x)))."""
    return sum(
        (1.0 - F.cosine_similarity(n, c, dim=1)).mean() for n, c in zip(projected_noisy, projected_clean, strict=True)
    )


def contrast_loss(raw_noisy: Sequence[Tensor], projected_clean: Sequence[Tensor], margin: float = 0.5) -> Tensor:
    """Sum over levels of the batch mean of max(0, cos(vec(E(x_noise)), vec(P(E(x)))) - margin).

    This is ``CosineEmbeddingLoss(margin)`` with target -1, as in the released code after its two post-paper fixes.
    """
    return sum(
        (F.cosine_similarity(n.flatten(1), c.flatten(1), dim=1) - margin).clamp_min(0.0).mean()
        for n, c in zip(raw_noisy, projected_clean, strict=True)
    )


class ProjectionLoss(nn.Module):
    """RD++'s projection loss; ``forward`` returns its parts and the weighted total under ``"proj"``.

    Args:
        ssot: ``released`` (default: the released semantics, ~0), ``per_sample`` (the paper's intent) or ``off``.
        weights: (ssot, recon, contrast) weights; the total is divided by their sum (RD++: 1, 0.01, 0.1 -> /1.11).
        margin: contrast margin (0.5 in the released code).
        blur, scaling, diameter: Sinkhorn settings (RD++: 0.05, 0.95; RD++ passes diameter=1e7, which only
            lengthens the annealing: kdad estimates it from the data).
        points: pixels per sample in ``per_sample`` mode.
    """

    def __init__(
        self,
        ssot: str = "released",
        weights: Sequence[float] = (1.0, 0.01, 0.1),
        margin: float = 0.5,
        blur: float = 0.05,
        scaling: float = 0.95,
        diameter: float | None = None,
        points: int = 256,
    ) -> None:
        super().__init__()
        check_choice(ssot, SSOT_MODES, "ssot mode")
        if len(weights) != 3 or sum(weights) <= 0:
            raise ValueError(f"weights are (ssot, recon, contrast) with a positive sum, got {list(weights)}")
        self.ssot = ssot
        self.weights = tuple(float(w) for w in weights)
        self.margin = margin
        self.blur, self.scaling, self.diameter = blur, scaling, diameter
        self.points = points

    def ssot_loss(self, projected_clean: Sequence[Tensor]) -> Tensor:
        if self.ssot == "off" or projected_clean[0].shape[0] < 2:
            return projected_clean[0].new_zeros(())
        total = projected_clean[0].new_zeros(())
        batch = projected_clean[0].shape[0]
        for level in projected_clean:
            if self.ssot == "released":
                # One cloud of B points (one per image) against the same cloud in shuffled order.
                cloud = torch.softmax(level.flatten(1), dim=-1)
                shuffled = cloud[torch.randperm(batch, device=cloud.device)]
                total = total + sinkhorn_divergence(cloud, shuffled, self.blur, self.scaling, 2, self.diameter)
            else:
                points = torch.softmax(level.flatten(2).transpose(1, 2), dim=-1)  # [B, HW, C]
                if points.shape[1] > self.points:
                    keep = torch.randperm(points.shape[1], device=points.device)[: self.points]
                    points = points[:, keep]
                shift = int(torch.randint(1, batch, ()).item())
                partner = points.roll(shift, dims=0)
                per_pair = sinkhorn_divergence(points, partner, self.blur, self.scaling, 2, self.diameter)
                total = total + per_pair.mean()
        return total

    def forward(
        self, raw_noisy: Sequence[Tensor], projected_noisy: Sequence[Tensor], projected_clean: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        ssot = self.ssot_loss(projected_clean)
        recon = reconstruction_loss(projected_noisy, projected_clean)
        contrast = contrast_loss(raw_noisy, projected_clean, self.margin)
        w_ssot, w_recon, w_contrast = self.weights
        total = (w_ssot * ssot + w_recon * recon + w_contrast * contrast) / sum(self.weights)
        return {"proj": total, "ssot": ssot, "recon": recon, "contrast": contrast}

    def extra_repr(self) -> str:
        return f"ssot={self.ssot}, weights={self.weights}, margin={self.margin}, blur={self.blur}"
