"""Residual units shared by the one-class bottleneck and the mirrored decoder.

These follow the ResNet bottleneck (1x1 reduce, 3x3, 1x1 expand, identity or projected shortcut) and the
basic block (two 3x3), with one twist used by RD's decoder: ``upsample=True`` replaces the strided 3x3 with a
2x2 transposed convolution of stride 2, in both the main path and the shortcut.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdad.errors import check_choice

BLOCK_KINDS = ("bottleneck", "basic")


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _resample(in_ch: int, out_ch: int, stride: int, upsample: bool, kernel: int) -> nn.Module:
    if upsample and stride == 2:
        return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False)
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


class ResidualUnit(nn.Module):
    """Bottleneck (``kind='bottleneck'``) or basic (``kind='basic'``) residual block, down- or up-sampling."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        width: int,
        stride: int = 1,
        upsample: bool = False,
        kind: str = "bottleneck",
    ) -> None:
        super().__init__()
        if check_choice(kind, BLOCK_KINDS, "residual block kind") == "bottleneck":
            self.body = nn.Sequential(
                nn.Conv2d(in_ch, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                _resample(width, width, stride, upsample, 3),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, out_ch, 1, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.body = nn.Sequential(
                _resample(in_ch, out_ch, stride, upsample, 3),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
                nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            kernel = 2 if upsample and stride == 2 else 1
            self.shortcut = nn.Sequential(_resample(in_ch, out_ch, stride, upsample, kernel), nn.BatchNorm2d(out_ch))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def residual_stage(
    in_ch: int,
    out_ch: int,
    width: int,
    blocks: int,
    stride: int,
    upsample: bool = False,
    kind: str = "bottleneck",
) -> nn.Sequential:
    """A stage: the first unit changes resolution/channels, the rest keep them."""
    units = [ResidualUnit(in_ch, out_ch, width, stride, upsample, kind)]
    units += [ResidualUnit(out_ch, out_ch, width, 1, upsample, kind) for _ in range(blocks - 1)]
    return nn.Sequential(*units)


UPSAMPLE_INITS = ("kaiming", "torch_default")


def kaiming_init(module: nn.Module, upsample_init: str = "kaiming") -> None:
    """He-normal convs (fan_out, ReLU gain), unit BatchNorm: the initialisation of RD's bottleneck and decoder.

    ``upsample_init`` says what the transposed (upsampling) convolutions get. ``kaiming`` (kdad's default): the
    same He-normal as every other conv. ``torch_default``: they are left with PyTorch's own initialisation
    (kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = out channels x 2 x 2),
    which is what RD4AD's decoder ends up with: its init loop tests ``isinstance(m, nn.Conv2d)``, and a
    ``ConvTranspose2d`` is not one. Their std is then about 0.4-0.6x kdad's.
    """
    transposed = check_choice(upsample_init, UPSAMPLE_INITS, "upsample_init") == "kaiming"
    for m in module.modules():
        if isinstance(m, nn.Conv2d) or (transposed and isinstance(m, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
