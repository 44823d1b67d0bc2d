"""The model contract of every method, and the shared LightningModule with the one test path.

The contract (:class:`AnomalyModel`; every ``kdad/methods/<name>/model.py`` subclasses it):

* ``forward(images) -> AnomalyOutput`` in eval mode, for ImageNet-normalised images [B,3,H,W]: image scores
  ``score`` [B] (higher = more anomalous), anomaly maps ``anomaly_map`` [B,H,W] at the input resolution, and
  optional ``auxiliary`` (score, map) pairs of the same shapes, evaluated on their own as ``<name>/<metric>``.
* ``loss(batch) -> dict[str, Tensor]`` with the scalar ``"loss"`` to minimise plus any parts worth logging. It is
  the training loss and the normal-only validation loss of ``checkpoint=val_loss``. Batches hold ``image``;
  methods trained on pseudo-anomalies read them with :func:`pseudo_anomalies`.
* ``parameter_groups() -> dict[str, list[Parameter]]``: what training updates, by group name, in a fixed order;
  the one declaration of trainable parameters. A frozen teacher is never in a group. :class:`AnomalyModule`
  builds one optimiser with one torch parameter group per named group (``name`` set, so learning-rate monitors
  label them); :class:`~kdad.methods.multi_optimizer.MultiOptimizerModule` one optimiser per named group
  (``method.optimizers.<group>``). ``parameter_options()`` adds per-group optimiser options such as a learning
  rate (DSKD's ``se_lr``); ``trainable_parameters()`` is the flat list, derived.
* Checkpoints: what inference needs is the model's state dict *minus* its frozen pretrained teachers (direct
  children with ``frozen=True`` and a ``weights`` source, i.e. :class:`~kdad.blocks.teacher.Teacher`), which are
  rebuilt from their weight source, plus the ``kdad`` block ``{"method": name, "frozen": {prefix: {"backbone",
  "weights"}}}`` that names the method and each left-out teacher; :class:`AnomalyModule` writes and checks both.
  Everything else a model needs at test time (trained weights, running statistics such as DSKD's normal levels)
  must be a parameter or a persistent buffer.

``AnomalyModule`` wraps a model: optimiser/scheduler from partial configs, a finite-loss guard, and the test path
maps -> scores -> metrics (``kdad.metrics``) -> per-image records and overlay samples, computed once here for
every method. Writing files is the job of ``kdad.runner.results``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from kdad.blocks.feature_cache import TeacherCache, train_dataset_of
from kdad.blocks.teacher import IMAGENET_MEAN, IMAGENET_STD
from kdad.errors import ConfigError, UserError, check_choice
from kdad.metrics import AnomalyMetrics, max_per_unit
from kdad.metrics.thresholds import POLICIES as THRESHOLD_POLICIES
from kdad.metrics.thresholds import NormalScoreCalibrator, Thresholds, manual_threshold
from kdad.records import OverlaySample, TestRecord

VALIDATION_MODES = ("none", "loss", "metrics")
#: Thresholded figures added to ``test_metrics`` (and the printed table); counts stay in ``thresholded_metrics``.
THRESHOLDED_TABLE_KEYS = (
    "image_precision",
    "image_recall",
    "image_fpr",
    "image_f1",
    "pixel_precision",
    "pixel_recall",
    "pixel_f1",
    "pixel_iou",
)
#: Prefix of the per-unit image metrics (data modules' ``test_units``: Real-IAD's multi-view samples).
UNIT_PREFIX = "sample"


@dataclass
class AnomalyOutput:
    """Image scores [B] and anomaly maps [B,H,W]; ``auxiliary`` holds extra (score, map) pairs worth
    evaluating on their own (e.g. AAND's stage-I map, DSKD's single students), reported as ``<name>/<metric>``."""

    score: Tensor
    anomaly_map: Tensor
    auxiliary: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


class AnomalyModel(nn.Module, abc.ABC):
    """A method's networks and losses (see the module docstring for the contract)."""

    @abc.abstractmethod
    def forward(self, images: Tensor) -> AnomalyOutput:
        """Eval mode: scores [B], maps [B,H,W] at the resolution of ``images`` [B,3,H,W], optional auxiliary pairs."""

    @abc.abstractmethod
    def loss(self, batch: dict) -> dict[str, Tensor]:
        """``{"loss": scalar to minimise, **parts to log}`` for one batch."""

    @abc.abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name, in optimiser order; frozen teachers are in no group."""

    def parameter_options(self) -> dict[str, dict[str, Any]]:
        """Optimiser options per group name (e.g. ``{"se": {"lr": 0.01}}``) over the optimiser's defaults."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter, group after group."""
        return [p for group in self.parameter_groups().values() for p in group]


