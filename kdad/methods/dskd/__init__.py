"""DSKD: dual-student knowledge distillation (see README.md beside this file)."""

from kdad.methods.dskd.model import DualStudentDistillation

__all__ = ["DualStudentDistillation"]
