"""anomalib's fit of STFPM or RD, timed: ``<anomalib venv python> bench/anomalib_fit.py SPEC.json OUT.json``.

Runs in the separate venv ``make bench`` builds (``bench/.anomalib-venv``: anomalib from PyPI with the lock's torch,
Lightning and timm, see bench/versus.py); it imports nothing from kdad. The spec names the data folder (the bench's
synthetic category, MVTec layout, written by kdad's data module), the backbone, its tapped layers, a state-dict file
of the teacher's weights (kdad's teacher's timm body, saved by the bench: the same ImageNet weights, offline) or none
(random weights for both frameworks), the input normalisation the weights expect, image size, batch size, epochs
and threads. anomalib's own pre-processing (resize + normalisation per batch), loss and loop are used as they are;
validation is off (``limit_val_batches=0``) as in kdad's bench fit.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    output = Path(sys.argv[2])
    import timm
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    # No download: the teacher is built without pretrained weights, then given the bench's weights file.
    create = timm.create_model

    def offline_create(*args, **kwargs):
        kwargs["pretrained"] = False
        return create(*args, **kwargs)

    timm.create_model = offline_create
    import lightning as L
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import ReverseDistillation, Stfpm
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    size = int(spec["image_size"])
    transform = Compose([Resize((size, size), antialias=True), Normalize(mean=spec["mean"], std=spec["std"])])
    pre_processor = PreProcessor(transform=transform)
    layers = spec["layers"]
    options = {"pre_processor": pre_processor, "post_processor": False, "evaluator": False, "visualizer": False}
    torch.manual_seed(int(spec.get("seed", 0)))
    if spec["method"] == "stfpm":
        model = Stfpm(backbone=spec["backbone"], layers=layers, **options)
        teacher = model.model.teacher_model.feature_extractor
    elif spec["method"] == "rd":
        model = ReverseDistillation(backbone=spec["backbone"], layers=layers, pre_trained=False, **options)
        teacher = model.model.encoder.feature_extractor
    else:
        raise ValueError(f"no anomalib counterpart for {spec['method']}")
    if spec.get("weights_file"):
        teacher.load_state_dict(torch.load(spec["weights_file"], map_location="cpu", weights_only=True))
    root = Path(spec["category_dir"])
    datamodule = Folder(
        name="bench",
        root=root,
        normal_dir="train/good",
        abnormal_dir=[str(p.relative_to(root)) for p in sorted((root / "test").iterdir()) if p.name != "good"],
        normal_test_dir="test/good",
        train_batch_size=int(spec["batch_size"]),
        eval_batch_size=int(spec["batch_size"]),
        num_workers=int(spec.get("num_workers", 0)),
        val_split_mode="none",
        seed=int(spec.get("seed", 0)),
    )

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.epochs: list[dict] = []
            self.images = 0
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start, self.images = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.images += int(batch.image.shape[0])

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs.append({"images": self.images, "seconds": time.perf_counter() - self._start})

    timer = EpochTimer()
    engine = Engine(
        callbacks=[timer],
        logger=False,
        default_root_dir=spec["workdir"],
        accelerator={"cpu": "cpu", "cuda": "gpu"}[spec["device"]],
        devices=1,
        precision=spec.get("precision", "32-true"),
        max_epochs=int(spec["epochs"]),
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    import anomalib

    output.write_text(
        json.dumps(
            {
                "framework": f"anomalib {anomalib.__version__}",
                "method": spec["method"],
                "fit_seconds": seconds,
                "epochs": timer.epochs,
                "train_images": sum(e["images"] for e in timer.epochs),
                "torch": torch.__version__,
                "lightning": L.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
