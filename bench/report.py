"""Targets (PASS/FAIL, all ratios inside one bench run) and the printed Markdown tables."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from kdad.runner.report import markdown_table

MIB = 2**20
GB = 1e9


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}" if whole > 0 else "-"


def _worst(rows: list[dict[str, Any]], key: str) -> tuple[float, str]:
    """Largest value of ``key`` over the rows and which (method, precision) it belongs to."""
    values = [(r[key], f"{r['method']} {r['precision']}") for r in rows if not math.isnan(r[key])]
    return max(values) if values else (math.nan, "-")


def option_speedups(results: dict[str, Any]) -> list[dict[str, Any]]:
    """For each timed option against the same method's main row: on/off ratios of the images/s, the training data
    wait with it on and off, the extra one-time cost (warm-up seconds on minus off: for ``compile`` the
    compilation) and how many training images that cost takes to pay back at the measured speeds."""
    base = {(r["method"], r["precision"]): r for r in results["rows"]}
    out = []
    for option in results["options"]:
        row = base[(option["method"], option["precision"])]
        entry = {k: option[k] for k in ("method", "precision", "option", "value", "available")}
        if not option["available"]:
            entry["error"] = option["error"]
            out.append(entry)
            continue
        on, off = (option, row) if option["value"] else (row, option)
        for key in ("train_images_per_s", "infer_b1_images_per_s", "infer_batch_images_per_s"):
            entry[key.replace("images_per_s", "speedup")] = on[key] / off[key]
        entry["data_fraction_on"] = on["train_data_fraction"]
        entry["data_fraction_off"] = off["train_data_fraction"]

        def warmup(r: dict[str, Any]) -> float:
            return r["train_warmup_seconds"] + r["infer_warmup_seconds"]

        extra = warmup(on) - warmup(off)
        saved_per_image = 1.0 / off["train_images_per_s"] - 1.0 / on["train_images_per_s"]
        entry["extra_warmup_seconds"] = extra
        if extra <= 0:
            entry["payback_images"] = 0.0 if saved_per_image >= 0 else math.inf
        else:
            entry["payback_images"] = extra / saved_per_image if saved_per_image > 0 else math.inf
        entry["default_run_images"] = option["default_run_images"]
        out.append(entry)
    return out


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def _worst_at_most(rows: list[dict[str, Any]], key: str, target: str, limit: float, limit_text: str, fmt: str) -> dict:
    """A per-method target: the worst row's ``key`` (formatted with ``fmt``) must be at most ``limit``."""
    value, where = _worst(rows, key)
    return {
        "target": target,
        "limit": f"<= {limit_text}",
        "measured": f"{fmt.format(value)} (worst: {where})",
        "pass": bool(value <= limit),
    }


