"""The LightningModule of RD with Expert: several optimisers, and checkpoints that load without the expert."""

from __future__ import annotations

from typing import Any

from kdad.methods.multi_optimizer import MultiOptimizerModule


class RDExpertModule(MultiOptimizerModule):
    """:class:`MultiOptimizerModule` whose checkpoints also load into an inference-only model (``expert=None``)."""

    def on_train_start(self) -> None:
        super().on_train_start()
        self.model.check_start_gap = self.global_step == 0

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        frozen = checkpoint.get("kdad", {}).get("frozen", {})
        for prefix in [p for p in frozen if not self._has_submodule(p[:-1])]:
            del frozen[prefix]  # e.g. the expert: not stored, and not built for inference
        super().on_load_checkpoint(checkpoint)

    def _has_submodule(self, name: str) -> bool:
        try:
            return self.get_submodule(name) is not None
        except AttributeError:
            return False
