"""RD++: Revisiting Reverse Distillation (Tien et al., CVPR 2023; ``tientrandinh/Revisiting-Reverse-Distillation``).

RD plus a trainable multi-projection layer P on the frozen teacher's features and simplex-noise pseudo-anomalies
(``conf/synthesis/simplex.yaml``: every training image comes with a noisy copy, batch key ``image_aug``):

* data flow: OCBE and decoder consume P(E(x)); the distillation target stays the raw E(x), so the distillation
  loss is exactly RD's (global cosine) and so is the anomaly map (raw E(x) vs the decoder);
* loss: ``L = L_distill + 0.2 * L_proj`` with RD++'s projection loss (:class:`~kdad.blocks.projection.ProjectionLoss`:
  SSOT + 0.01 reconstruction + 0.1 contrast, / 1.11). The released SSOT term is inert; ``ssot: per_sample`` is the
  paper's intent (see the block's docstring);
* two Adam optimisers, betas (0.5, 0.999): projection lr 0.001, OCBE + decoder lr 0.005; gradients of 2 batches are
  summed before each step (the released loop after its Dec 2023 fix). Both live in ``conf/method/rdpp.yaml`` and run
  through :class:`~kdad.methods.multi_optimizer.MultiOptimizerModule`.

Everything else (OCBE, decoder, map head) is RD's, reused from :class:`~kdad.methods.rd.model.ReverseDistillation`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from kdad.blocks.losses import distillation_loss
from kdad.blocks.projection import MultiProjection, ProjectionLoss
from kdad.blocks.teacher import Teacher
from kdad.methods.base import pseudo_anomalies
from kdad.methods.multi_optimizer import MultiOptimizerModel, OptimizerStep
from kdad.methods.rd.model import ReverseDistillation


class ReverseDistillationPP(ReverseDistillation, MultiOptimizerModel):
    """RD with RD++'s projection layers and projection loss.

    Paper: SSOT is optimal transport between the projected feature distributions of two samples of the batch.
    Released code: its SSOT feeds geomloss [B, D] tensors (one cloud of B points against its permutation), so the
    term is identically 0; OCBE and decoder are RD4AD's, initialised as there (transposed convs left at PyTorch's
    default); the projection convs keep PyTorch's default init.
    kdad: the released SSOT by default (``projection_loss.ssot='released'``; ``per_sample`` is the paper's intent);
    He-normal transposed convs (``upsample_init='kaiming'``; ``'torch_default'`` is the released init). With the
    released settings every tensor of a forward pass and one training step agrees with the released code at 1e-5
    (``tests/test_parity_rd.py``; the README's "Parity with the released code" lists what and how).

    Args:
        teacher: the frozen teacher E.
        projection_loss: RD++'s projection loss (SSOT mode and weights live there).
        projection_weight: weight of L_proj in the total loss (RD++: 0.2).
        bottleneck_blocks, decoder_blocks, block, loss, anomaly_map, upsample_init: as
            :class:`ReverseDistillation` (OCBE/decoder sizes, distillation distance, map head, transposed-conv init).
    """

    def __init__(
        self,
        teacher: Teacher,
        projection_loss: ProjectionLoss | None = None,
        projection_weight: float = 0.2,
        bottleneck_blocks: int = 3,
        decoder_blocks: Sequence[int] = (3, 4, 6),
        block: str = "bottleneck",
        loss: str = "global_cosine",
        anomaly_map: nn.Module | None = None,
        upsample_init: str = "kaiming",
    ) -> None:
        super().__init__(teacher, bottleneck_blocks, decoder_blocks, block, loss, anomaly_map, upsample_init)
        self.projection = MultiProjection(teacher.channels)
        self.projection_loss = projection_loss or ProjectionLoss()
        self.projection_weight = projection_weight

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The projection layers, then RD's student (OCBE + decoder): one optimiser each."""
        return {"projection": list(self.projection.parameters()), **super().parameter_groups()}

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        teacher = self.teacher(images)
        return teacher, self.decoder(self.bottleneck(self.projection(teacher)))

    def loss(self, batch: dict) -> dict[str, Tensor]:
        clean = batch["image"]
        noisy, _ = pseudo_anomalies(batch)
        teacher = self.teacher(clean)
        teacher_noisy = self.teacher(noisy)
        projected = self.projection(teacher)
        projected_noisy = self.projection(teacher_noisy)
        student = self.decoder(self.bottleneck(projected))
        distill = distillation_loss(self.loss_name, teacher, student)
        parts = self.projection_loss(teacher_noisy, projected_noisy, projected)
        total = distill + self.projection_weight * parts["proj"]
        return {"loss": total, "distill": distill, **parts}

    def optimizer_steps(self, batch: dict) -> Iterator[OptimizerStep]:
        parts = self.loss(batch)
        yield OptimizerStep(("projection", "student"), parts.pop("loss"), parts)