def evaluate_targets(results: dict[str, Any], targets: DictConfig) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value (the worst row for per-method ones) and PASS/FAIL."""
    rows = results["rows"]
    checks: list[dict[str, Any]] = []
    wait, forward = targets.data_wait_fraction, targets.test_over_forward
    checks.append(
        _worst_at_most(rows, "train_data_fraction", "training: data wait / step time", wait, f"{wait:.0%}", "{:.1%}")
    )
    checks.append(
        _worst_at_most(
            rows, "test_over_forward", "test pass / pure forward (same images)", forward, f"{forward:.2f}", "{:.2f}"
        )
    )
    pixel = results["pixel_memory"]
    extra = pixel["extra_bytes"] / GB
    checks.append(
        {
            "target": f"pixel metrics, {pixel['images']} maps of {pixel['size']}^2: extra memory",
            "limit": f"< {targets.pixel_memory_gb:g} GB",
            "measured": f"{extra:.3f} GB",
            "pass": bool(extra < targets.pixel_memory_gb),
        }
    )
    frozen = [r for r in rows if r["frozen_teachers_eval_no_grad"] is not None]
    bad = [r["method"] for r in frozen if not r["frozen_teachers_eval_no_grad"]]
    checks.append(
        {
            "target": "frozen teachers in eval mode without autograd (after training)",
            "limit": "every method",
            "measured": f"{len(frozen) - len(bad)}/{len(frozen)} methods" + (f", not {', '.join(bad)}" if bad else ""),
            "pass": not bad,
        }
    )
    speedups = option_speedups(results)
    for option in ("channels_last", "compile"):
        checks += _speed_option_check(option, [s for s in speedups if s["option"] == option], rows)
    checks += _predict_check(results.get("deploy") or [], targets.get("predict_over_forward"))
    checks += _cache_check(results.get("fits") or [], targets.get("rd_cache_speedup"))
    checks += _versus_check(
        results.get("versus") or [], results.get("fits") or [], targets.get("stfpm_fit_over_anomalib")
    )
    return checks


def _cache_pairs(fits: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """{(method, precision): {"auto": fit, "off": fit}} of the kdad fits with the teacher cache on and off."""
    pairs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for fit in fits:
        pairs.setdefault((fit["method"], fit["precision"]), {})[fit["teacher_cache"]] = fit
    return {k: v for k, v in pairs.items() if {"auto", "off"} <= set(v)}


def teacher_share(off: dict[str, Any]) -> float:
    """The teacher's share of the training time without the cache: the cache saves at most that (1 / (1 - share)x)."""
    seconds = off.get("teacher_seconds")
    return seconds / off["train_seconds"] if seconds is not None and off["train_seconds"] > 0 else math.nan


def _cache_check(fits: list[dict[str, Any]], limit: float | None) -> list[dict[str, Any]]:
    """RD's training img/s once the cache serves (the epochs after the first), cache on / off."""
    pairs = [(k, v) for k, v in _cache_pairs(fits).items() if k[0] == "rd"]
    if limit is None or not pairs:
        return []
    checks = []
    for (method, precision), pair in pairs:
        on, off = pair["auto"], pair["off"]
        ratio = on["later_images_per_s"] / off["later_images_per_s"]
        share = teacher_share(off)
        measured = (
            f"{ratio:.2f}x ({on['later_images_per_s']:.1f} vs {off['later_images_per_s']:.1f} img/s, {precision})"
        )
        if "teacher cache: on" not in on["cache_summary"]:
            measured += f"; the cache did not switch on: {on['cache_summary']}"
        elif ratio < limit:
            ceiling = 1 / (1 - share) if share < 1 else math.inf
            measured += (
                f"; missed by {100 * (limit / ratio - 1):.0f} %: the frozen teacher is {100 * share:.0f} % of an RD "
                f"training step without the cache, so skipping it gives at most {ceiling:.2f}x (the decoder's "
                "forward + backward is the rest)"
            )
        checks.append(
            {
                "target": f"{method}: train img/s with the teacher cache / without (epochs after the first)",
                "limit": f">= {limit:.2f}",
                "measured": measured,
                "pass": bool(ratio >= limit),
            }
        )
    return checks


def versus_ratio(entry: dict[str, Any]) -> float:
    """anomalib's fit seconds / kdad's (data set-up + fit) for one kdad-vs-anomalib entry (NaN: not measured)."""
    other = entry["anomalib"]
    if not other.get("available"):
        return math.nan
    kdad = entry["kdad"]
    return other["fit_seconds"] / (kdad["setup_seconds"] + kdad["fit_seconds"])


