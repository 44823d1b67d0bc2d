"""One method at one precision, measured the way users run it: the real Hydra config (``method=<name>``),
the real LightningModule and data module, Lightning's fit and test loops.

Measured, in this order, on a fresh model:

1. training: one epoch of the synthetic category (images/s, data wait / step / rest split; warm-up batches out);
2. inference: ``model(images)`` (networks + map head) at batch 1 and at ``batch_size``;
3. ``bench.test_rounds`` test passes (Lightning's test loop with maps, blur and every metric; overlays off),
   split into data wait, networks (``features``), maps (``forward`` minus ``features``), metrics
   (``AnomalyMetrics.update``/``compute``) and the rest, each compared with the pure forward: ``model.features``
   (the networks without the map head) on the same batches, interleaved batch by batch;
4. peak memory (RSS; on CUDA also the allocator's peak) and parameter counts.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from bench.timing import Bucket, SplitTimer, now, timed_attribute, timed_calls
from kdad.blocks.teacher import Teacher
from kdad.methods.base import AnomalyModel
from kdad.metrics import AnomalyMetrics
from kdad.runner.compare import compose_run_config
from kdad.runner.train import build_modules

ACCELERATORS = {"cpu": "cpu", "cuda": "gpu"}


def run_overrides(
    settings: DictConfig, method: str, precision: str, workdir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """Overrides of kdad's run config for one bench measurement (the run folder is a throw-away one)."""
    batch = int(settings.batch_size)
    overrides = [
        f"method={method}",
        "data=synthetic",
        f"data.category={settings.category}",
        f"data.image_size={settings.image_size}",
        f"data.batch_size={batch}",
        f"data.eval_batch_size={batch}",
        f"data.n_train={settings.train_images}",
        # the bench computes no decision thresholds: train on every one of the train images (no calibration hold-out)
        "data.calibration_split=0",
        f"data.n_test_good={settings.test_good}",
        f"data.n_test_per_defect={settings.test_per_defect}",
        "logger=none",
        f"trainer.accelerator={ACCELERATORS[settings.device]}",
        f"trainer.precision={precision}",
        f"paths.runs_dir={workdir}",
        "method.overlay_count=0",
        *settings.overrides,
        *(settings.method_overrides or {}).get(method, []),
        *extra,
    ]
    return [str(o) for o in overrides]


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Data module (set up) and LightningModule with the run's speed options, built by ``kdad.run``'s builder."""
    datamodule, module = build_modules(cfg, verbose=False)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule, module


def make_trainer(
    cfg: DictConfig, module: L.LightningModule, callbacks: Sequence[L.Callback], epochs: int | None = None
) -> L.Trainer:
    """The run's trainer, reduced to training and testing: no logger, checkpoints, validation or progress bar.
    ``epochs`` (a fit of several epochs), or by default one epoch; methods trained in stages by epoch (AAND) one per
    stage (a stage length the config fixes as set): their stage lengths follow the trainer's max_epochs."""
    return hydra.utils.instantiate(
        cfg.trainer,
        max_epochs=int(epochs if epochs is not None else getattr(module, "shortest_run", 1)),
        max_steps=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def parameter_counts(model: AnomalyModel) -> dict[str, int]:
    """Trainable (what the method's optimisers update) and total parameters, each parameter counted once."""
    trainable = {id(p): p for p in model.trainable_parameters()}
    return {
        "trainable": sum(p.numel() for p in trainable.values()),
        "total": sum(p.numel() for p in model.parameters()),
    }


def frozen_teachers_ok(model: torch.nn.Module) -> bool | None:
    """Every frozen teacher is in eval mode with no parameter requiring a gradient (None: the method has none)."""
    frozen = [m for m in model.modules() if isinstance(m, Teacher) and m.frozen]
    if not frozen:
        return None
    return all(not m.training and not any(p.requires_grad for p in m.parameters()) for m in frozen)


def train_epochs(
    cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule, device: torch.device, warmup: int
) -> tuple[L.Trainer, SplitTimer, dict[str, Any]]:
    """Fit for the bench's epochs; returns the trainer, its timer and the training figures."""
    timer = SplitTimer(device, warmup_batches=warmup)
    trainer = make_trainer(cfg, module, [timer])
    start = now(device)
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = now(device) - start
    train = timer.train
    figures = {
        "train_epochs": timer.epochs,
        "train_images": train.images,
        "train_seconds": train.wall,
        "train_images_per_s": train.images / train.wall if train.wall > 0 else float("nan"),
        "train_data_seconds": train.data,
        "train_model_seconds": train.step,
        "train_rest_seconds": train.rest,
        "train_data_fraction": train.data / train.wall if train.wall > 0 else float("nan"),
        # everything outside the measured batches: Lightning's set-up, the warm-up batches (with speed.compile,
        # the compilation of the training graphs), loader workers' start
        "train_warmup_seconds": max(0.0, fit_seconds - train.wall),
        "train_loader_workers": int(trainer.train_dataloader.num_workers),
        "train_per_epoch": [
            {"images": e.images, "seconds": e.wall, "data_seconds": e.data, "model_seconds": e.step}
            for e in timer.train_epochs
        ],
    }
    return trainer, timer, figures


def test_batches(datamodule: L.LightningDataModule, device: torch.device) -> list[torch.Tensor]:
    """The test images, batched like the test loop, already on the device."""
    return [batch["image"].to(device) for batch in datamodule.test_dataloader()]


@contextlib.contextmanager
def evaluating(model: torch.nn.Module, context: Callable[[], Any]) -> Iterator[None]:
    """Inference as the test loop runs it: eval mode, no autograd, the trainer's precision context."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), context():
            yield
    finally:
        model.train(was_training)


def inference_rates(
    model: torch.nn.Module, batches: list[torch.Tensor], settings: DictConfig, device: torch.device
) -> dict[str, float]:
    """Images/s of ``model(images)`` at batch 1 and at the bench batch size, each after one warm-up call (whose
    seconds are returned too: with ``speed.compile`` they hold the compilation of the inference graphs)."""
    singles = [image[None] for batch in batches for image in batch]
    full = [b for b in batches if b.shape[0] == int(settings.batch_size)] or batches[:1]
    n1 = max(1, int(settings.infer_images_b1))
    nb = max(1, int(settings.infer_batches))
    calls = {"b1": 0, "bN": 0}

    def one() -> None:
        model(singles[calls["b1"] % len(singles)])
        calls["b1"] += 1

    def many() -> None:
        model(full[calls["bN"] % len(full)])
        calls["bN"] += 1

    warmup_b1, seconds_b1 = timed_calls(one, n1, device)
    warmup_bn, seconds_bn = timed_calls(many, nb, device)
    return {
        "infer_b1_images_per_s": n1 / seconds_b1,
        "infer_batch_images_per_s": nb * full[0].shape[0] / seconds_bn,
        "infer_warmup_seconds": warmup_b1 + warmup_bn,
    }


class PureForward(L.Callback):
    """Times ``features(images)`` of every test batch once more, right after its test step, as the pure forward.

    Interleaving it batch by batch with the test pass it is compared with (rather than in a loop of its own before
    or after) puts both under the same machine conditions, which on a shared machine drift by more than the 25 %
    the target allows. The extra call is left out of the test pass's window (``start`` to ``on_test_end`` minus
    ``excluded``); it runs before the batch-end mark of the data-wait timer (this callback is placed first), so it
    is not counted as data wait either.
    """

    def __init__(self, features: Any, device: torch.device, context: Callable[[], Any]) -> None:
        self.features, self.device, self.context = features, device, context
        self.pure = self.excluded = self.window = 0.0
        self._start = 0.0

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = now(self.device)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        start = now(self.device)
        with self.context():
            self.features(batch["image"])
        seconds = now(self.device) - start
        self.pure += seconds
        self.excluded += seconds

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.window += now(self.device) - self._start - self.excluded
        self.excluded = 0.0


def test_passes(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, timer: SplitTimer, rounds: int
) -> dict[str, float]:
    """``rounds`` test passes (Lightning's test loop: maps, blur, every metric) with the networks, the map head and
    the metrics timed separately, and the pure forward of each batch interleaved (:class:`PureForward`). The
    seconds are per pass, averaged over the rounds; test pass ÷ pure forward is the median of the rounds' ratios."""
    device = timer.device
    model = module.model
    forward, features, metrics = Bucket(), Bucket(), Bucket()
    pure = PureForward(model.features, device, trainer.precision_plugin.forward_context)
    trainer.callbacks.insert(0, pure)
    ratios: list[float] = []
    call_seconds = 0.0
    for _ in range(rounds):
        pure_before, window_before = pure.pure, pure.window
        with contextlib.ExitStack() as stack:
            stack.enter_context(timed_attribute(model, "forward", forward, device))
            stack.enter_context(timed_attribute(model, "features", features, device))
            stack.enter_context(timed_attribute(AnomalyMetrics, "update", metrics, device))
            stack.enter_context(timed_attribute(AnomalyMetrics, "compute", metrics, device))
            start = now(device)
            trainer.test(module, datamodule=datamodule, verbose=False)
            call_seconds += now(device) - start - (pure.pure - pure_before)
        ratios.append((pure.window - window_before) / (pure.pure - pure_before))
    split = timer.test
    rest = pure.window - split.data - forward.seconds - metrics.seconds
    return {
        "test_rounds": rounds,
        "test_images": split.images // rounds,
        "pure_forward_seconds": pure.pure / rounds,
        "test_seconds": pure.window / rounds,
        "test_call_seconds": call_seconds / rounds,
        "test_data_seconds": split.data / rounds,
        "test_model_seconds": features.seconds / rounds,
        "test_maps_seconds": (forward.seconds - features.seconds) / rounds,
        "test_metrics_seconds": metrics.seconds / rounds,
        "test_rest_seconds": max(0.0, rest) / rounds,
        "test_over_forward": statistics.median(ratios),
        "test_over_forward_rounds": ratios,
    }


def measure_method(
    settings: DictConfig, method: str, precision: str, workdir: Path | None = None, deploy: bool = False
) -> dict[str, Any]:
    """Every figure of one (method, precision) row; see the module docstring. ``deploy``: then the deployment
    figures of the trained module (``bench/deploy.py``, after the row's peak memory is read) under ``"deploy"``."""
    device = torch.device(settings.device)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cfg = compose_run_config(run_overrides(settings, method, precision, Path(tmp)))
        datamodule, module = build(cfg)
        params = parameter_counts(module.model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reset_peak_rss()
        rss_start = rss_bytes()

        trainer, timer, training = train_epochs(cfg, module, datamodule, device, int(settings.warmup_batches))
        frozen_ok = frozen_teachers_ok(module.model)

        module.to(device)
        batches = test_batches(datamodule, device)
        with evaluating(module.model, trainer.precision_plugin.forward_context):
            rates = inference_rates(module.model, batches, settings, device)
        test = test_passes(trainer, module, datamodule, timer, int(settings.test_rounds))

        row: dict[str, Any] = {
            "method": method,
            "precision": precision,
            "image_size": int(settings.image_size),
            "batch_size": int(settings.batch_size),
            "teacher": str(cfg.teacher.backbone),
            "params_trainable": params["trainable"],
            "params_total": params["total"],
            "frozen_teachers_eval_no_grad": frozen_ok,
            "speed": {k: v if k.startswith("teacher_cache") else bool(v) for k, v in (cfg.get("speed") or {}).items()},
            **training,
            **rates,
            **test,
            "rss_start_bytes": rss_start,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        if device.type == "cuda":
            row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device)
        if deploy:
            from bench.deploy import measure_deploy  # onnx, onnxruntime and OpenVINO load only when measured

            row["deploy"] = measure_deploy(settings, method, cfg, module, Path(tmp))
        return row
