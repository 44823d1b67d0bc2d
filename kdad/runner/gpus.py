"""One GPU per job: ``hydra/launcher=gpus`` runs a sweep's jobs in parallel on one machine, each on a free GPU.

:func:`job_gpu` leases a GPU for the job under a file lock (:func:`gpu_lease`), so jobs never share a device
whatever the order in which they finish.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from kdad.runner.sweep import SweepError

log = logging.getLogger("kdad")

# Set by hydra/launcher=gpus (hydra.job.env_set): each job leases one GPU of the machine for itself.
GPU_PER_JOB_ENV = "KDAD_GPU_PER_JOB"


def visible_gpus() -> int:
    """CUDA devices this process may use (honours CUDA_VISIBLE_DEVICES); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# conf/hydra/launcher/gpus.yaml: n_jobs = the visible GPUs (at least one job at a time).
OmegaConf.register_new_resolver("kdad.gpus", lambda: max(1, visible_gpus()), replace=True)


@contextmanager
def gpu_lease(
    lock_dir: Path, count: int, first: int = 0, poll_seconds: float = 5.0, timeout: float | None = None
) -> Iterator[int]:
    """Hold an exclusive lock on one of ``count`` GPUs (files in ``lock_dir``), trying ``first`` first; waits
    while all are taken. Locks die with their process, so a killed job never blocks a GPU."""
    import fcntl

    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    order = [(first + i) % count for i in range(count)]
    while True:
        for index in order:
            handle = (lock_dir / f"gpu{index}.lock").open("w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU among {count} within {timeout} s (locks in {lock_dir})")
        time.sleep(poll_seconds)


@contextmanager
def job_gpu(cfg: DictConfig) -> Iterator[None]:
    """Under ``hydra/launcher=gpus``: train this job on one free GPU (``trainer.devices=[k]``).

    Joblib reuses worker processes, so a device chosen through CUDA_VISIBLE_DEVICES would stick to the first job
    of a worker; choosing the device index per job, under a lock, keeps one job per GPU whatever the order in
    which jobs finish. No-op without the launcher's environment flag or without GPUs.
    """
    count = visible_gpus() if os.environ.get(GPU_PER_JOB_ENV) == "1" else 0
    if count == 0:
        yield
        return
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    if str(devices) not in ("1", "auto"):
        raise SweepError(
            f"hydra/launcher=gpus gives every job one GPU, but trainer.devices={devices}: use the default launcher "
            "for multi-GPU jobs (trainer=ddp)"
        )
    hydra_cfg = HydraConfig.get()
    job_num = int(OmegaConf.select(hydra_cfg, "job.num", default=0) or 0)
    with gpu_lease(Path(str(hydra_cfg.sweep.dir)) / ".gpu_leases", count, first=job_num % count) as index:
        with open_dict(cfg):
            cfg.trainer.accelerator = "gpu"
            cfg.trainer.devices = [index]
        log.info("Job %d trains on GPU %d of %d", job_num, index, count)
        yield