def _versus_check(versus: list[dict[str, Any]], fits: list[dict[str, Any]], limit: float | None) -> list[dict]:
    """kdad's STFPM fit against anomalib's (same data, epochs, teacher and weights): anomalib s / kdad s."""
    entries = [v for v in versus if v["method"] == "stfpm"]
    if limit is None or not entries:
        return []
    checks = []
    pairs = _cache_pairs(fits)
    for entry in entries:
        other, kdad = entry["anomalib"], entry["kdad"]
        target = f"stfpm: kdad fit vs anomalib's (same data, epochs, teacher weights; {entry['precision']})"
        if not other.get("available"):
            checks.append(
                {
                    "target": target,
                    "limit": f">= {limit:.2f}",
                    "measured": f"unavailable: {other['error']}",
                    "pass": False,
                }
            )
            continue
        ratio = versus_ratio(entry)
        kdad_seconds = kdad["setup_seconds"] + kdad["fit_seconds"]
        measured = f"{ratio:.2f}x (anomalib {other['fit_seconds']:.1f} s, kdad {kdad_seconds:.1f} s)"
        if ratio < limit:
            pair = pairs.get(("stfpm", entry["precision"]))
            share = teacher_share(pair["off"]) if pair else math.nan
            measured += (
                f"; missed by {100 * (limit / ratio - 1):.0f} %: kdad's step is the student's forward + backward "
                f"plus the teacher's forward in the first epoch only (the teacher is {100 * share:.0f} % of a step "
                "without the cache); more epochs raise the ratio (the cache's share of the fit grows)"
            )
        checks.append(
            {"target": target, "limit": f">= {limit:.2f}", "measured": measured, "pass": bool(ratio >= limit)}
        )
    return checks


def fit_tables(results: dict[str, Any]) -> list[str]:
    """Lines of the several-epoch fit tables: the teacher cache on / off, and kdad vs anomalib."""
    lines: list[str] = []
    pairs = _cache_pairs(results.get("fits") or [])
    if pairs:
        cache_lines = []
        for (method, precision), pair in pairs.items():
            on, off = pair["auto"], pair["off"]
            for fit in (on, off):
                first = fit is on
                cache_lines.append(
                    [
                        method,
                        precision,
                        "auto" if first else "off",
                        f"{len(fit['epochs'])} x {fit['epochs'][0]['images']}",
                        f"{fit['fit_seconds']:.1f}",
                        f"{fit['first_epoch_images_per_s']:.1f}",
                        f"{fit['later_images_per_s']:.1f}",
                        f"{on['later_images_per_s'] / off['later_images_per_s']:.2f}x" if first else "-",
                        f"{off['fit_seconds'] / on['fit_seconds']:.2f}x" if first else "-",
                        "-" if first else f"{100 * teacher_share(off):.0f} %",
                        fit["cache_summary"].removeprefix("teacher cache: ")[:90],
                    ]
                )
        header = [
            "method",
            "precision",
            "teacher cache",
            "epochs x images",
            "fit s",
            "img/s epoch 1",
            "img/s later epochs",
            "later on ÷ off",
            "fit on ÷ off",
            "teacher % of step (off)",
            "cache",
        ]
        lines += [
            "Training with the teacher-feature cache (speed.teacher_cache=auto) and without (off), fits of several "
            "epochs on fresh models:",
            "",
            _table(header, cache_lines),
        ]
    versus = results.get("versus") or []
    if versus:
        versus_lines = []
        for entry in versus:
            kdad, other = entry["kdad"], entry["anomalib"]
            kdad_seconds = kdad["setup_seconds"] + kdad["fit_seconds"]
            later = kdad["later_images_per_s"]
            if not other.get("available"):
                versus_lines.append(
                    [
                        entry["method"],
                        entry["precision"],
                        "-",
                        f"{kdad_seconds:.1f}",
                        "unavailable",
                        "-",
                        f"{later:.1f}",
                        "-",
                        other["error"][:80],
                    ]
                )
                continue
            other_later = other["epochs"][1:]
            other_rate = (
                sum(e["images"] for e in other_later) / sum(e["seconds"] for e in other_later)
                if other_later
                else math.nan
            )
            spec = other["spec"]
            versus_lines.append(
                [
                    entry["method"],
                    entry["precision"],
                    f"{spec['backbone']} ({other['weights']})",
                    f"{kdad['setup_seconds']:.1f} + {kdad['fit_seconds']:.1f}",
                    f"{other['fit_seconds']:.1f}",
                    f"{versus_ratio(entry):.2f}x",
                    f"{later:.1f}",
                    f"{other_rate:.1f}",
                    other["framework"],
                ]
            )
        header = [
            "method",
            "precision",
            "teacher (weights)",
            "kdad setup + fit s",
            "anomalib fit s",
            "anomalib ÷ kdad",
            "kdad img/s later epochs",
            "anomalib img/s later epochs",
            "anomalib",
        ]
        lines += [
            "",
            "kdad against anomalib's implementation of the same method (same data folder, image size, batch size, "
            "epochs, threads; validation off in both):",
            "",
            _table(header, versus_lines),
        ]
    return lines


