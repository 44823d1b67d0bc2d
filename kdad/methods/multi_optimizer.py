"""Manual optimisation for methods with several optimisers (RD++, RD with Expert).

Lightning 2 supports several optimisers only with manual optimisation. :class:`MultiOptimizerModule` is the
:class:`~kdad.methods.base.AnomalyModule` for such methods: the model yields :class:`OptimizerStep` objects from
``optimizer_steps(batch)`` (a generator); for each, the module back-propagates its loss and steps the optimisers it
names, then resumes the generator, so a model can recompute features after an update (RD with Expert's per-iteration
order: teacher step, then student step on the updated teacher). Everything else (test path, checkpoints, finite-loss
guard) is the shared module's.

kdad decisions:

* ``trainer.max_steps`` counts training *iterations*, not ``optimizer.step()`` calls: Lightning would count each
  optimiser's step, so two optimisers would halve a 5000-iteration schedule. The first step of each update goes
  through Lightning's counter, the others straight through the strategy (same precision handling, no count).
* ``accumulate_grad_batches``: gradients of that many batches are summed (not averaged) before the optimisers step
  and are zeroed after it, as RD++'s fixed loop does; leftover gradients carry into the next epoch as there.
* ``selection_metrics``: when validation computes test metrics (``checkpoint=best_on_test``), also log
  ``val/method_selection`` = their mean, so a preset can select epochs by the reference's own rule.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from kdad.methods.base import AnomalyModel, AnomalyModule, optimizer_groups


@dataclass
class OptimizerStep:
    """One backward pass: ``loss`` is back-propagated, then ``optimizers`` (names) step; ``logs`` are logged."""

    optimizers: tuple[str, ...]
    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class MultiOptimizerModel(AnomalyModel):
    """An :class:`~kdad.methods.base.AnomalyModel` trained by one optimiser per parameter group."""

    @abc.abstractmethod
    def optimizer_steps(self, batch: dict) -> Iterator[OptimizerStep]:
        """Yield the iteration's backward passes in order; the module steps each one's optimisers in between."""


def _no_closure() -> None:
    return None


class MultiOptimizerModule(AnomalyModule):
    """AnomalyModule with one optimiser per parameter group of the model, stepped stage by stage.

    Args:
        model: a :class:`MultiOptimizerModel`.
        optimizers: group name -> partial optimiser (``_partial_`` config), one per parameter group.
        accumulate_grad_batches: step every this many batches (gradients summed in between).
        selection_metrics: metric names averaged into ``val/method_selection`` during metric validation.
        **kwargs: the remaining :class:`AnomalyModule` arguments.
    """

    def __init__(
        self,
        model: MultiOptimizerModel,
        optimizers: Mapping[str, Callable[..., torch.optim.Optimizer]],
        accumulate_grad_batches: int = 1,
        selection_metrics: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, optimizer=None, **kwargs)
        if self.scheduler_factory is not None:
            raise ValueError(f"{self.name}: learning-rate schedulers are not supported with several optimisers")
        if accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be >= 1, got {accumulate_grad_batches}")
        groups = set(model.parameter_groups())
        if set(optimizers) != groups:
            raise ValueError(
                f"{self.name}: optimizers {sorted(optimizers)} must match parameter groups {sorted(groups)}"
            )
        self.automatic_optimization = False
        self.optimizer_names = list(optimizers)
        self.optimizer_factories = dict(optimizers)
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.selection_metrics = list(selection_metrics or [])

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            self.optimizer_factories[name](params=optimizer_groups(self.model, [name])) for name in self.optimizer_names
        ]

    def _named_optimizers(self) -> dict[str, LightningOptimizer]:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return dict(zip(self.optimizer_names, optimizers, strict=True))

    def _step(self, optimizer: LightningOptimizer, counted: bool) -> None:
        if counted:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=_no_closure, model=self)
        optimizer.optimizer.zero_grad(set_to_none=True)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        optimizers = self._named_optimizers()
        update = (batch_idx + 1) % self.accumulate_grad_batches == 0
        counted = False
        logs: dict[str, Tensor] = {}
        total = None
        for stage in self.model.optimizer_steps(batch):
            self._check_finite({"loss": stage.loss, **stage.logs})
            self.manual_backward(stage.loss)
            if update:
                for name in stage.optimizers:
                    self._step(optimizers[name], counted=not counted)
                    counted = True
            logs.update({k: v.detach() for k, v in stage.logs.items()})
            total = stage.loss.detach() if total is None else total + stage.loss.detach()
        assert total is not None, f"{self.name}: optimizer_steps yielded nothing"
        logs["loss"] = total
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=True, batch_size=batch["image"].shape[0])
        return total

    def on_validation_epoch_end(self) -> None:
        if self.validation == "metrics" and self.selection_metrics:
            metrics = self._metrics.compute()
            missing = [k for k in self.selection_metrics if k not in metrics]
            if missing:
                raise KeyError(f"selection_metrics {missing} are not computed; available: {sorted(metrics)}")
            self.log("val/method_selection", float(np.mean([metrics[k] for k in self.selection_metrics])))
        super().on_validation_epoch_end()
