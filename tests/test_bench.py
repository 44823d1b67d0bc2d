"""`make bench` end to end at tiny settings, and the speed options of a run (no timing thresholds here: the
targets are checked by the bench itself, on ratios measured in one run)."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from helpers import compose_config

from bench.deploy import decision_deviation, decision_thresholds, interleaved
from bench.method import make_trainer, parameter_counts, run_overrides
from bench.runner import load_settings, run_bench
from bench.timing import Bucket, timed_attribute
from kdad.methods.aand.module import stage_lengths
from kdad.metrics import AnomalyMetrics
from kdad.runner.compare import compose_run_config
from kdad.runner.speed import apply_speed

TINY = [
    "bench.methods=[rd,stfpm]",
    "bench.image_size=64",
    "bench.batch_size=4",
    "bench.train_images=8",
    "bench.test_good=2",
    "bench.test_per_defect=1",
    "bench.infer_images_b1=2",
    "bench.infer_batches=1",
    "bench.threads=2",
    "bench.options.channels_last=[rd]",
    "bench.options.compile=[]",
    "bench.options.workers=[stfpm]",
    "bench.pixel_memory.images=24",
    "bench.pixel_memory.size=64",
    "bench.pixel_memory.batch=8",
    # deployment: rd only, one batch, one round, six PNGs for kdad.predict
    "bench.deploy.methods=[rd]",
    "bench.deploy.batches=1",
    "bench.deploy.images_b1=2",
    "bench.deploy.rounds=1",
    "bench.deploy.check_images=1",
    "bench.deploy.predict.methods=[rd]",
    "bench.deploy.predict.images=6",
    "bench.deploy.predict.rounds=1",
    # fits of several epochs (the quick smoke: 2 epochs): STFPM with the teacher cache on and off; anomalib's side
    # needs its own venv (built from the package index), so it is left to `make bench`
    "bench.fit.methods=[stfpm]",
    "bench.fit.epochs=2",
    "bench.fit.anomalib.enabled=false",
]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    output = tmp / "cpu.json"
    paths = [f"bench.output={output}", f"bench.workdir={tmp}/work", f"bench.overrides=[data.cache_dir={tmp}/resized]"]
    settings = load_settings([*TINY, *paths])
    printed: list[str] = []
    results = run_bench(settings, say=lambda *a, **_: printed.append(" ".join(map(str, a))))
    return results, "\n".join(printed), output


def test_bench_writes_every_figure(bench_run: tuple[dict, str, Path]) -> None:
    results, printed, output = bench_run
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"rd", "stfpm"} and all(r["precision"] == "32-true" for r in rows.values())
    for row in rows.values():
        # 8 training images in batches of 4, the first batch is warm-up; 2 good + 4 defect types x 1 test images
        assert row["train_images"] == 4 and row["test_images"] == 6 and row["train_epochs"] == 1
        (epoch,) = row["train_per_epoch"]
        assert epoch["images"] == 4 and epoch["seconds"] == pytest.approx(row["train_seconds"])
        for key in ("train_images_per_s", "infer_b1_images_per_s", "infer_batch_images_per_s", "pure_forward_seconds"):
            assert row[key] > 0, key
        assert 0 <= row["train_data_fraction"] < 1
        parts = ("data", "model", "maps", "metrics")
        assert sum(row[f"test_{p}_seconds"] for p in parts) <= row["test_seconds"] * 1.001
        assert row["test_model_seconds"] > 0 and row["test_metrics_seconds"] > 0
        rounds = row["test_over_forward_rounds"]
        assert len(rounds) == 3 and min(rounds) <= row["test_over_forward"] <= max(rounds)
        assert 0 < row["params_trainable"] < row["params_total"]
        assert row["frozen_teachers_eval_no_grad"] is True
        assert row["peak_rss_bytes"] >= row["rss_start_bytes"] > 0
        assert row["speed"] == {
            "channels_last": True,
            "compile": False,
            "teacher_cache": "auto",
            "teacher_cache_memory_gb": 4.0,
            "teacher_cache_dir": None,
        }
    # STFPM's student is the teacher's architecture: as many trainable parameters as the frozen teacher holds
    assert rows["stfpm"]["params_trainable"] * 2 == rows["stfpm"]["params_total"]
    layout, workers = results["options"]
    assert layout["method"] == "rd" and layout["option"] == "channels_last" and layout["value"] is False
    # STFPM synthesises nothing, so `auto` gave its CPU training loader no worker: the flipped run has one
    assert workers["method"] == "stfpm" and workers["option"] == "workers" and workers["value"] is True
    assert rows["stfpm"]["train_loader_workers"] == 0 and workers["train_loader_workers"] == 1
    assert all(
        o["available"] and o["train_images_per_s"] > 0 and o["default_run_images"] == 2000 for o in (layout, workers)
    )
    pixel = results["pixel_memory"]
    assert pixel["images"] == 24 and pixel["size"] == 64 and pixel["extra_bytes"] >= 0
    targets = {t["target"].split(":")[0]: t for t in results["targets"]}
    assert {"training", "test pass / pure forward (same images)", "speed.channels_last"} <= set(targets)
    assert targets["frozen teachers in eval mode without autograd (after training)"]["pass"] is True
    for line in ("| rd | 32-true |", "| stfpm | 32-true |", "Targets:", "| rd | 32-true | channels_last |"):
        assert line in printed


def test_bench_measures_deployment(bench_run: tuple[dict, str, Path]) -> None:
    """rd's exports against torch on the same images, their deviation and decisions, and kdad.predict end to end
    (no timing thresholds: only that every figure is there and the exports agree with torch)."""
    results, printed, _ = bench_run
    (deploy,) = results["deploy"]  # bench.deploy.methods=[rd]: stfpm has none
    assert deploy["method"] == "rd" and deploy["images"] == 4 and deploy["images_b1"] == 2
    assert set(deploy["speed"]) == {"cpu"} and set(deploy["speed"]["cpu"]) == {"torch", "onnx", "openvino"}
    for figures in deploy["speed"]["cpu"].values():
        assert figures["b1_images_per_s"] > 0 and figures["batch_images_per_s"] > 0
    assert deploy["thresholds"]["source"].startswith("median score")  # the bench's module has no thresholds
    for fmt in ("onnx", "openvino"):
        assert deploy["exports"][fmt]["available"] and deploy["exports"][fmt]["seconds"] > 0
        deviation = deploy["deviation"][fmt]
        assert deviation["images"] == 4 and deviation["relative"] < 1e-4 and deviation["image_flips"] == 0
        assert deviation["nok_torch"] == 2 and deviation["pixels"] == 4 * 64 * 64
    predict = deploy["predict"]
    assert predict["images"] == 6 and predict["backend"] == "torch" and len(predict["rounds"]) == 1
    assert predict["predict_over_forward"] > 0 and predict["batch_size"] == 16 and predict["workers"] == 4
    targets = {t["target"]: t for t in results["targets"]}
    assert "kdad.predict (torch) end to end / pure forward (same images)" in targets
    for line in ("| rd | cpu |", "| rd | onnx |", "| rd | openvino |", "kdad.predict img/s"):
        assert line in printed


def test_deploy_turns_and_decision_flips() -> None:
    calls: list[str] = []

    def runner(name: str, shift: float) -> object:
        def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append(name)
            return batch.sum(axis=(1, 2, 3)) + shift, batch[:, 0] + shift

        return run

    inputs = [np.full((2, 3, 4, 4), v, dtype=np.float32) for v in (0.0, 1.0)]
    seconds, outputs = interleaved({"a": runner("a", 0.0), "b": runner("b", 0.5)}, inputs, torch.device("cpu"), 2)
    # each turn: one warm-up call, then every input; the first runner changes from round to round
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 and set(seconds) == {"a", "b"}
    assert [len(outputs[name]) for name in ("a", "b")] == [2, 2]  # the first round's outputs
    reference = {"score": np.array([0.0, 1.0, 2.0, 3.0]), "map": np.zeros((4, 2, 2))}
    thresholds, source = decision_thresholds(None, reference)
    assert thresholds.image.value == 1.5 and source.startswith("median score")
    exported = {"score": np.array([0.0, 1.6, 2.0, 3.0]), "map": np.zeros((4, 2, 2))}
    figures = decision_deviation(reference, exported, thresholds)
    assert figures["image_flips"] == 1 and figures["nok_torch"] == 2 and figures["max_abs_score"] == pytest.approx(0.6)
    assert figures["pixel_flips"] == 0 and figures["pixels"] == 16


def test_bench_settings_reject_unknown_keys_and_devices() -> None:
    with pytest.raises(Exception, match="not_a_setting"):
        load_settings(["bench.not_a_setting=1"])
    with pytest.raises(ValueError, match="bench.device"):
        load_settings(["bench.device=tpu"])
    assert load_settings(["bench.method_overrides.rd=[seed=1]"]).bench.method_overrides.rd == ["seed=1"]


def test_timed_attribute_times_and_restores() -> None:
    bucket = Bucket()
    metrics = AnomalyMetrics(pixel=False)
    with timed_attribute(AnomalyMetrics, "update", bucket, torch.device("cpu")):
        metrics.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))
    metrics.update(torch.tensor([0.2]), torch.tensor([0]))
    assert bucket.calls == 1 and bucket.seconds > 0  # the call after the context is not timed
    assert AnomalyMetrics.update.__qualname__ == "AnomalyMetrics.update" and metrics.n_images == 3
    module = torch.nn.Linear(2, 2)
    with timed_attribute(module, "forward", bucket, torch.device("cpu")):
        module(torch.zeros(1, 2))
    assert bucket.calls == 2 and "forward" not in vars(module)


def test_speed_options_compose_and_apply(tmp_path: Path) -> None:
    cfg = compose_config(["data.image_size=64"], tmp_path)
    # on where measured to win (README); the teacher cache wherever it cannot change results
    assert {k: cfg.speed[k] for k in ("channels_last", "compile", "teacher_cache")} == {
        "channels_last": True,
        "compile": False,
        "teacher_cache": "auto",
    }
    plain = hydra.utils.instantiate(cfg.method).eval()
    fast = hydra.utils.instantiate(cfg.method).eval()
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    apply_speed(fast, **cfg.speed)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(getattr(child, "_compiled_call_impl", None) is None for child in fast.model.children())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain.model(images).anomaly_map, fast.model(images).anomaly_map, atol=1e-4)
    apply_speed(fast, compile=True)  # lazy: nothing compiles until the first call
    compiled = {name for name, child in fast.model.named_children() if child._compiled_call_impl is not None}
    assert compiled == {"teacher", "bottleneck", "decoder"}  # the networks; not the parameter-free map head
    assert fast.teacher_cache.mode == "auto"


def test_bench_fits_with_the_teacher_cache_on_and_off(bench_run: tuple[dict, str, Path]) -> None:
    """bench.fit at the smoke size: STFPM's two fits of 2 epochs, the cache on (it fills in epoch 1, serves in
    epoch 2) and off (the teacher's calls timed), their table; no anomalib side (disabled), so no versus target."""
    results, printed, _ = bench_run
    fits = {f["teacher_cache"]: f for f in results["fits"]}
    assert set(fits) == {"auto", "off"} and results["versus"] == []
    on, off = fits["auto"], fits["off"]
    for fit in (on, off):
        assert fit["method"] == "stfpm" and [e["images"] for e in fit["epochs"]] == [8, 8]
        assert fit["fit_seconds"] > 0 and fit["later_images_per_s"] > 0 and fit["setup_seconds"] >= 0
    assert on["cache_summary"].startswith("teacher cache: on (teacher: memory")
    assert on["cache_stats"]["teacher"]["computed"] == 8 and on["cache_stats"]["teacher"]["hits"] == 8
    assert off["cache_summary"] == "teacher cache: off (speed.teacher_cache=off)" and off["teacher_seconds"] > 0
    assert "Training with the teacher-feature cache" in printed and "| stfpm | 32-true | auto | 2 x 8 |" in printed
    targets = [t["target"] for t in results["targets"]]
    assert not any(t.startswith(("rd: train img/s", "stfpm: kdad fit vs anomalib")) for t in targets)


def test_fit_targets_say_why_they_miss() -> None:
    from bench.report import _cache_check, _versus_check

    def fit(cache: str, rate: float, teacher: float | None) -> dict:
        summary = "teacher cache: on (teacher: memory (cpu), 1 MiB)" if cache == "auto" else "teacher cache: off (x)"
        return {
            "method": "rd",
            "precision": "32-true",
            "teacher_cache": cache,
            "later_images_per_s": rate,
            "cache_summary": summary,
            "teacher_seconds": teacher,
            "train_seconds": 10.0,
        }

    (check,) = _cache_check([fit("auto", 12.0, None), fit("off", 10.0, 2.0)], 1.3)
    assert not check["pass"] and "1.20x" in check["measured"] and "20 % of an RD training step" in check["measured"]
    assert "at most 1.25x" in check["measured"]
    versus = {
        "method": "stfpm",
        "precision": "32-true",
        "kdad": {"setup_seconds": 1.0, "fit_seconds": 9.0},
        "anomalib": {"available": True, "fit_seconds": 20.0},
    }
    (check,) = _versus_check([versus], [], 1.5)
    assert check["pass"] and check["measured"].startswith("2.00x")
    versus["anomalib"] = {"available": False, "error": "no venv"}
    (check,) = _versus_check([versus], [], 1.5)
    assert not check["pass"] and "unavailable: no venv" in check["measured"]


@pytest.mark.parametrize(
    ("extra", "epochs", "stages"),
    [([], 2, (1, 1)), (["method.stage1_epochs=3"], 4, (3, 1)), (["method.stage2_epochs=2"], 3, (1, 2))],
)
def test_bench_trains_each_aand_stage_once(extra: list[str], epochs: int, stages: tuple, tmp_path: Path) -> None:
    """AAND's stage lengths follow trainer.max_epochs: the bench's trainer gives each stage one epoch (a stage
    length the config fixes as set), which the module's own split of that run gives back."""
    settings = load_settings(["bench.image_size=64"]).bench
    cfg = compose_run_config(run_overrides(settings, "aand", "32-true", tmp_path, extra))
    module = hydra.utils.instantiate(cfg.method)
    trainer = make_trainer(cfg, module, [])
    assert trainer.max_epochs == epochs
    assert stage_lengths(epochs, *module.requested_epochs, module.stage1_fraction) == stages
    counts = parameter_counts(module.model)
    assert counts["trainable"] == sum(p.numel() for p in module.model.trainable_parameters()) < counts["total"]