def _predict_check(deploy: list[dict[str, Any]], limit: float | None) -> list[dict[str, Any]]:
    """``kdad.predict`` end to end / pure forward over the same images, worst measured method (none measured: no
    check)."""
    measured = [(d["predict"]["predict_over_forward"], d["method"]) for d in deploy if d.get("predict")]
    if not measured or limit is None:
        return []
    value, where = max(measured)
    return [
        {
            "target": "kdad.predict (torch) end to end / pure forward (same images)",
            "limit": f"<= {limit:.2f}",
            "measured": f"{value:.2f} (worst: {where}, {len(measured)} methods)",
            "pass": bool(value <= limit),
        }
    ]


def _speed_option_check(option: str, measured: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict]:
    """``speed.<option>`` must be on by default exactly when it wins: >= 1.05x in training and in inference
    (geometric means over the measured methods), and its one-time cost paid back within a default run of every
    measured method (``trainer.max_epochs`` x ``data.n_train`` training images)."""
    if not measured:
        return []
    default_on = bool(rows[0]["speed"][option])
    target = f"speed.{option}: on by default only where it wins"
    limit = "default = measurement (win: >= 1.05x train and inference, one-time cost paid back in a default run)"
    available = [s for s in measured if s["available"]]
    if not available:
        errors = "; ".join(s["error"] for s in measured)[:160]
        return [{"target": target, "limit": limit, "measured": f"unavailable ({errors})", "pass": not default_on}]
    train = _geomean([s["train_speedup"] for s in available])
    infer = _geomean([s["infer_batch_speedup"] for s in available])
    payback = max(s["payback_images"] / s["default_run_images"] for s in available)
    wins = train >= 1.05 and infer >= 1.05 and payback <= 1.0
    measured_text = (
        f"on/off {train:.2f}x train, {infer:.2f}x inference (geometric mean of {len(available)}); one-time cost "
        f"paid back after {payback:.2g} default runs; default {'on' if default_on else 'off'}"
    )
    return [{"target": target, "limit": limit, "measured": measured_text, "pass": wins == default_on}]


