"""One method's measurements in a fresh process: ``python -m bench.worker SETTINGS.yaml METHOD OUT.json``.

The bench runs every method in its own process, so its peak RSS is its own (freed memory of an earlier method
stays in the allocator's heap and would count towards the next one) and no compilation cache carries over.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.method import measure_method
from bench.options import OPTIONS, measure_option
from bench.quiet import quiet
from bench.versus import measure_fits

DEFAULT_PRECISIONS = {"cpu": ["32-true"], "cuda": ["bf16-mixed", "32-true"]}
# the precision whose row is followed by the deployment figures (exports are float32)
DEPLOY_PRECISION = "32-true"


def precisions_of(settings: DictConfig) -> list[str]:
    return list(settings.precisions or DEFAULT_PRECISIONS[settings.device])


def deploy_wanted(settings: DictConfig, method: str, precision: str) -> bool:
    """Whether ``method``'s row at ``precision`` is followed by the deployment figures (``bench.deploy``)."""
    spec = settings.get("deploy")
    return bool(spec and spec.enabled and precision == DEPLOY_PRECISION and method in (spec.methods or []))


def measure_all(settings: DictConfig, method: str, say: Callable[..., Any] = print) -> dict[str, list[dict]]:
    """The main row of ``method`` at every precision (the 32-true one followed by the deployment figures where
    ``bench.deploy`` asks for them), each followed by its speed-option rows and its fits of several epochs
    (``bench.fit``: teacher cache on / off, anomalib)."""
    workdir = Path(settings.workdir).expanduser() if settings.workdir else None
    out: dict[str, list[dict]] = {"rows": [], "options": [], "deploy": [], "fits": [], "versus": []}
    for precision in precisions_of(settings):
        tick = time.perf_counter()
        row = measure_method(settings, method, precision, workdir, deploy=deploy_wanted(settings, method, precision))
        deploy = row.pop("deploy", None)
        out["rows"].append(row)
        if deploy is None:
            say(f"[bench] {method} {precision}: {time.perf_counter() - tick:.0f}s", flush=True)
        else:
            out["deploy"].append(deploy)
            seconds = time.perf_counter() - tick
            say(
                f"[bench] {method} {precision}: {seconds - deploy['seconds']:.0f}s, deploy {deploy['seconds']:.0f}s",
                flush=True,
            )
        for option in OPTIONS:
            if method not in (settings.options.get(option) or []):
                continue
            tick = time.perf_counter()
            measured = measure_option(settings, method, precision, option, row, workdir)
            out["options"].append(measured)
            flip = "on" if measured["value"] else "off"
            say(f"[bench] {method} {precision} {option} {flip}: {time.perf_counter() - tick:.0f}s", flush=True)
        fits = measure_fits(settings, method, precision, workdir, say)
        out["fits"] += fits["fits"]
        out["versus"] += fits["versus"]
    return out


def main() -> None:
    settings_path, method, output = sys.argv[1:4]
    settings = OmegaConf.load(settings_path)
    quiet()
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    Path(output).write_text(json.dumps(measure_all(settings, method)))


if __name__ == "__main__":
    main()
