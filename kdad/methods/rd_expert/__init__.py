"""RD with Expert (``rd_expert``) and RD++ with Expert (``rdpp_expert``) (see README.md beside this file)."""

from kdad.methods.rd_expert.model import ReverseDistillationExpert
from kdad.methods.rd_expert.module import RDExpertModule

__all__ = ["RDExpertModule", "ReverseDistillationExpert"]
