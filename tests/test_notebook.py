"""notebooks/review.ipynb runs headless on a tiny sweep; the helpers it uses (kdad.runner.review, .notebook)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import torch
from fixtures import write_mvtec
from helpers import compose_config
from nbclient import NotebookClient

from kdad.methods.base import AnomalyOutput
from kdad.records import TestRecord as Record
from kdad.runner import notebook, review
from kdad.runner.sweep import write_sweep_summary
from kdad.runner.train import run

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "review.ipynb"
TINY = ["data.image_size=64", "trainer.max_epochs=1", "data.batch_size=4", "logger=csv", "review_cases=3"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RD on two categories, STFPM on one (a method lacking a category must not break the review)."""
    tmp = tmp_path_factory.mktemp("review")
    write_mvtec(tmp / "data", ("bottle", "cable"), n_train=4, n_test_good=3, n_per_defect=2)
    data = ["data=mvtec", f"data.root={tmp / 'data'}", "tag=review", *TINY]
    for method, category in (("rd", "bottle"), ("rd", "cable"), ("stfpm", "bottle")):
        run(compose_config([*data, f"method={method}", f"data.category={category}"], tmp), quiet=True)
    sweep_dir = tmp / "runs" / "review"
    write_sweep_summary(sweep_dir, None)
    return sweep_dir


def _kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec running this interpreter (the project venv), found first through JUPYTER_PATH."""
    name = "kdad-review-test"
    spec = tmp_path / "jupyter" / "kernels" / name
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return name


def test_review_notebook_runs_headless(tiny_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDAD_REVIEW_SWEEPS", str(tiny_sweep))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures become outputs
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=_kernel(tmp_path, monkeypatch),
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "3 finished runs" in text
    rich = [o.data for o in outputs if o.output_type in ("display_data", "execute_result")]
    tables = [d["text/markdown"] for d in rich if "text/markdown" in d]
    assert tables and "| category | rd | stfpm |" in tables[0] and "| mean |" in tables[0]
    assert any("text/html" in d and "rd I-AUROC" in d["text/html"] for d in rich)  # the DataFrame
    images = [d for d in rich if "image/png" in d]
    assert len(images) == 3 + 2  # a bar chart per metric, then the two galleries


def test_saved_cases_are_the_worst_ones_and_load_back(tmp_path: Path) -> None:
    records = [
        Record(f"/d/{i}.png", "good" if i < 4 else "crack", int(i >= 4), s)
        for i, s in enumerate([0.1, 0.9, 0.3, 0.5, 0.2, 0.8, 0.4, 0.05])
    ]
    chosen = review.select_cases(records, 2)
    assert chosen == [(7, "missed_defect"), (4, "missed_defect"), (1, "false_alarm"), (3, "false_alarm")]

    class Model(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> AnomalyOutput:
            maps = images.mean(1)
            return AnomalyOutput(maps.amax((1, 2)), maps)

    dataset = [
        {
            "image": torch.full((3, 32, 32), records[i].score),  # the map's max is the record's score
            "mask": torch.ones(1, 32, 32) * (i >= 4),
            "has_mask": torch.tensor(True),
        }
        for i in range(len(records))
    ]
    path = review.save_review_cases(tmp_path, Model(), dataset, records, 2, batch_size=3)
    assert path is not None and path.stat().st_size < 50_000
    cases = review.load_cases(tmp_path)
    assert [c.kind for c in cases] == ["missed_defect"] * 2 + ["false_alarm"] * 2
    assert [c.image_path for c in cases] == ["/d/7.png", "/d/4.png", "/d/1.png", "/d/3.png"]
    assert cases[0].anomaly_map.shape == (32, 32) and float(cases[0].anomaly_map.mean()) == pytest.approx(
        0.05, abs=1e-3
    )
    assert cases[0].mask is not None and cases[0].mask.all() and not cases[2].mask.any()
    assert review.load_cases(tmp_path, "false_alarm")[0].score == 0.9
    # One colour scale for the run: from the lowest value shown to the highest score of the test set.
    assert (cases[0].vmin, cases[0].vmax) == (pytest.approx(0.05, abs=1e-3), 0.9)
    assert review.load_cases(tmp_path / "nothing") == []


def test_wandb_results_are_read_from_run_summaries() -> None:
    def fake_run(category: str, auroc: float, group: str) -> SimpleNamespace:
        config = {
            "data": {"_target_": "kdad.data.VisADataModule", "category": category, "image_size": 256},
            "method": {"name": "dskd", "aupro_limit": 0.3},
            "teacher": {"backbone": "wide_resnet50_2.tv_in1k", "weights": "hub"},
            "checkpoint": {"policy": "last"},
            "seed": 0,
        }
        return SimpleNamespace(summary={"test/image_auroc": auroc, "_step": 3}, config=config, group=group)

    runs = [fake_run("candle", 0.9, "g"), fake_run("pcb1", 0.7, "g"), SimpleNamespace(summary={}, config={})]

    class Api:
        def runs(self, path: str, filters: dict) -> list:
            assert path == "me/kdad" and filters == {"group": "g"}
            return runs

    results = notebook.load_wandb_results("me/kdad", "g", api=Api())
    assert [(r.column, r.category, r.metrics) for r in results] == [
        ("dskd", "candle", {"image_auroc": 0.9}),
        ("dskd", "pcb1", {"image_auroc": 0.7}),
    ]
    assert results[0].protocol["benchmark"] == "visa"
    frame = notebook.results_frame(results, ["image_auroc"])
    assert frame.loc[("visa", "mean"), "dskd I-AUROC"] == pytest.approx(80.0)
    assert np.isfinite(frame.to_numpy()).all()


def test_relative_sources_are_resolved_against_the_repository(tmp_path: Path) -> None:
    absolute = str(tmp_path / "abs")
    resolved = notebook.resolve_sources(["runs/a", "RD=runs/b", absolute], tmp_path / "repo")
    assert resolved == [str(tmp_path / "repo/runs/a"), f"RD={tmp_path / 'repo/runs/b'}", absolute]