def optimizer_groups(model: AnomalyModel, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Torch parameter groups of ``model``'s named groups (all, or ``names`` in that order), options applied."""
    groups = model.parameter_groups()
    options = model.parameter_options()
    unknown = sorted(set(options) - set(groups))
    if unknown:
        raise ConfigError(f"optimiser options for {unknown}, which are not parameter groups ({sorted(groups)})")
    selected = list(groups) if names is None else list(names)
    return [{"params": groups[name], "name": name, **options.get(name, {})} for name in selected]


def pseudo_anomalies(batch: dict) -> tuple[Tensor, Tensor]:
    """The batch's synthetic pair (``image_aug`` [B,3,H,W], ``mask_aug`` [B,1,H,W]).

    Batches without synthesis (e.g. the normal-only validation split of ``checkpoint=val_loss``) count as clean
    pairs: the image itself with an empty mask, which is what the synthesis returns when it draws no anomaly.
    """
    if "image_aug" in batch:
        return batch["image_aug"], batch["mask_aug"]
    image = batch["image"]
    return image, image.new_zeros((image.shape[0], 1, *image.shape[-2:]))


class NonFiniteLossError(UserError, FloatingPointError):
    """Training produced NaN/inf; raised before the optimiser step so saved checkpoints stay clean."""


class AnomalyModule(L.LightningModule):
    """The LightningModule of every method with one optimiser: ``model`` follows :class:`AnomalyModel`.

    Args:
        model: the method.
        optimizer: partial optimiser, called with ``params=`` the model's parameter groups.
        scheduler: optional partial scheduler, called with ``optimizer=``.
        name: method name, stored in checkpoints and checked when one is loaded.
        validation: what validation computes: ``none``, ``loss`` (checkpoint=val_loss) or ``metrics``.
        aupro_limit: FPR limit of the AU-PRO.
        overlay_count: test images kept for overlays, spread evenly over the test set.
    """

    def __init__(
        self,
        model: AnomalyModel,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        name: str = "method",
        validation: str = "none",
        aupro_limit: float = 0.3,
        overlay_count: int = 12,
    ) -> None:
        super().__init__()
        check_choice(validation, VALIDATION_MODES, "validation")
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
        # Decision thresholds (configure_thresholds; none unless configured), computed by each test.
        self.threshold_policy: str | None = None
        self.threshold_fpr = 0.01
        self.threshold_manual: tuple[float | None, float | None] = (None, None)
        self.thresholds: Thresholds | None = None
        self.thresholded_metrics: dict[str, float | int] = {}
        self._calibration: NormalScoreCalibrator | AnomalyMetrics | None = None
        self._calibration_masks_complete = True
        # Tests of several categories (batches carrying ``category``; unified training): per category.
        self.category_metrics: dict[str, dict[str, float]] = {}
        self.category_thresholds: dict[str, Thresholds] = {}
        self.category_thresholded: dict[str, dict[str, float | int]] = {}
        self._category_calibration: dict[str, NormalScoreCalibrator | AnomalyMetrics] = {}
        self._test_units: dict[str, str] = {}
        # Frozen teachers' features of the training images computed once (speed.teacher_cache, blocks.feature_cache).
        self.teacher_cache = TeacherCache()
        self._reset_eval_state()

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=optimizer_groups(self.model))
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

    # ---------------------------------------------------------------- teacher-feature cache (training only)
    def configure_teacher_cache(self, mode: str = "auto", memory_gb: float = 4.0, directory: str | None = None) -> None:
        """``speed.teacher_cache*``: see :class:`~kdad.blocks.feature_cache.TeacherCache` (default ``auto``)."""
        self.teacher_cache = TeacherCache(mode, memory_gb, directory)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        cache = self.teacher_cache
        if not cache.decided:
            dataset, size = train_dataset_of(self.trainer)
            cache.decide(self.model, batch, dataset, size, self.trainer.default_root_dir)
        cache.bind(batch)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.teacher_cache.unbind()

    def on_fit_end(self) -> None:
        self.teacher_cache.unbind()
        self.teacher_cache.reset()

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self.teacher_cache.unbind()
            self.teacher_cache.reset()

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
    # One Evaluation per evaluated set: the whole test set, or with batches that carry ``category`` (unified training
    # over several categories, kdad.data.unified) one per category, each with its own metrics and thresholds.
    @property
    def _metrics(self) -> AnomalyMetrics:
        """The main map's accumulator over every image evaluated (validation selection, single-category tests)."""
        return self._evaluation.metrics

    @property
    def _all_anomalies_have_masks(self) -> bool:
        return self._evaluation.masks_complete

    def _reset_eval_state(self) -> None:
        self._evaluation = Evaluation(self.aupro_limit)
        self._category_evaluations: dict[str, Evaluation] = {}
        # The data module's defect groups {group: defect types}, evaluated apart at test time only.
        self._defect_groups: dict[str, tuple[str, ...]] = {}
        self._seen = 0
        self._overlay_indices: set[int] = set()

    def on_test_epoch_start(self) -> None:
        self._reset_eval_state()
        self.test_records = []
        self.overlay_samples = []
        self.category_metrics = {}
        # What the benchmark asks to evaluate besides the whole test set (kdad.data.AnomalyDataModule): groups of
        # defect types with the normal images (MVTec LOCO AD), and units of several images (Real-IAD's samples).
        datamodule = getattr(self.trainer, "datamodule", None)
        self._defect_groups = {k: tuple(v) for k, v in (getattr(datamodule, "defect_groups", None) or {}).items()}
        self._evaluation = Evaluation(self.aupro_limit, self._defect_groups)
        self._test_units = dict(datamodule.test_units()) if hasattr(datamodule, "test_units") else {}
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
        output = AnomalyOutput(
            output.score.float(),
            output.anomaly_map.float(),
            {name: (s.float(), m.float()) for name, (s, m) in output.auxiliary.items()},
        )
        labels, masks, has_mask = ground_truth(batch)
        categories = batch.get("category")
        if keep_samples and categories is not None:
            # A test of several categories: each evaluated on its own (validation selects on all images pooled).
            for category, members in category_members(categories, labels.device).items():
                if category not in self._category_evaluations:
                    self._category_evaluations[category] = Evaluation(self.aupro_limit, self._defect_groups)
                self._category_evaluations[category].update(
                    select(output, members),
                    labels[members],
                    masks[members],
                    has_mask[members],
                    [batch["defect_type"][i] for i in members.tolist()],
                )
        else:
            self._evaluation.update(output, labels, masks, has_mask, batch.get("defect_type"))
        if keep_samples:
            self._keep_samples(batch, output.score, output.anomaly_map, masks, has_mask)
        self._seen += labels.shape[0]

    def _keep_samples(self, batch: dict, scores: Tensor, maps: Tensor, masks: Tensor, has_mask: Tensor) -> None:
        categories = batch.get("category")
        for i in range(scores.shape[0]):
            record = TestRecord(
                image_path=str(batch["image_path"][i]),
                defect_type=str(batch["defect_type"][i]),
                label=int(batch["label"][i]),
                score=float(scores[i]),
                category=None if categories is None else str(categories[i]),
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
        return self._evaluation.compute(self.test_records, self._test_units)

    @property
    def unified(self) -> bool:
        """True after a test whose images carried their category (several categories, one model)."""
        return bool(self._category_evaluations)

    def on_test_epoch_end(self) -> None:
        if self.unified:
            self.category_metrics = {
                category: self._category_evaluations[category].compute(
                    [r for r in self.test_records if r.category == category], self._test_units
                )
                for category in sorted(self._category_evaluations)
            }
            self.test_images_seen = sum(e.metrics.n_images for e in self._category_evaluations.values())
        else:
            self.test_metrics = self._compute_all()
            # Images the metrics saw: the test set's size when evaluation ran in one process (kdad.run checks it).
            self.test_images_seen = self._metrics.n_images
        if self.threshold_policy is not None:
            self._apply_thresholds()
        if self.unified:
            self.test_metrics = unified_metrics(self.category_metrics)
        loggable = {f"test/{k}": v for k, v in self.test_metrics.items() if math.isfinite(v)}
        if loggable:
            self.log_dict(loggable)

    # ---------------------------------------------------------------- decision thresholds
    def configure_thresholds(
        self, policy: str, fpr: float = 0.01, image: float | None = None, pixel: float | None = None
    ) -> None:
        """Have every test compute decision thresholds (NOK iff ``score > threshold``) with ``policy``.

        anomalib's default is the adaptive F1 threshold, F1-optimal on its validation set, which for MVTec is
        the test set: that needs defect images and, on the test set, leaks the test labels into the figures.
        kdad's default ``normal_quantile`` needs neither: the threshold is the score quantile with false-positive
        rate ``fpr`` on normal images the model never trained on (``datamodule.calibration_dataloader()``),
        which is what a deployment can do. ``f1_val`` fits the F1-optimal threshold on a labelled folder the
        user provides (anomalib's scheme on real validation data), ``f1_test`` on the test set (benchmark tables
        only, recorded as optimistic), ``manual`` takes ``image`` (required) and ``pixel`` as given. The
        calibration runs at test start with the tested weights. A test of several categories (unified training)
        gets one set of thresholds per category, each calibrated on that category's images only
        (``category_thresholds``).
        """
        check_choice(policy, THRESHOLD_POLICIES, "threshold.policy")
        if policy == "manual" and image is None:
            raise ConfigError("threshold.policy=manual needs threshold.image (and optionally threshold.pixel)")
        self.threshold_policy = policy
        self.threshold_fpr = float(fpr)
        self.threshold_manual = (
            None if image is None else float(image),
            None if pixel is None else float(pixel),
        )

    def on_test_start(self) -> None:
        self.thresholds = None
        self.thresholded_metrics = {}
        self.category_thresholds = {}
        self.category_thresholded = {}
        self._calibration = None
        self._category_calibration = {}
        if self.threshold_policy not in ("normal_quantile", "f1_val"):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        loader = datamodule.calibration_dataloader() if hasattr(datamodule, "calibration_dataloader") else None
        if loader is None:
            hint = "threshold.holdout > 0" if self.threshold_policy == "normal_quantile" else "threshold.val_dir"
            raise ConfigError(
                f"threshold.policy={self.threshold_policy} found no calibration images: set {hint} "
                "(the data module's calibration split), or use threshold=manual / f1_test"
            )
        self._calibrate(loader)

    def _new_calibration(self) -> NormalScoreCalibrator | AnomalyMetrics:
        if self.threshold_policy == "normal_quantile":
            return NormalScoreCalibrator(pixel=True)
        return AnomalyMetrics(pixel=True, aupro_limit=self.aupro_limit)

    def _calibrate(self, loader: Iterable[dict]) -> None:
        """Run the tested weights over the calibration images and keep what the thresholds need (per category when
        the batches carry one)."""
        quantile = self.threshold_policy == "normal_quantile"
        calibration = self._new_calibration()
        self._calibration_masks_complete = True
        self._category_calibration = {}
        with torch.no_grad(), self.trainer.strategy.precision_plugin.forward_context():
            for batch in loader:
                output: AnomalyOutput = self.model(batch["image"].to(self.device))
                scores, maps = output.score.float(), output.anomaly_map.float()
                labels, masks, has_mask = ground_truth(batch)
                if quantile and bool((labels != 0).any()):
                    raise ValueError("normal_quantile calibration images must all be normal (label 0)")
                if not quantile and not anomalies_have_masks(labels, has_mask):
                    self._calibration_masks_complete = False
                parts = {None: None} if "category" not in batch else category_members(batch["category"], scores.device)
                for category, members in parts.items():
                    if category is None:
                        target = calibration
                    else:
                        target = self._category_calibration.setdefault(category, self._new_calibration())
                    s, m = (scores, maps) if members is None else (scores[members], maps[members])
                    if quantile:
                        target.update(s, m)
                        continue
                    index = slice(None) if members is None else members.cpu()
                    target.update(s, labels[index].to(s.device), m, masks[index].to(m.device))
        self._calibration = calibration

    def _compute_thresholds(self, category: str | None = None) -> Thresholds:
        """The thresholds of the configured policy: of the whole test set, or of one ``category``."""
        policy = self.threshold_policy
        evaluation = self._evaluation if category is None else self._category_evaluations[category]
        if policy in ("normal_quantile", "f1_val"):
            calibration = self._calibration if category is None else self._category_calibration.get(category)
            if calibration is None:
                raise ConfigError(
                    f"threshold.policy={policy}: category '{category}' has no calibration images, so its thresholds "
                    "cannot be calibrated (every category needs its own; see docs/thresholds.md)"
                )
            if policy == "normal_quantile":
                assert isinstance(calibration, NormalScoreCalibrator)
                return calibration.compute(self.threshold_fpr)
            assert isinstance(calibration, AnomalyMetrics)
            found = calibration.f1_thresholds("f1_val")
            return found if self._calibration_masks_complete else Thresholds(found.image)
        if policy == "f1_test":
            found = evaluation.metrics.f1_thresholds("f1_test")
            return found if evaluation.masks_complete else Thresholds(found.image)
        image, pixel = self.threshold_manual
        assert image is not None
        # The display range (normalised scores) of a manual threshold is the test scores' range.
        scores = [r.score for r in self.test_records if category is None or r.category == category]
        low, high = (min(scores), max(scores)) if scores else (None, None)
        return Thresholds(
            manual_threshold(image, "image", score_min=low, score_max=high),
            None if pixel is None else manual_threshold(pixel, "pixel"),
        )

    def _thresholded(self, thresholds: Thresholds, evaluation: Evaluation) -> dict[str, float | int]:
        pixel = thresholds.pixel
        use_pixel = pixel is not None and evaluation.masks_complete
        return dict(evaluation.metrics.thresholded(thresholds.image.value, pixel.value if use_pixel else None))

    def _apply_thresholds(self) -> None:
        """Thresholds of the configured policy, and the test set's figures at them: the full set (rates,
        counts, thresholds) in ``thresholded_metrics``, the rates also in ``test_metrics``. A test of several
        categories: per category (``category_thresholds``, ``category_thresholded``, ``category_metrics``)."""
        if self.unified:
            for category, evaluation in sorted(self._category_evaluations.items()):
                thresholds = self._compute_thresholds(category)
                figures = self._thresholded(thresholds, evaluation)
                self.category_thresholds[category] = thresholds
                self.category_thresholded[category] = figures
                self.category_metrics[category].update(
                    {k: float(figures[k]) for k in THRESHOLDED_TABLE_KEYS if k in figures}
                )
            return
        self.thresholds = self._compute_thresholds()
        figures = self._thresholded(self.thresholds, self._evaluation)
        self.thresholded_metrics = figures
        self.test_metrics.update({k: float(figures[k]) for k in THRESHOLDED_TABLE_KEYS if k in figures})

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
        thresholds = getattr(self, "thresholds", None)
        if thresholds is not None:
            checkpoint["kdad"]["threshold_policy"] = self.threshold_policy
            checkpoint["kdad"]["thresholds"] = thresholds.to_dict()
        by_category = getattr(self, "category_thresholds", None)
        if by_category:
            checkpoint["kdad"]["threshold_policy"] = self.threshold_policy
            checkpoint["kdad"]["category_thresholds"] = {c: t.to_dict() for c, t in by_category.items()}

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


class Evaluation:
    """The test-time accumulators of one evaluated set of images (the whole test set, or one category of a unified
    test): the main map's metrics, each auxiliary map's, each defect group's, and whether every anomalous image has
    its mask (pixel metrics are dropped otherwise: they would count defects as normal pixels)."""

    def __init__(self, aupro_limit: float, groups: dict[str, tuple[str, ...]] | None = None) -> None:
        self.aupro_limit = aupro_limit
        self.metrics = AnomalyMetrics(pixel=True, aupro_limit=aupro_limit)
        self.auxiliary: dict[str, AnomalyMetrics] = {}
        self.groups = {
            name: (frozenset(types), AnomalyMetrics(pixel=True, aupro_limit=aupro_limit))
            for name, types in (groups or {}).items()
        }
        self.masks_complete = True

    def update(
        self,
        output: AnomalyOutput,
        labels: Tensor,
        masks: Tensor,
        has_mask: Tensor,
        defect_types: Iterable[str] | None = None,
    ) -> None:
        scores, maps = output.score, output.anomaly_map
        if not anomalies_have_masks(labels, has_mask):
            self.masks_complete = False
        self.metrics.update(scores, labels, maps, masks)
        for name, (aux_score, aux_map) in output.auxiliary.items():
            if name not in self.auxiliary:
                self.auxiliary[name] = AnomalyMetrics(pixel=True, aupro_limit=self.aupro_limit)
            self.auxiliary[name].update(aux_score, labels, aux_map, masks)
        if self.groups and defect_types is not None:
            defect_types = list(defect_types)
            for types, accumulator in self.groups.values():
                members = group_members(labels, defect_types, types)
                if members.numel():
                    accumulator.update(scores[members], labels[members], maps[members], masks[members])

    def compute(self, records: Iterable[TestRecord] = (), units: dict[str, str] | None = None) -> dict[str, float]:
        """Every metric (auxiliary maps as ``<name>/<metric>``, groups as ``<group>/<metric>``, units as
        ``sample/<metric>`` over ``records``); pixel metrics only when every anomalous image had its mask."""
        metrics = dict(self.metrics.compute())
        for name, accumulator in self.auxiliary.items():
            metrics.update({f"{name}/{k}": v for k, v in accumulator.compute().items()})
        for name, (_, accumulator) in self.groups.items():
            metrics.update({f"{name}/{k}": v for k, v in accumulator.compute().items()})
        records = list(records)
        if units and records:
            metrics.update(unit_metrics(records, units))
        if not self.masks_complete:
            metrics = {k: v for k, v in metrics.items() if not k.split("/")[-1].startswith("pixel_")}
        return {k: float(v) for k, v in metrics.items()}


def category_members(categories: Iterable[str], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """``{category: indices of the batch's images of that category}``, in order of first appearance."""
    found: dict[str, list[int]] = {}
    for index, category in enumerate(categories):
        found.setdefault(str(category), []).append(index)
    return {c: torch.tensor(i, dtype=torch.long, device=device) for c, i in found.items()}


def select(output: AnomalyOutput, index: Tensor) -> AnomalyOutput:
    """The images ``index`` of an output (main and auxiliary pairs)."""
    index = index.to(output.score.device)
    return AnomalyOutput(
        output.score[index],
        output.anomaly_map[index],
        {name: (s[index], m[index]) for name, (s, m) in output.auxiliary.items()},
    )


def unified_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """A unified test's ``test_metrics``: the mean over categories of every metric all categories have (a category
    without a value, NaN, makes the mean NaN: a mean over some categories would not compare), then each category's
    metrics as ``<category>/<metric>``."""
    categories = list(per_category)
    shared = [k for k in per_category[categories[0]] if all(k in per_category[c] for c in categories[1:])]
    out = {k: float(np.mean([per_category[c][k] for c in categories])) for k in shared}
    for category in categories:
        out.update({f"{category}/{k}": v for k, v in per_category[category].items()})
    return out


def ground_truth(batch: dict) -> tuple[Tensor, Tensor, Tensor]:
    """A batch's image labels [B] (long), binary masks [B,H,W] (bool) and which images have a mask [B] (bool)."""
    return batch["label"].long(), batch["mask"][:, 0] > 0.5, batch["has_mask"].bool()


def group_members(labels: Tensor, defect_types: Iterable[str], types: frozenset[str]) -> Tensor:
    """Indices of a batch's images in a defect group: every normal image, and the anomalous ones of ``types``."""
    keep = [i for i, defect in enumerate(defect_types) if int(labels[i]) == 0 or defect in types]
    return torch.tensor(keep, dtype=torch.long, device=labels.device)


def unit_metrics(records: Iterable[TestRecord], units: dict[str, str]) -> dict[str, float]:
    """Image metrics per unit (``sample/<metric>``): a unit scores the maximum of its images' scores and is anomalous
    when any of its images is (:func:`kdad.metrics.max_per_unit`); an image without a unit is a unit of its own."""
    records = list(records)
    scores, labels = max_per_unit(
        [r.score for r in records], [r.label for r in records], [units.get(r.image_path, r.image_path) for r in records]
    )
    accumulator = AnomalyMetrics(pixel=False)
    accumulator.update(scores, labels)
    return {f"{UNIT_PREFIX}/{k}": v for k, v in accumulator.compute().items()}


def anomalies_have_masks(labels: Tensor, has_mask: Tensor) -> bool:
    """False when an anomalous image has no mask: pixel metrics would then count its defect as normal pixels."""
    return not bool(((labels == 1) & ~has_mask).any())


def denormalise(image: Tensor) -> np.ndarray:
    """ImageNet-normalised [3,H,W] tensor -> uint8 HxWx3 for overlays."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    rgb = (image.float() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
