"""The shared LightningModule: training loop glue and the one test path of every method.

A method is a plain ``nn.Module`` with

* ``loss(batch) -> dict`` (key ``"loss"`` plus any parts worth logging), used for training and for the
  normal-only validation loss of the ``val_loss`` checkpoint policy,
* ``forward(images) -> AnomalyOutput`` in eval mode (image scores [B] and anomaly maps [B,H,W]),
* ``trainable_parameters()``.

``AnomalyModule`` wraps it: optimiser/scheduler from partial configs, a finite-loss guard, and the test path
maps -> scores -> metrics (``kdad.metrics``) -> per-image records and overlay samples, computed once here for
every method. Writing files is the job of ``kdad.results``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from kdad.blocks.teacher import IMAGENET_MEAN, IMAGENET_STD
from kdad.metrics import AnomalyMetrics

VALIDATION_MODES = ("none", "loss", "metrics")


@dataclass
class AnomalyOutput:
    """Image scores [B] and anomaly maps [B,H,W]; ``auxiliary`` holds extra (score, map) pairs worth
    evaluating on their own (e.g. AAND's stage-I map, DSKD's single students), reported as ``<name>/<metric>``."""

    score: Tensor
    anomaly_map: Tensor
    auxiliary: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass
class TestRecord:
    image_path: str
    defect_type: str
    label: int
    score: float


@dataclass
class OverlaySample:
    image: np.ndarray  # uint8 HxWx3
    anomaly_map: np.ndarray  # float32 HxW
    mask: np.ndarray | None  # bool HxW
    record: TestRecord


def pseudo_anomalies(batch: dict) -> tuple[Tensor, Tensor]:
    """The batch's synthetic pair (``image_aug`` [B,3,H,W], ``mask_aug`` [B,1,H,W]).

    Batches without synthesis (e.g. the normal-only validation split of ``checkpoint=val_loss``) count as clean
    pairs: the image itself with an empty mask, which is what the synthesis returns when it draws no anomaly.
    """
    if "image_aug" in batch:
        return batch["image_aug"], batch["mask_aug"]
    image = batch["image"]
    return image, image.new_zeros((image.shape[0], 1, *image.shape[-2:]))


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf; raised before the optimiser step so saved checkpoints stay clean."""


class AnomalyModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        name: str = "method",
        validation: str = "none",
        aupro_limit: float = 0.3,
        overlay_count: int = 12,
    ) -> None:
        super().__init__()
        if validation not in VALIDATION_MODES:
            raise ValueError(f"validation must be one of {VALIDATION_MODES}, got '{validation}'")
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.name = name
        self.validation = validation
        self.aupro_limit = aupro_limit
        self.overlay_count = overlay_count
        self.test_metrics: dict[str, float] = {}
        self.test_images_seen = 0
        self.test_records: list[TestRecord] = []
        self.overlay_samples: list[OverlaySample] = []
        self._reset_eval_state()

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.model.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)},
        }

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        parts = self.model.loss(batch)
        self._check_finite(parts)
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in parts.items()}, prog_bar=True, batch_size=batch_size)
        return parts["loss"]

    def _check_finite(self, parts: dict[str, Tensor]) -> None:
        if torch.isfinite(parts["loss"]).all():
            return
        values = {k: float(v.detach().float().mean()) for k, v in parts.items()}
        raise NonFiniteLossError(
            f"{self.name}: non-finite training loss {values} at epoch {self.current_epoch}, global step "
            f"{self.global_step}. No optimiser step was taken; the last checkpoint in the run's checkpoints/ "
            "folder is intact. Lower the learning rate, or try precision=32 if you use mixed precision."
        )

    # ---------------------------------------------------------------- validation (checkpoint policies)
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.validation == "loss":
            parts = self.model.loss(batch)
            # sync_dist: under DDP every process must select the same epoch (a no-op on one device).
            self.log("val/loss", parts["loss"], batch_size=batch["image"].shape[0], prog_bar=True, sync_dist=True)
        elif self.validation == "metrics":
            self._evaluate_batch(batch, keep_samples=False)

    def on_validation_epoch_end(self) -> None:
        if self.validation == "metrics":
            metrics = self._metrics.compute()  # selection uses the main map only
            self.log_dict({f"val/{k}": v for k, v in metrics.items()})
            selection = [metrics[k] for k in ("image_auroc", "pixel_auroc", "pixel_aupro") if k in metrics]
            self.log("val/selection_score", float(np.mean(selection)))
        self._reset_eval_state()

    # ---------------------------------------------------------------- test
    def _reset_eval_state(self) -> None:
        self._metrics = AnomalyMetrics(pixel=True, aupro_limit=self.aupro_limit)
        self._auxiliary_metrics: dict[str, AnomalyMetrics] = {}
        self._all_anomalies_have_masks = True
        self._seen = 0
        self._overlay_indices: set[int] = set()

    def on_test_epoch_start(self) -> None:
        self._reset_eval_state()
        self.test_records = []
        self.overlay_samples = []
        loaders = self.trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        total = len(loader.dataset) if loader is not None else 0
        count = min(self.overlay_count, total)
        if count > 0:
            self._overlay_indices = set(np.linspace(0, total - 1, count).round().astype(int).tolist())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_batch(batch, keep_samples=True)

    def _evaluate_batch(self, batch: dict, keep_samples: bool) -> None:
        output: AnomalyOutput = self.model(batch["image"])
        scores = output.score.float()
        maps = output.anomaly_map.float()
        labels = batch["label"].long()
        masks = batch["mask"][:, 0] > 0.5
        has_mask = batch["has_mask"].bool()
        if bool(((labels == 1) & ~has_mask).any()):
            self._all_anomalies_have_masks = False
        self._metrics.update(scores, labels, maps, masks)
        for name, (aux_score, aux_map) in output.auxiliary.items():
            if name not in self._auxiliary_metrics:
                self._auxiliary_metrics[name] = AnomalyMetrics(pixel=True, aupro_limit=self.aupro_limit)
            self._auxiliary_metrics[name].update(aux_score.float(), labels, aux_map.float(), masks)
        if keep_samples:
            self._keep_samples(batch, scores, maps, masks, has_mask)
        self._seen += labels.shape[0]

    def _keep_samples(self, batch: dict, scores: Tensor, maps: Tensor, masks: Tensor, has_mask: Tensor) -> None:
        for i in range(scores.shape[0]):
            record = TestRecord(
                image_path=str(batch["image_path"][i]),
                defect_type=str(batch["defect_type"][i]),
                label=int(batch["label"][i]),
                score=float(scores[i]),
            )
            self.test_records.append(record)
            if self._seen + i in self._overlay_indices:
                self.overlay_samples.append(
                    OverlaySample(
                        image=denormalise(batch["image"][i]),
                        anomaly_map=maps[i].cpu().numpy(),
                        mask=masks[i].cpu().numpy() if bool(has_mask[i]) else None,
                        record=record,
                    )
                )

    def _compute_all(self) -> dict[str, float]:
        metrics = dict(self._metrics.compute())
        for name, accumulator in self._auxiliary_metrics.items():
            metrics.update({f"{name}/{k}": v for k, v in accumulator.compute().items()})
        return metrics

    def on_test_epoch_end(self) -> None:
        metrics = self._compute_all()
        if not self._all_anomalies_have_masks:
            # Pixel metrics over images without ground truth would count defects as normal pixels.
            metrics = {k: v for k, v in metrics.items() if not k.split("/")[-1].startswith("pixel_")}
        self.test_metrics = {k: float(v) for k, v in metrics.items()}
        # Images the metrics saw: the test set's size when evaluation ran in one process (kdad.run checks it).
        self.test_images_seen = self._metrics.n_images
        loggable = {f"test/{k}": v for k, v in self.test_metrics.items() if math.isfinite(v)}
        if loggable:
            self.log_dict(loggable)

    # ---------------------------------------------------------------- checkpoints
    def _frozen_prefixes(self) -> list[str]:
        return [
            f"model.{name}."
            for name, module in self.model.named_children()
            if getattr(module, "frozen", False) and hasattr(module, "weights")
        ]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Leave frozen pretrained teachers out: they are rebuilt from their weight source, not trained."""
        prefixes = self._frozen_prefixes()
        state = checkpoint["state_dict"]
        for key in [k for k in state if any(k.startswith(p) for p in prefixes)]:
            del state[key]
        checkpoint["kdad"] = {
            "method": self.name,
            "frozen": {
                p: {
                    "backbone": self.get_submodule(p[:-1]).backbone_name,
                    "weights": self.get_submodule(p[:-1]).weights,
                }
                for p in prefixes
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        info = checkpoint.get("kdad", {})
        if info.get("method", self.name) != self.name:
            raise ValueError(f"checkpoint was trained with method '{info['method']}', not '{self.name}'")
        for prefix, spec in info.get("frozen", {}).items():
            module = self.get_submodule(prefix[:-1])
            if module.backbone_name != spec["backbone"]:
                raise ValueError(
                    f"checkpoint expects teacher '{spec['backbone']}' but the config builds '{module.backbone_name}'"
                )
            if module.weights != spec["weights"]:
                rank_zero_warn(
                    f"checkpoint was trained with teacher weights '{spec['weights']}', the config loads "
                    f"'{module.weights}': results are only valid if both hold the same weights."
                )
            # Restore the frozen weights from this module, so the strict load below sees every key.
            for key, value in module.state_dict().items():
                checkpoint["state_dict"].setdefault(f"{prefix}{key}", value)


def denormalise(image: Tensor) -> np.ndarray:
    """ImageNet-normalised [3,H,W] tensor -> uint8 HxWx3 for overlays."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    rgb = (image.float() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
