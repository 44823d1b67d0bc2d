"""RD++: RD with multi-projection layers and the projection loss (see README.md beside this file)."""

from kdad.methods.rdpp.model import ReverseDistillationPP

__all__ = ["ReverseDistillationPP"]