def _table(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join(markdown_table(header, lines))


def format_report(results: dict[str, Any]) -> str:
    """Markdown tables: throughput and memory, time splits, speed options, targets."""
    rows = results["rows"]
    env = results["environment"]
    gpu = "peak_gpu_bytes" in (rows[0] if rows else {})
    header = [
        "method",
        "precision",
        "train img/s",
        "infer img/s (b1)",
        f"infer img/s (b{rows[0]['batch_size'] if rows else '?'})",
        "peak RSS MiB",
        *(["peak GPU MiB"] if gpu else []),
        "params trainable / total (M)",
    ]
    lines = [
        [
            r["method"],
            r["precision"],
            f"{r['train_images_per_s']:.1f}",
            f"{r['infer_b1_images_per_s']:.1f}",
            f"{r['infer_batch_images_per_s']:.1f}",
            f"{r['peak_rss_bytes'] / MIB:.0f}",
            *([f"{r['peak_gpu_bytes'] / MIB:.0f}"] if gpu else []),
            f"{r['params_trainable'] / 1e6:.2f} / {r['params_total'] / 1e6:.2f}",
        ]
        for r in rows
    ]
    size = f"{rows[0]['image_size']} px, batch {rows[0]['batch_size']}, teacher {rows[0]['teacher']}" if rows else ""
    parts = [f"## kdad bench: {env['device']} ({size}; {env['cpu_count']} CPUs, {env['torch_threads']} threads)"]
    parts.append(_table(header, lines))
    split_header = [
        "method",
        "precision",
        "epoch % data / model / rest",
        "test % data / model / maps / metrics / rest",
        "test ÷ forward",
    ]
    split_lines = []
    for r in rows:
        epoch = r["train_seconds"]
        test = r["test_seconds"]
        split_lines.append(
            [
                r["method"],
                r["precision"],
                " / ".join(
                    _pct(r[k], epoch) for k in ("train_data_seconds", "train_model_seconds", "train_rest_seconds")
                ),
                " / ".join(_pct(r[f"test_{k}_seconds"], test) for k in ("data", "model", "maps", "metrics", "rest")),
                f"{r['test_over_forward']:.2f}",
            ]
        )
    parts += ["", "Time split of one training epoch and of one test pass:", "", _table(split_header, split_lines)]
    speedups = option_speedups(results)
    if speedups:
        option_lines = []
        for s in speedups:
            head = [s["method"], s["precision"], s["option"]]
            if not s["available"]:
                option_lines.append([*head, "unavailable", "-", "-", "-", "-", s["error"][:80]])
                continue
            payback = s["payback_images"]
            option_lines.append(
                [
                    *head,
                    f"{s['train_speedup']:.2f}x",
                    f"{s['infer_b1_speedup']:.2f}x",
                    f"{s['infer_batch_speedup']:.2f}x",
                    f"{100 * s['data_fraction_on']:.1f} / {100 * s['data_fraction_off']:.1f}",
                    f"{s['extra_warmup_seconds']:+.1f}",
                    "never" if math.isinf(payback) else f"{payback:.0f}",
                ]
            )
        option_header = [
            "method",
            "precision",
            "option",
            "train",
            "infer b1",
            "infer batch",
            "data wait % on / off",
            "one-time s",
            "paid back after (images)",
        ]
        parts += [
            "",
            "Options (images/s with the option on ÷ off; one-time cost = warm-up seconds on − off):",
            "",
            _table(option_header, option_lines),
        ]
    if results.get("deploy"):
        limit = ((results.get("settings") or {}).get("targets") or {}).get("predict_over_forward")
        parts += ["", *deploy_tables(results["deploy"], limit)]
    fits = fit_tables(results)
    if fits:
        parts += ["", *fits]
    targets = results["targets"]
    target_lines = [[c["target"], c["limit"], c["measured"], "PASS" if c["pass"] else "FAIL"] for c in targets]
    parts += ["", "Targets:", "", _table(["target", "limit", "measured", "result"], target_lines)]
    load = env.get("load_average_start")
    if load:
        end = env.get("load_average_end") or [math.nan]
        parts.append(f"\nload average (1 min) at start {load[0]:.2f}, at end {end[0]:.2f}")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- deployment
RUNTIMES = ("torch", "onnx", "openvino")


def _rate(figures: dict[str, Any] | None, key: str, torch_figures: dict[str, Any] | None) -> str:
    """images/s and, for an exported runtime, its ratio to torch on the same device."""
    if figures is None:
        return "-"
    text = f"{figures[key]:.1f}"
    if torch_figures is not None and figures is not torch_figures:
        text += f" ({figures[key] / torch_figures[key]:.2f}x)"
    return text


def _count(value: float) -> str:
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value:.0f}"


