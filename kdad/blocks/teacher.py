"""Teacher block: any timm backbone with three feature taps, and the encoder student built like it.

``IMAGENET_MEAN`` / ``IMAGENET_STD`` are kdad's one input convention (timm's ImageNet statistics): every data module
normalises with them (``kdad.data.dataset`` imports them from here) and the teacher re-normalises from them when its
weights expect other statistics. The torch-free ``kdad.deploy`` reads them from a model's metadata instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from kdad.blocks.weights import load_weights, resolve_weights
from kdad.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
IMAGENET_STD: tuple[float, float, float] = IMAGENET_DEFAULT_STD


class Teacher(nn.Module):
    """A timm backbone that returns the feature maps of ``out_indices`` (default: the stride 4/8/16 stages).

    Inputs are images normalised with ImageNet mean/std (kdad's single convention for every data module and
    synthesis block). Backbones pretrained with other statistics (TF-style EfficientNet-Lite uses 0.5/0.5) get
    an exact per-channel affine re-normalisation in front, so their features are what their weights expect.

    ``frozen=True`` (every method except RD with Expert's trainable teacher) keeps the network in eval mode
    with no gradients whatever ``.train()`` is called with, so BatchNorm statistics never drift.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        weights: str = "package:efficientnet_lite0",
        out_indices: Sequence[int] = (1, 2, 3),
        frozen: bool = True,
        weights_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        resolved = resolve_weights(backbone, weights, weights_cache_dir)
        self.backbone_name = backbone
        self.weights = weights
        self.body = timm.create_model(
            backbone, features_only=True, out_indices=tuple(out_indices), **resolved.timm_kwargs()
        )
        if resolved.file is not None:
            load_weights(self.body, resolved.file)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        mean, std = self._pretrained_stats(self.body)
        # x_model = (x * std_in + mean_in - mean_model) / std_model, folded into one scale and shift.
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("input_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.renormalise = not (torch.allclose(scale, torch.ones(3)) and torch.allclose(shift, torch.zeros(3)))
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    @staticmethod
    def _pretrained_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))

    def train(self, mode: bool = True) -> Teacher:
        return super().train(mode and not self.frozen)

    #: While a training batch is bound by :class:`kdad.blocks.feature_cache.TeacherCache`: the view that serves that
    #: batch's own ``image`` tensor from the cache (None otherwise: every call computes).
    feature_cache = None

    def __call__(self, images: Tensor, *args, **kwargs) -> list[Tensor]:
        # Outside ``forward``, so a compiled teacher (speed.compile) is looked up without entering its graph.
        view = self.feature_cache
        if view is not None and not args and not kwargs:
            served = view.serve(self, images)
            if served is not None:
                return served
        return super().__call__(images, *args, **kwargs)

    def forward(self, images: Tensor) -> list[Tensor]:
        if self.renormalise:
            images = images * self.input_scale + self.input_shift
        if self.frozen:
            with torch.no_grad():
                return list(self.body(images))
        return list(self.body(images))

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name}, weights={self.weights}, channels={self.channels}, frozen={self.frozen}"


def encoder_student(teacher: Teacher, zero_init_last: bool | None = None) -> nn.Module:
    """A randomly initialised copy of the teacher's timm architecture with the same feature taps.

    STFPM's student (its paper and code: the teacher's ResNet18 with random weights, fed the image) and DSKD's
    encoder student Se. Built by one ``timm.create_model`` call without pretrained weights, so a seeded run draws
    the same initial weights whichever method builds it.

    ``zero_init_last`` (timm's ResNet-family option; None: the architecture's timm default) says whether each
    residual block starts with its last BatchNorm weight at zero (timm's ResNet default: every block starts as the
    identity) or at one. For ResNets, ``False`` is torchvision's initialisation: under the same torch seed the
    student is bit-identical to ``torchvision.models.resnet18()``'s layers 1-3, which is STFPM's released student.
    Architectures without the option (EfficientNet) reject a bool with a ConfigError.
    """
    options = {} if zero_init_last is None else {"zero_init_last": bool(zero_init_last)}
    try:
        return timm.create_model(
            teacher.backbone_name,
            pretrained=False,
            features_only=True,
            out_indices=tuple(teacher.body.feature_info.out_indices),
            **options,
        )
    except TypeError as error:
        if not options or "zero_init_last" not in str(error):
            raise
        raise ConfigError(
            f"zero_init_last={zero_init_last} is a timm ResNet-family option; backbone '{teacher.backbone_name}' "
            "has no such option (leave it null)"
        ) from error
