"""Speed options of a run (``speed:`` in conf/config.yaml): the networks' memory format, compilation and the
teacher-feature cache.

They change how the networks execute, never what they compute (the cache: within fp32 rounding). ``make bench``
(``bench/``) times every method with each option on and off in the same run; an option is on by default only where
it was measured to win (README, "Performance"); the cache is on wherever it cannot change the results.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def apply_speed(
    module: nn.Module,
    channels_last: bool = False,
    compile: bool = False,
    teacher_cache: str = "auto",
    teacher_cache_memory_gb: float = 4.0,
    teacher_cache_dir: str | None = None,
) -> nn.Module:
    """Apply the speed options to a LightningModule (or any module with a ``model`` network) in place.

    * ``channels_last``: parameters and buffers in NHWC layout. Convolutions pick the layout of their weights, so
      the inputs need no conversion; on GPUs this lets cuDNN use tensor-core kernels without transposes.
    * ``compile``: ``torch.compile`` every network of ``module.model`` (its direct children with parameters:
      teacher, students, decoders) in place. Compiling the children rather than ``forward`` covers the training paths
      too (``loss``, ``optimizer_steps``), and in-place compilation keeps the state-dict keys, so checkpoints
      stay interchangeable with uncompiled runs.
    * ``teacher_cache`` (``auto`` | ``on`` | ``off``), ``teacher_cache_memory_gb``, ``teacher_cache_dir``: the frozen
      teachers' features of the training images computed once and served every epoch where that cannot change the
      results (:mod:`kdad.blocks.feature_cache`); modules without ``configure_teacher_cache`` ignore them.
    """
    if hasattr(module, "configure_teacher_cache"):
        module.configure_teacher_cache(teacher_cache, teacher_cache_memory_gb, teacher_cache_dir)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        networks = getattr(module, "model", module)
        # Networks only: parameter-free parts (the map head) are cheap, and their Python-side caches would
        # cost recompilations.
        children = [(n, c) for n, c in networks.named_children() if any(True for _ in c.parameters())]
        for name, child in children or [("model", networks)]:
            child.compile()
            log.info("speed: compiled %s (%s)", name, type(child).__name__)
    return module
