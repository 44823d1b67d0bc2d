"""AAND: anomaly amplification and normality distillation (see README.md beside this file)."""

from kdad.methods.aand.model import AnomalyAmplificationDistillation
from kdad.methods.aand.module import AANDModule, multistep_at_fractions

__all__ = ["AANDModule", "AnomalyAmplificationDistillation", "multistep_at_fractions"]
