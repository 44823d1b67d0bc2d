"""The bench run: settings, every (method, precision) measurement, the speed options, the pixel-metric memory, then
the targets, the tables and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from omegaconf import DictConfig, OmegaConf

from bench.report import evaluate_targets, format_report
from bench.worker import DEFAULT_PRECISIONS

BENCH_DIR = Path(__file__).resolve().parent


def load_settings(argv: Sequence[str] = ()) -> DictConfig:
    """``bench/conf/bench.yaml`` merged with ``key=value`` overrides; unknown keys are an error (typos)."""
    base = OmegaConf.load(BENCH_DIR / "conf" / "bench.yaml")
    OmegaConf.set_struct(base, True)
    OmegaConf.set_struct(base.bench.method_overrides, False)  # any method may get overrides
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(argv)))
    settings = merged.bench
    if settings.device not in DEFAULT_PRECISIONS:
        raise ValueError(f"bench.device must be one of {sorted(DEFAULT_PRECISIONS)}, got '{settings.device}'")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("bench.device=cuda but no CUDA device is visible")
    return merged


def environment(settings: DictConfig) -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine was."""
    env: dict[str, Any] = {
        "device": settings.device,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if settings.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def measure_pixel_memory(spec: DictConfig, threads: int | None) -> dict[str, Any]:
    """``bench.pixel_memory`` in a fresh process, so its RSS reading starts clean."""
    command = [
        sys.executable,
        "-m",
        "bench.pixel_memory",
        f"--images={spec.images}",
        f"--size={spec.size}",
        f"--batch={spec.batch}",
        f"--anomalous-fraction={spec.anomalous_fraction}",
        f"--threads={threads or 0}",
    ]
    root = BENCH_DIR.parent
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pixel-memory measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_in_process(settings: DictConfig, method: str, workdir: Path) -> dict[str, list[dict]]:
    """``bench.worker`` for one method in a fresh Python process (its progress lines go to this stdout)."""
    settings_file = workdir / f"{method}.settings.yaml"
    output = workdir / f"{method}.json"
    settings_file.write_text(OmegaConf.to_yaml(settings, resolve=True))
    command = [sys.executable, "-m", "bench.worker", str(settings_file), method, str(output)]
    # Empty compiler caches: speed.compile is timed as a first run pays it (later runs reuse the caches).
    caches = {name: str(workdir / "compile-cache" / name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    done = subprocess.run(command, cwd=BENCH_DIR.parent, env={**os.environ, **caches}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench: measuring {method} failed (exit code {done.returncode}); see the messages above")
    return json.loads(output.read_text())


def run_bench(config: DictConfig, say: Any = print) -> dict[str, Any]:
    """Run every measurement of ``config.bench``; prints progress and the report, writes and returns the JSON."""
    settings = config.bench
    started = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    workdir = Path(settings.workdir).expanduser() if settings.workdir else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "settings": OmegaConf.to_container(settings, resolve=True),
        "environment": environment(settings),
        "rows": [],
        "options": [],
        "deploy": [],
        "fits": [],
        "versus": [],
    }
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for method in settings.methods:
            measured = measure_in_process(settings, method, Path(tmp))
            results["rows"] += measured["rows"]
            results["options"] += measured["options"]
            results["deploy"] += measured["deploy"]
            results["fits"] += measured["fits"]
            results["versus"] += measured["versus"]
    tick = time.perf_counter()
    results["pixel_memory"] = measure_pixel_memory(settings.pixel_memory, settings.threads)
    say(f"[bench] pixel-metric memory: {time.perf_counter() - tick:.0f}s", flush=True)
    results["targets"] = evaluate_targets(results, settings.targets)
    results["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["wall_seconds"] = time.perf_counter() - started
    output = Path(settings.output or BENCH_DIR / "results" / f"{settings.device}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    say(format_report(results))
    say(f"JSON: {output}  (bench wall time {results['wall_seconds']:.0f}s)")
    return results
