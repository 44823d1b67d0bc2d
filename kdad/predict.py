"""``python -m kdad.predict run_dir=<run folder> input=<image | folder | glob>``: a finished run on new images.

The command line of :func:`kdad.runner.predict.predict` (Hydra config ``conf/predict.yaml``): writes
``predictions.csv``, ``masks/`` and ``overlays/`` to ``output=`` (default ``<run_dir>/predictions/<input>_<time>``).
Options: ``ckpt_path=`` instead of ``run_dir=``, ``backend=torch|onnx|openvino`` (the last two run
``<run_dir>/exported/<format>/``, written by ``python -m kdad.export``), ``batch_size=``, ``device=``,
``workers=``, ``progress=false``. Quote a glob for the shell: ``'input=shots/**/*.png'`` (one with brackets for
Hydra too: ``'input="shots/[ab]*.png"'``).

Exit status: 0 when every image was predicted, 1 when some files could not be read (listed in the CSV's ``error``
column, ``failed.txt`` and the summary; the others are predicted), 2 for a user error (``kdad: error: ...``), 130
when interrupted (Ctrl-C; the CSV keeps the rows written so far).
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from kdad.runner.cli import hydra_cli
from kdad.runner.predict import predict

# Ctrl-C: the shell's status for SIGINT (128 + 2), after the rows written so far are flushed and named.
EXIT_INTERRUPTED = 130


@hydra_cli(config_name="predict")
def main(cfg: DictConfig) -> int:
    try:
        summary = predict(cfg)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    if summary.exit_code:
        sys.exit(summary.exit_code)
    return summary.exit_code


if __name__ == "__main__":
    main()