def deploy_tables(deploy: list[dict[str, Any]], predict_limit: float | None = None) -> list[str]:
    """Lines of the deployment tables: runtime speeds, exported-vs-torch deviations, kdad.predict end to end
    (with PASS/FAIL against ``predict_limit``, the ``predict_over_forward`` target, when given)."""
    first = deploy[0]
    batch = first["batch_size"]
    speed_lines = []
    for d in deploy:
        exports = d["exports"]
        export_seconds = " / ".join(
            f"{exports[f]['seconds']:.0f}" if exports[f]["available"] else "failed" for f in ("onnx", "openvino")
        )
        for place, figures in d["speed"].items():
            torch_figures = figures.get("torch")
            label = place if place == "cpu" else f"{place} (torch only)"
            speed_lines.append(
                [
                    d["method"],
                    label,
                    *(_rate(figures.get(r), "b1_images_per_s", torch_figures) for r in RUNTIMES),
                    *(_rate(figures.get(r), "batch_images_per_s", torch_figures) for r in RUNTIMES),
                    export_seconds if place == "cpu" else "-",
                ]
            )
    speed_header = [
        "method",
        "device",
        *(f"{r} b1" for r in RUNTIMES),
        *(f"{r} b{batch}" for r in RUNTIMES),
        "export s onnx / openvino",
    ]
    counts = f"{first['images_b1']} images at b1, {first['images']} at b{batch}"
    lines = [
        f"Deployment: exported float32 models (ONNX Runtime, OpenVINO; CPU) against kdad's torch eval path, images/s "
        f"on the same test images ({counts}; taking turns; (x) = ÷ torch on the same device):",
        "",
        _table(speed_header, speed_lines),
    ]
    deviation_lines = []
    for d in deploy:
        for fmt in ("onnx", "openvino"):
            export = d["exports"][fmt]
            if not export["available"]:
                deviation_lines.append([d["method"], fmt, "unavailable", "-", "-", "-", "-", export["error"][:80]])
                continue
            dev = d["deviation"][fmt]
            pixels = f"{dev['pixel_flips']} / {_count(dev['pixels'])}" if "pixel_flips" in dev else "-"
            deviation_lines.append(
                [
                    d["method"],
                    fmt,
                    f"{dev['max_abs_map']:.2g}",
                    f"{dev['max_abs_score']:.2g}",
                    f"{dev['relative']:.2g}",
                    d["thresholds"]["source"],
                    f"{dev['image_flips']} / {dev['images']} ({dev['nok_torch']} NOK)",
                    pixels,
                ]
            )
    deviation_header = [
        "method",
        "runtime",
        "max abs map dev",
        "max abs score dev",
        "÷ map range",
        "threshold",
        "decisions flipped",
        "mask pixels flipped",
    ]
    lines += [
        "",
        "Exported vs torch on the same images (the b"
        f"{batch} outputs; decisions: NOK iff score > threshold, torch's NOK count in brackets):",
        "",
        _table(deviation_header, deviation_lines),
    ]
    predicted = [d for d in deploy if d.get("predict")]
    if predicted:
        predict_lines = []
        for d in predicted:
            p = d["predict"]
            predict_lines.append(
                [
                    d["method"],
                    p["device"],
                    f"{p['images']}",
                    f"{p['batch_size']} / {p['workers']}",
                    f"{p['predict_images_per_s']:.1f}",
                    f"{p['forward_images_per_s']:.1f}",
                    f"{p['model_in_predict_over_forward']:.2f}",
                    f"{p['predict_over_forward']:.2f}",
                    *(
                        []
                        if predict_limit is None
                        else ["PASS" if p["predict_over_forward"] <= predict_limit else "FAIL"]
                    ),
                ]
            )
        predict_header = [
            "method",
            "device",
            "PNGs",
            "batch / workers",
            "kdad.predict img/s",
            "pure forward img/s",
            "model in predict ÷ forward",
            "predict ÷ forward",
            *([] if predict_limit is None else [f"≤ {predict_limit:g}"]),
        ]
        lines += [
            "",
            "kdad.predict (torch backend: decode, model, masks, overlays, CSV) end to end against the pure forward of "
            "the same images:",
            "",
            _table(predict_header, predict_lines),
        ]
    return lines
