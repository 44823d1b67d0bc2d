"""Category sweeps: ``python -m kdad.run -m method=dskd data=visa data.category=all`` runs every category.

:class:`SweepCallback` (a Hydra callback, set in ``conf/hydra/default.yaml``) works around a multirun:

* **before** Hydra builds the job list it expands ``data.category=all`` into the comma list of the data module's
  ``available_categories(root)`` (Hydra reads the task overrides after ``on_multirun_start``; a callback needs no
  plugin package, unlike a custom sweeper, which Hydra only loads from ``hydra_plugins``);
* **after** the last job it reads the run folders of the sweep's jobs and writes the results table into the sweep
  folder ``runs/<tag>``: ``results.md`` (tables + protocol), ``results.csv``, ``results.json``; prints it; and,
  when the sweep logs to W&B, logs it as a ``summary`` run in the sweep's W&B group.

Multirun jobs use the usual run folders (``hydra.sweep.subdir`` resolves to ``run_dir``), so re-running a sweep
skips finished categories (their metrics.json) and resumes the interrupted one from ``checkpoints/last.ckpt``.

One GPU per job under ``hydra/launcher=gpus``: kdad.runner.gpus.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from kdad.errors import ConfigError
from kdad.runner.report import DEFAULT_METRICS, RunResult, load_runs, table_rows, write_tables

log = logging.getLogger("kdad")

ALL_CATEGORIES = "all"
CATEGORY_KEY = "data.category"
SUMMARY_NAME = "results"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
WANDB_TARGETS = ("kdad.runner.loggers.make_wandb_logger", "lightning.pytorch.loggers.WandbLogger")
_PLAIN_VALUE = re.compile(r"^[\w./+-]+$")


class SweepError(ConfigError):
    """A sweep that cannot be set up as asked (e.g. ``data.category=all`` over several benchmarks)."""


# ------------------------------------------------------------------------------------- resolvers
def _relative_path(path: str, start: str) -> str:
    return os.path.relpath(os.path.abspath(path), os.path.abspath(start))


# hydra.sweep.subdir is joined to hydra.sweep.dir: relpath(run_dir, sweep dir) makes the job folder run_dir itself.
OmegaConf.register_new_resolver("kdad.relpath", _relative_path, replace=True)
# hydra/launcher=gpus runs as many jobs at once as the machine has GPUs (at least one).


# ------------------------------------------------------------------------------------- category expansion
def _quote(value: str) -> str:
    if _PLAIN_VALUE.match(value):
        return value
    if "'" in value:
        raise SweepError(f"category name {value!r} holds a quote: sweep it by name instead of data.category=all")
    return f"'{value}'"


def expand_all_categories(overrides: Sequence[str], categories: Callable[[], Sequence[str]]) -> list[str]:
    """``overrides`` with ``data.category=all`` replaced by ``data.category=<c1>,<c2>,...`` (from ``categories()``,
    called only when needed); everything else is returned unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    out = []
    for text, override in zip(overrides, parsed, strict=True):
        is_key = override.key_or_group == CATEGORY_KEY and not override.is_sweep_override()
        if is_key and str(override.value()) == ALL_CATEGORIES:
            names = list(categories())
            if not names:
                raise SweepError("data.category=all found no categories")
            text = f"{CATEGORY_KEY}={','.join(_quote(n) for n in names)}"
        out.append(text)
    return out


def benchmark_categories(config: DictConfig, overrides: Sequence[str]) -> list[str]:
    """The categories of the benchmark ``config`` selects: its data module's ``available_categories(root)``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import get_class

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_sweep_override() and (key == "data" or key.startswith("data.root") or key == "paths.data_dir"):
            raise SweepError(
                f"data.category=all expands the categories of one benchmark, but '{override.input_line}' sweeps "
                "several: run one sweep per benchmark (or list the categories)"
            )
    target = OmegaConf.select(config, "data._target_")
    root = OmegaConf.select(config, "data.root")
    module = get_class(str(target))
    found = list(module.available_categories(str(root)))
    if not found:
        raise SweepError(
            f"data.category=all: no {getattr(module, 'name', target)} categories under {root} "
            "(check data.root; see docs/data.md for the layouts)"
        )
    return found


# ------------------------------------------------------------------------------------- job run folders
def job_run_dirs(config: DictConfig, overrides: Sequence[str]) -> list[Path]:
    """The run folder of every job the basic sweeper will launch for ``overrides`` (composed like the jobs)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().hydra.config_loader
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *overrides])
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    previous = HydraConfig.instance().cfg
    dirs = []
    try:
        for job in jobs:
            job_config = loader.load_sweep_config(config, list(job))
            HydraConfig.instance().set_config(job_config)  # run_dir uses ${hydra:runtime.choices.data}
            dirs.append(Path(str(OmegaConf.select(job_config, "run_dir"))))
    finally:
        HydraConfig.instance().set_config(previous if previous is not None else config)
    return dirs


# ------------------------------------------------------------------------------------- summary
def sweep_results(sweep_dir: Path, run_dirs: Sequence[Path] | None) -> tuple[list[RunResult], list[str]]:
    """(finished runs, unfinished run folders) of a sweep; every finished run below ``sweep_dir`` when the
    job folders are unknown."""
    if run_dirs is None:
        return [r for p in sorted(Path(sweep_dir).rglob("metrics.json")) for r in load_runs(p)], []
    finished = [r for d in run_dirs if (d / "metrics.json").is_file() for r in load_runs(d / "metrics.json")]
    missing = [_relative_path(str(d), str(sweep_dir)) for d in run_dirs if not (d / "metrics.json").is_file()]
    return finished, missing


