"""RD: reverse distillation from a one-class embedding (see README.md beside this file)."""

from kdad.methods.rd.model import ReverseDistillation

__all__ = ["ReverseDistillation"]
