"""Residual Anomaly Amplification (RAA): AAND's trainable add-on to a frozen teacher (Tang et al., arXiv 2405.02068).

One :class:`ResidualAnomalyAmplification` module per tapped teacher level turns a feature map ``f`` into
``f' = f + g * v``:

* **matching-guided residual gate** ``g`` in [0, 1] per position: a query ``q = MLP_q(f + PE)`` is matched
  against learnable prototypes by cosine similarity with a temperature, ``a = softmax_j(cos(q, K_j) / tau)``,
  and ``g`` is the attention mass on the prototypes that stand for anomalies;
* **attribute-scaling residual generator** ``v = tanh(MLP_g(f)) * f``: per position and channel, a factor in
  [-1, 1] rescales the feature itself, so the residual can only amplify, damp or flip existing attributes.

During stage-I training the gate used in the residual is *replaced* by the synthetic anomaly mask (teacher
forcing; the mask is average-pooled to the level and binarised at ``> 0.3``), while the predicted gate is
trained separately (focal loss); at inference the soft predicted gate is used.

From the released code (``Hui-design/AAND``, ``models/recons_net.py``, ``models/resnet_rar.py``), as recorded
in the project's method notes: MLPs of three 1x1 convs C->h->h->C with ReLU between them and h = min(2C, 1024);
100 prototypes initialised from a standard normal, the first 50 "normal" and the last 50 "abnormal"; tau = 0.2;
a fixed 2-D sinusoidal positional encoding with C channels added to the query input only; tanh factors (the
code also clamps to [-1, 1], a no-op after tanh); pooled-mask threshold 0.3; levels independent (the next
teacher layer consumes the un-amplified feature, which is automatic here because the teacher is run first and
amplified afterwards).

What the released code does beyond the notes (read from ``Hui-design/AAND`` @ 376c4e4 and proven by
``tests/test_parity_aand.py``): the RAA modules are built inside the ResNet constructor, before its
``kaiming_normal_(fan_out, relu)`` loop over every ``nn.Conv2d``, so the MLP weights are He-normal (biases keep
PyTorch's default); the gate is computed as [B, H*W, C] queries against [B, M, C] keys, dot products divided by the
two norms, softmax over the prototypes; the encoding is evaluated in float32. kdad follows all three (``init=
'kaiming'`` by default, :func:`pointwise_mlp`), and computes the gate, the encoding and the residual ``g * (v * f)``
in the released order of operations, so the amplified features are bit-identical to the released ones on the same
machine (stage II's train-mode student amplifies 1-ulp differences of its input ~7000-fold).

kdad decisions: channels left over when C is not divisible by 4 get no encoding (the released code refuses such
C; every tap of kdad's teachers is divisible by 4); prototype counts, tau, the mask threshold and the MLP init
(``'pytorch'``: PyTorch's default) are arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdad.errors import check_choice

MASK_THRESHOLD = 0.3


def sinusoidal_position_encoding(channels: int, height: int, width: int) -> Tensor:
    """Fixed 2-D sinusoidal positional encoding [C, H, W] with values in [-1, 1] (Transformer encoding per axis).

    With ``n = C // 4`` frequencies ``w_i = 10000^(-2i / (2n))``, channels ``2i`` and ``2i + 1`` of the first half
    hold ``sin(w_i x)`` and ``cos(w_i x)`` of the column ``x``, and the same channels of the second half those of
    the row ``y`` (the layout of AAND's ``positionalencoding2d``). Computed in float32 in the released code's order
    of operations, so the encoding is bit-identical to it (a float64 evaluation differs by up to 3e-6 at 64
    positions, which the parity test would see). Channels beyond ``4n`` (C not divisible by 4) are zero.
    """
    pairs = channels // 4
    encoding = torch.zeros(channels, height, width)
    if pairs == 0:
        return encoding
    half = 2 * pairs
    frequencies = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))  # [pairs], float32

    def angles(length: int) -> Tensor:  # [pairs, length]
        return (torch.arange(0.0, length).unsqueeze(1) * frequencies).T

    columns, rows = angles(width)[:, None, :], angles(height)[:, :, None]
    encoding[0:half:2] = columns.sin().expand(-1, height, width)
    encoding[1:half:2] = columns.cos().expand(-1, height, width)
    encoding[half : 2 * half : 2] = rows.sin().expand(-1, height, width)
    encoding[half + 1 : 2 * half : 2] = rows.cos().expand(-1, height, width)
    return encoding


RAA_INITS = ("kaiming", "pytorch")


def pointwise_mlp(channels: int, hidden: int, init: str = "kaiming") -> nn.Sequential:
    """Three 1x1 convolutions C -> hidden -> hidden -> C with ReLU between them (RAA's MLP_q and MLP_g).

    ``init``: 'kaiming' (the released code: the RAA modules are created inside the ResNet constructor, before its
    ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` loop over every ``nn.Conv2d``, so their weights are
    He-normal with std sqrt(2 / out_channels); biases keep PyTorch's default) or 'pytorch' (PyTorch's default conv
    init for weights and biases, what kdad used before; it starts the MLPs ~6-13x smaller per weight).
    """
    check_choice(init, RAA_INITS, "RAA init")
    mlp = nn.Sequential(
        nn.Conv2d(channels, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, channels, 1),
    )
    if init == "kaiming":
        for m in mlp.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return mlp


def level_mask(mask: Tensor, size: Sequence[int], threshold: float = MASK_THRESHOLD) -> Tensor:
    """Pixel mask [B,1,H,W] -> binary float mask at a feature level: adaptive average pooling, then ``> threshold``."""
    return (F.adaptive_avg_pool2d(mask.float(), tuple(size)) > threshold).float()


@dataclass
class Amplified:
    """One level's RAA output: amplified features [B,C,H,W], predicted gate [B,1,H,W] in [0, 1], factors
    [B,C,H,W] in [-1, 1], the gate actually applied (the forced mask or the predicted gate) and the residual
    ``applied_gate * factors * f`` [B,C,H,W] that was added (``features = f + residual``; the released RAR_single
    returns this residual)."""

    features: Tensor
    gate: Tensor
    factors: Tensor
    applied_gate: Tensor
    residual: Tensor


class ResidualAnomalyAmplification(nn.Module):
    """RAA for one feature level with ``channels`` channels (see the module docstring).

    Args:
        channels: feature channels C of the level.
        normal_prototypes, abnormal_prototypes: number of learnable keys of each kind (AAND: 50 + 50).
        temperature: softmax temperature tau of the cosine matching (AAND: 0.2).
        hidden: MLP width; default min(2C, 1024) as AAND.
        init: initialisation of the MLP convs, 'kaiming' (released) or 'pytorch' (see :func:`pointwise_mlp`).
            The prototypes are standard normal either way (as released: the ResNet loop touches convs only).
    """

    def __init__(
        self,
        channels: int,
        normal_prototypes: int = 50,
        abnormal_prototypes: int = 50,
        temperature: float = 0.2,
        hidden: int | None = None,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if normal_prototypes < 1 or abnormal_prototypes < 1:
            raise ValueError("RAA needs at least one normal and one abnormal prototype")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        hidden = hidden or min(2 * channels, 1024)
        self.channels = channels
        self.normal_prototypes = normal_prototypes
        self.temperature = float(temperature)
        self.query = pointwise_mlp(channels, hidden, init)
        self.generator = pointwise_mlp(channels, hidden, init)
        self.prototypes = nn.Parameter(torch.randn(normal_prototypes + abnormal_prototypes, channels))
        self._encodings: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

    def position_encoding(self, height: int, width: int, like: Tensor) -> Tensor:
        key = (height, width, like.device, like.dtype)
        if key not in self._encodings:
            encoding = sinusoidal_position_encoding(self.channels, height, width)
            self._encodings[key] = encoding.to(device=like.device, dtype=like.dtype)
        return self._encodings[key]

    def gate(self, features: Tensor) -> Tensor:
        """Predicted gate [B,1,H,W]: softmax attention mass on the abnormal prototypes.

        Computed in the released code's layout and order of operations: queries as [B, H*W, C] patches against
        the keys expanded to [B, M, C], dot products first and then divided by the two norms (no epsilon), the
        softmax over the last axis. The result is then bit-identical to it on the same machine, which stage II
        needs: its train-mode OCBE and decoder amplify a 1-ulp difference of their input ~7000-fold (measured on
        the parity weights: 6e-8 relative noise on the targets moves the level-1 student output by 4e-4 of its
        RMS), so a gate equal only to float precision would fail the parity test of every stage-II number.
        """
        batch, channels, height, width = features.shape
        query = self.query(features + self.position_encoding(height, width, features))
        query = query.reshape(batch, channels, height * width).permute(0, 2, 1)  # [B, N, C]
        keys = self.prototypes.to(query.dtype).unsqueeze(0).expand(batch, -1, -1)  # [B, M, C]
        dot = torch.einsum("bnc,bmc->bnm", query, keys)
        norms = query.square().sum(-1).sqrt().unsqueeze(-1) * keys.square().sum(-1).sqrt().unsqueeze(1)
        attention = (dot / norms / self.temperature).softmax(dim=-1)
        gate = attention[:, :, self.normal_prototypes :].sum(-1, keepdim=True)  # [B, N, 1]
        return gate.permute(0, 2, 1).reshape(batch, 1, height, width)

    def factors(self, features: Tensor) -> Tensor:
        """Attribute-scaling factors [B,C,H,W] in [-1, 1]."""
        return torch.tanh(self.generator(features))

    def forward(self, features: Tensor, forced_gate: Tensor | None = None) -> Amplified:
        """Amplify one level; a ``forced_gate`` [B,1,H,W] (teacher forcing) replaces the predicted gate in ``g * v``.

        ``f + g * (v * f)`` in this order, as released, for bit-identical outputs (see :meth:`gate`).
        """
        gate = self.gate(features)
        factors = self.factors(features)
        applied = gate if forced_gate is None else forced_gate.to(features.dtype)
        residual = applied * (factors * features)
        return Amplified(features + residual, gate, factors, applied, residual)


class ResidualAnomalyAmplifier(nn.Module):
    """One independent RAA per teacher level; ``forward(features, mask=None) -> list[Amplified]``.

    With a pixel ``mask`` [B,1,H,W] (stage-I training), each level's residual uses ``level_mask(mask) > 0.3``
    instead of its predicted gate (teacher forcing); without one, the soft predicted gate.
    """

    def __init__(
        self,
        channels: Sequence[int],
        normal_prototypes: int = 50,
        abnormal_prototypes: int = 50,
        temperature: float = 0.2,
        mask_threshold: float = MASK_THRESHOLD,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.mask_threshold = float(mask_threshold)
        self.levels = nn.ModuleList(
            ResidualAnomalyAmplification(c, normal_prototypes, abnormal_prototypes, temperature, init=init)
            for c in channels
        )

    def forward(self, features: Sequence[Tensor], mask: Tensor | None = None) -> list[Amplified]:
        if len(features) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} feature levels, got {len(features)}")
        outputs = []
        for raa, f in zip(self.levels, features, strict=True):
            forced = None if mask is None else level_mask(mask, f.shape[-2:], self.mask_threshold)
            outputs.append(raa(f, forced))
        return outputs
