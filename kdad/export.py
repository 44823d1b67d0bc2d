"""``python -m kdad.export run_dir=<run folder> format=onnx|openvino|torchscript``: a run, ready for deployment.

The command line of :func:`kdad.deploy.export.export_run` (Hydra config ``conf/export.yaml``): rebuilds the run's
model from its folder (:func:`kdad.runner.trained.load_trained_run`: the tested checkpoint, loaded with
``weights_only=True``), writes ``<run_dir>/exported/<format>/`` (model file + metadata.json with the run's
thresholds) and checks the exported model against kdad's torch model on test images. Options: ``ckpt_path=``
(a checkpoint instead of, or with, ``run_dir=``), ``opset=17``, ``onnx_exporter=auto|torchscript|dynamo``,
``out_dir=``, ``check_images=8``, ``tolerance=1e-3``, ``device=cpu``. The folder then runs without torch:
``kdad.deploy.load_inferencer(folder)`` or ``python -m kdad.predict backend=onnx``.

Exit status 0 when the export passed its check, 2 for a user error (``kdad: error: ...``: a missing run folder, a
checkpoint that does not load, an export whose deviation exceeds the tolerance).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdad.errors import ConfigError, check_choice
from kdad.runner.cli import hydra_cli


@hydra_cli(config_name="export")
def main(cfg: DictConfig) -> Path:
    from kdad.deploy.export import FORMATS, ExportError, export_run
    from kdad.deploy.metadata import Metadata
    from kdad.runner.trained import load_trained_run

    if cfg.run_dir is None and cfg.ckpt_path is None:
        raise ConfigError("give the run to export: run_dir=<run folder> (or ckpt_path=<checkpoint>)")
    check_choice(cfg.format, FORMATS, "export format", ExportError)  # before the model loads
    trained = load_trained_run(run_dir=cfg.run_dir, ckpt_path=cfg.ckpt_path, device=cfg.device)
    folder = export_run(
        trained,
        cfg.format,
        out_dir=cfg.out_dir,
        opset=int(cfg.opset),
        check_images=int(cfg.check_images),
        tolerance=float(cfg.tolerance),
        onnx_exporter=cfg.onnx_exporter,
    )
    metadata = Metadata.load(folder)
    check = metadata.export_check
    thresholds = "none (scores only)" if metadata.thresholds is None else metadata.image_threshold["policy"]
    print(f"exported {metadata.method} ({trained.checkpoint}) as {metadata.format} to {folder}")
    print(
        f"self-check on {check['images']} images ({check['images_source']}): max deviation score "
        f"{check['max_abs_score_deviation']:.3g}, map {check['max_abs_map_deviation']:.3g} = {check['relative']:.3g} "
        f"of the map range (tolerance {check['tolerance']:g}); thresholds: {thresholds}"
    )
    return folder


if __name__ == "__main__":
    main()
