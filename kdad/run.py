"""``python -m kdad.run method=rd data=mvtec data.root=/path data.category=bottle``: train and test one configuration.

The command line of :func:`kdad.runner.train.run` (Hydra config ``conf/config.yaml``; ``-m`` sweeps, see
kdad.runner.sweep). Expected problems end with ``kdad: error: ...`` and exit status 2 (kdad.runner.cli).
"""

from __future__ import annotations

from omegaconf import DictConfig

from kdad.runner.cli import hydra_cli
from kdad.runner.gpus import job_gpu
from kdad.runner.train import run


@hydra_cli(config_name="config")
def main(cfg: DictConfig) -> float | None:
    with job_gpu(cfg):  # hydra/launcher=gpus: this job trains on a GPU of its own
        summary = run(cfg)
    return summary.get("metrics", {}).get("image_auroc")


if __name__ == "__main__":
    main()
