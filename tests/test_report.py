"""kdad.compare (variants x categories x seeds through kdad.run) and kdad.report (tables from run folders)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import write_mvtec

from kdad.runner.compare import run_comparison
from kdad.runner.report import find_runs, main, metric_table


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("compare")
    write_mvtec(tmp / "data", ("bottle",), n_train=6, n_test_good=2, n_per_defect=2)
    spec = tmp / "tiny.yaml"
    spec.write_text(
        "title: tiny\nbudget: 64 px, 1 epoch\n"
        f"common: [data=mvtec, data.root={tmp / 'data'}, data.image_size=64, trainer.max_epochs=1, logger=none,"
        f" data.batch_size=4, paths.runs_dir={tmp / 'runs'}, data.cache_dir={tmp / 'cache'},"
        " trainer.enable_progress_bar=false]\n"
        "seeds: [0, 1]\ncategories: [bottle]\nmetrics: [image_auroc, pixel_aupro]\n"
        "variants:\n  RD global: [method=rd]\n  RD pixel loss: [method=rd, method.model.loss=pixel_cosine]\n"
    )
    text = run_comparison(str(spec), out=tmp / "out" / "tiny")
    return tmp, text


def test_comparison_table_has_every_variant_category_and_mean(comparison: tuple[Path, str]) -> None:
    tmp, text = comparison
    assert "| category | RD global | RD pixel loss |" in text
    for row in ("| bottle |", "| mean |"):
        assert text.count(row) == 2  # one table per metric
    assert "±" in text and "Seeds: [0, 1]" in text and "64 px" in text
    csv_rows = (tmp / "out" / "tiny.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 2 * 2
    assert (tmp / "out" / "tiny.md").read_text() == text


def test_report_rebuilds_table_from_run_folders(comparison: tuple[Path, str], capsys) -> None:
    tmp, _ = comparison
    results = find_runs([tmp / "runs"])
    assert len(results) == 4 and {r.column for r in results} == {"RD global", "RD pixel loss"}
    table = metric_table(results, "image_auroc")
    assert [row[0] for row in table] == ["bottle", "mean"]
    main([str(tmp / "runs"), "--metrics", "image_auroc"])
    assert "| mean |" in capsys.readouterr().out


SHIPPED_SPECS = sorted((Path(__file__).parents[1] / "conf" / "compare").glob("*.yaml"))


@pytest.mark.parametrize("spec_path", SHIPPED_SPECS, ids=lambda p: p.stem)
def test_every_shipped_comparison_spec_composes(spec_path: Path, tmp_path: Path) -> None:
    """Each variant of each conf/compare spec composes into a run config (a typo fails here, not hours into a run)."""
    from omegaconf import OmegaConf

    from kdad.runner.compare import compose_run_config

    spec = OmegaConf.load(spec_path)
    assert spec.title and spec.categories and spec.variants
    for variant, overrides in spec.variants.items():
        if OmegaConf.is_dict(overrides):  # a view on another variant's runs
            assert overrides.of in spec.variants, f"{spec_path.name}: {variant} views unknown {overrides.of}"
            continue
        category = spec.categories[0]
        cfg = compose_run_config(
            [*spec.common, *overrides, f"data.category={category}", f"paths.runs_dir={tmp_path}", "seed=0"]
        )
        assert cfg.method.name and str(cfg.data.category) == str(category)
