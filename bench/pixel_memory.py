"""Extra memory of kdad's pixel metrics over a large test set: ``python -m bench.pixel_memory --images 2200``.

Run in a fresh process (the bench starts one), so the reading is not hidden by memory an earlier measurement
freed. The real :class:`kdad.metrics.AnomalyMetrics` (every pixel metric, both AUPROs) is fed random maps and
elliptic defect masks in batches, as the test loop feeds it; the result is the peak RSS during the updates and
the final ``compute()`` minus the RSS before the first update, printed as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from kdad.metrics import AnomalyMetrics


def synthetic_batch(
    rng: np.random.Generator, batch: int, size: int, anomalous_fraction: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores [B], labels [B], maps [B,S,S] float32, masks [B,S,S] bool): one elliptic defect per anomalous image,
    with higher map values inside it so the curves are not degenerate."""
    labels = rng.random(batch) < anomalous_fraction
    grid = np.arange(size, dtype=np.float32)
    cy, cx = (rng.uniform(0.2, 0.8, (2, batch, 1, 1)) * size).astype(np.float32)
    ry, rx = (rng.uniform(0.03, 0.15, (2, batch, 1, 1)) * size).astype(np.float32)
    inside = ((grid[None, :, None] - cy) / ry) ** 2 + ((grid[None, None, :] - cx) / rx) ** 2 < 1.0
    masks = inside & labels[:, None, None]
    maps = rng.random((batch, size, size), dtype=np.float32) + 0.5 * masks
    scores = maps.reshape(batch, -1).max(axis=1)
    return (
        torch.from_numpy(scores),
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(maps),
        torch.from_numpy(masks),
    )


def measure(images: int, size: int, batch: int, anomalous_fraction: float = 0.5, seed: int = 0) -> dict:
    """Feed ``images`` maps of ``size`` x ``size`` in batches of ``batch``; returns bytes and seconds."""
    rng = np.random.default_rng(seed)
    metrics = AnomalyMetrics(pixel=True)
    first = synthetic_batch(rng, min(batch, images), size, anomalous_fraction)
    baseline = rss_bytes()
    resettable = reset_peak_rss()
    baseline_peak = peak_rss_bytes()
    started = time.perf_counter()
    update_seconds = 0.0
    done = 0
    pending = first
    while done < images:
        scores, labels, maps, masks = pending
        tick = time.perf_counter()
        metrics.update(scores, labels, maps, masks)
        update_seconds += time.perf_counter() - tick
        done += int(labels.shape[0])
        if done < images:
            pending = synthetic_batch(rng, min(batch, images - done), size, anomalous_fraction)
    tick = time.perf_counter()
    values = metrics.compute()
    compute_seconds = time.perf_counter() - tick
    peak = peak_rss_bytes()
    return {
        "images": done,
        "size": size,
        "batch": batch,
        "baseline_rss_bytes": baseline,
        "extra_bytes": max(0, peak - (baseline if resettable else baseline_peak)),
        "peak_resettable": resettable,
        "update_seconds": update_seconds,
        "compute_seconds": compute_seconds,
        "ms_per_image": 1000 * (update_seconds + compute_seconds) / max(1, done),
        "wall_seconds": time.perf_counter() - started,
        "pixel_auroc": values.get("pixel_auroc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--anomalous-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.images, args.size, args.batch, args.anomalous_fraction)))


if __name__ == "__main__":
    main()
