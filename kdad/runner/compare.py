"""Comparison tables in one command: variants × categories × seeds, run through ``kdad.run``, then tabulated.

``python -m kdad.compare dskd_ablation`` reads ``conf/compare/dskd_ablation.yaml``::

    title: DSKD ablation
    budget: one sentence stating the CPU budget (resolution, epochs, teacher)
    common: [data=synthetic, data.image_size=128, trainer.max_epochs=4]   # overrides for every run
    seeds: [0, 1, 2]
    categories: [weave, hexnut]
    metrics: [image_auroc, pixel_auroc, pixel_aupro]
    variants:                                                             # column name -> overrides
      DSKD: [method=dskd]
      Se only: [method=dskd, method.model.students=encoder]

``baseline: RD`` (optional) adds a paired comparison of every other variant against that one over the
(category, seed) runs both finished: mean difference, 95 % paired bootstrap interval and Wilcoxon signed-rank
p-value per metric (``kdad.metrics.paired``), in the markdown and in ``<spec>.paired.json``.

A variant may instead be a view on another variant's runs, e.g. the auxiliary map a method reports as
``stage1/<metric>``: ``AAND stage I: {of: AAND, prefix: stage1}`` (no extra training).

A variant whose overrides hold ``data.unified=true`` trains ONE model per seed on all the spec's categories
(``data.category=[c1,c2,...]``, kdad.data.unified) instead of one per category; its run's per-category results
become that variant's rows, so they line up, category by category and seed by seed, with one-model-per-category
variants (paired comparisons included): ``RD unified: [method=rd, data.unified=true]``.

Every run lands in ``runs/compare/<spec>/<variant>/...`` (the usual run folder, so finished runs are reused
and interrupted ones resume), and the table goes to ``docs/results/<spec>.md`` (+ .csv, .json).
``--seeds``, ``--categories`` and ``--set key=value`` (extra overrides) make quick local checks easy.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from kdad.runner.report import DEFAULT_METRICS, load_runs, write_outputs
from kdad.runner.train import run

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def slug(name: str) -> str:
    """Folder name of a variant; '+' is spelled 'p' so that 'RD' and 'RD++' stay apart (rd, rdpp)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("+", "p")).strip("_").lower()


def compose_run_config(overrides: Sequence[str]):
    """Compose conf/config.yaml like ``python -m kdad.run`` would (HydraConfig set for ${hydra:...})."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=list(overrides))
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def is_unified(overrides: Sequence[str]) -> bool:
    """True when the last ``data.unified=`` among ``overrides`` switches unified training on."""
    values = [
        o.split("=", 1)[1].strip().lower() for o in overrides if o.split("=", 1)[0].lstrip("+~") == "data.unified"
    ]
    return bool(values) and values[-1] == "true"


def run_comparison(
    spec_name: str,
    seeds: Sequence[int] | None = None,
    categories: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    out: Path | None = None,
) -> str:
    spec_path = Path(spec_name) if spec_name.endswith(".yaml") else CONF_DIR / "compare" / f"{spec_name}.yaml"
    spec = OmegaConf.load(spec_path)
    spec_name = spec_path.stem
    seeds = list(seeds if seeds is not None else spec.get("seeds", [0]))
    categories = list(categories if categories is not None else spec.categories)
    metrics = list(spec.get("metrics", DEFAULT_METRICS))
    results = []
    plans = {}
    for variant, overrides in spec.variants.items():
        source = overrides.of if OmegaConf.is_dict(overrides) else variant
        unified = is_unified([*spec.common, *spec.variants[source], *extra])
        # one run per (category, seed), or for a unified variant one run per seed over every category
        plans[variant] = (
            [[f"data.category=[{','.join(categories)}]"]] if unified else [[f"data.category={c}"] for c in categories]
        )
    total = sum(len(jobs) for jobs in plans.values()) * len(seeds)
    done = 0
    for variant, overrides in spec.variants.items():
        source, prefix = variant, None
        if OmegaConf.is_dict(overrides):  # a view on another variant's runs: {of: <variant>, prefix: <name>}
            source, prefix = overrides.of, overrides.prefix
            overrides = spec.variants[source]
        for job in plans[variant]:
            for seed in seeds:
                done += 1
                started = time.perf_counter()
                cfg = compose_run_config(
                    [
                        *spec.common,
                        *overrides,
                        *extra,
                        *job,
                        f"seed={seed}",
                        f"tag=compare/{spec_name}/{slug(source)}",
                        f"variant='{source}'",
                    ]
                )
                run(cfg, quiet=True)
                for result in load_runs(Path(cfg.run_dir) / "metrics.json", column=variant):
                    if prefix is not None:
                        view = {
                            k[len(prefix) + 1 :]: v for k, v in result.metrics.items() if k.startswith(f"{prefix}/")
                        }
                        result = dataclasses.replace(result, metrics=view)
                    results.append(result)
                what = job[0].split("=", 1)[1]
                print(f"[{done}/{total}] {variant} / {what} / seed {seed}: {time.perf_counter() - started:.0f}s")
    title = f"{spec.title} — {spec.get('budget', '')}".strip(" —")
    out = out or Path("docs/results") / spec_name
    write_outputs(results, out, metrics, title, spec.get("baseline"))
    return out.with_suffix(".md").read_text()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="name of a file in conf/compare/ (without .yaml), or a path to a .yaml spec")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    parser.add_argument("--categories", help="comma-separated categories (default: the spec's)")
    parser.add_argument("--set", action="append", default=[], help="extra override for every run (repeatable)")
    parser.add_argument("--out", type=Path, help="output path without suffix (default docs/results/<spec>)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    categories = args.categories.split(",") if args.categories else None
    print(run_comparison(args.spec, seeds, categories, args.set, args.out))


if __name__ == "__main__":
    main()