def write_sweep_summary(
    sweep_dir: Path,
    run_dirs: Sequence[Path] | None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    title: str = "",
) -> tuple[list[RunResult], str]:
    """Write ``results.{md,csv,json}`` into ``sweep_dir``; returns the results and the markdown."""
    results, missing = sweep_results(sweep_dir, run_dirs)
    if not results:
        return [], ""
    text = write_tables(results, Path(sweep_dir) / SUMMARY_NAME, metrics, title, missing=missing)
    return results, text


def _is_wandb(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "logger._target_", default="")) in WANDB_TARGETS


def log_summary_to_wandb(
    config: DictConfig,
    sweep_dir: Path,
    results: Sequence[RunResult],
    run_dirs: Sequence[Path],
    metrics: Sequence[str],
    markdown_text: str,
    overlays_per_run: int = 2,
) -> Path | None:
    """One ``summary`` run in the sweep's W&B group: the results table, mean metrics per method, the markdown and
    a few anomaly-map overlays per category. Offline unless W&B is set up (``wandb sync`` it later)."""
    import wandb

    from kdad.runner.loggers import wandb_is_configured

    mode = str(OmegaConf.select(config, "logger.mode", default="auto"))
    offline = mode == "offline" or (mode == "auto" and not wandb_is_configured())
    benchmarks = sorted({str(r.protocol.get("benchmark")) for r in results})
    methods = sorted({r.column for r in results})
    run = wandb.init(
        project=str(OmegaConf.select(config, "logger.project", default="kdad")),
        group=str(OmegaConf.select(config, "logger.group", default=config.tag)),
        name="summary",
        job_type="sweep-summary",
        dir=str(sweep_dir),
        mode="offline" if offline else "online",
        tags=[f"method:{m}" for m in methods] + [f"data:{b}" for b in benchmarks] + ["sweep-summary"],
        config={"sweep_dir": str(sweep_dir), "metrics": list(metrics), "runs": len(results)},
    )
    try:
        rows = table_rows(results, metrics)
        columns = list(rows[0])
        run.log({"sweep/results": wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])})
        for row in rows:
            if row["category"] == "mean":
                for metric in metrics:
                    run.summary[f"mean/{row['benchmark']}/{row['method']}/{metric}"] = row[metric]
        run.log({"sweep/results_markdown": wandb.Html(f"<pre>{markdown_text}</pre>")})
        images = []
        for run_dir in run_dirs:
            for path in sorted((run_dir / "overlays").glob("*.png"))[:overlays_per_run]:
                caption = f"{_relative_path(str(run_dir), str(sweep_dir))}: {path.stem}"
                images.append(wandb.Image(str(path), caption=caption))
        if images:
            run.log({"sweep/overlays": images})
        return Path(run.dir).parent
    finally:
        run.finish()


class SweepCallback(Callback):
    """Hydra callback: expands ``data.category=all`` before a multirun, writes the sweep summary after it.

    Args:
        metrics: metrics of the summary table.
        wandb_overlays: overlays per run logged to the W&B summary run (when the sweep logs to W&B).
    """

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS, wandb_overlays: int = 2) -> None:
        self.metrics = list(metrics)
        self.wandb_overlays = int(wandb_overlays)
        self.run_dirs: list[Path] | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Unresolved, as Hydra reads them: an override may hold an interpolation such as ${run_dir}.
        overrides = [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]
        try:
            # data.unified=true: data.category=all is one job's categories (one model), not a sweep over them
            unified = bool(OmegaConf.select(config, "data.unified", default=False))
            expanded = (
                overrides
                if unified
                else expand_all_categories(overrides, lambda: benchmark_categories(config, overrides))
            )
        except Exception as exc:
            # Hydra turns exceptions raised by callbacks into warnings; a sweep that cannot be built must stop.
            raise SystemExit(f"kdad sweep: {exc}") from exc
        if expanded != overrides:
            log.info("Sweep over categories: %s", next(o for o in expanded if o.startswith(CATEGORY_KEY)))
            with open_dict(config.hydra.overrides):
                config.hydra.overrides.task = expanded
        self.run_dirs = None
        if OmegaConf.select(config, "hydra.sweeper._target_") == BASIC_SWEEPER:
            try:
                self.run_dirs = job_run_dirs(config, expanded)
            except Exception as exc:  # the sweeper reports bad overrides itself; summarise the sweep folder then
                log.warning("Could not list the sweep's run folders (%s): the summary covers the sweep folder", exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        title = f"Sweep {config.tag}"
        results, text = write_sweep_summary(sweep_dir, self.run_dirs, self.metrics, title)
        if not results:
            log.warning("Sweep finished without any finished run under %s", sweep_dir)
            return
        print(text)
        print(f"sweep results: {sweep_dir / SUMMARY_NAME}.md (.csv, .json)")
        if _is_wandb(config):
            found = self.run_dirs if self.run_dirs is not None else [p.parent for p in sweep_dir.rglob("metrics.json")]
            finished = [d for d in found if (d / "metrics.json").is_file()]
            log_summary_to_wandb(config, sweep_dir, results, finished, self.metrics, text, self.wandb_overlays)
