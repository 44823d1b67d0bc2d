"""Fixed-memory score histogram whose range grows while streaming, with exact re-binning."""

from __future__ import annotations

import math

import numpy as np

# Bin indices are kept below 2**60 in magnitude so that floor(x / width) is an exact float64 integer that
# fits in int64 with headroom; a finer grid than that could not separate float64 values anyway.
_INDEX_BITS = 60


class GrowingHistogram:
    """Histogram of unbounded scores over a power-of-two grid that coarsens as the range grows.

    Bin ``g`` (a global integer) covers ``[g * 2**e, (g + 1) * 2**e)``. The array holds ``n_bins``
    consecutive bins starting at ``origin``. When new scores do not fit, the exponent ``e`` is raised
    until they do: every new bin is then the union of ``2**k`` aligned old bins, so old counts are
    merged exactly and the result never depends on the order or batching of the data. The final bin
    width is the smallest power of two for which the global ``[min, max]`` spans at most ``n_bins``
    bins, i.e. at least ``(max - min) / n_bins`` and below ``2 (max - min) / (n_bins - 1)`` (unless the
    range is below ~2**-44 of the largest magnitude, where the width stops at the float64 resolution).

    It keeps ``n_channels`` integer count channels (e.g. normal / anomalous pixels) and one float
    channel of per-sample weights. Memory is ``n_bins * (8 * n_channels + 8)`` bytes regardless of how
    many samples are added.
    """

    def __init__(self, n_bins: int = 2**16, n_channels: int = 2) -> None:
        if n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {n_bins}")
        self.n_bins = int(n_bins)
        self.n_channels = int(n_channels)
        self.counts = np.zeros((self.n_channels, self.n_bins), dtype=np.int64)
        self.weights = np.zeros(self.n_bins, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget all data; the arrays are zeroed in place (no reallocation)."""
        self.counts.fill(0)
        self.weights.fill(0.0)
        self.exponent: int | None = None
        self.origin = 0
        self.min = math.inf
        self.max = -math.inf

    @property
    def empty(self) -> bool:
        return self.exponent is None

    @property
    def bin_width(self) -> float:
        """Current bin width (nan before any data)."""
        return math.nan if self.exponent is None else math.ldexp(1.0, self.exponent)

    @property
    def nbytes(self) -> int:
        """Bytes held by the histogram arrays; constant for the lifetime of the object."""
        return int(self.counts.nbytes + self.weights.nbytes)

    def _fits(self, exponent: int, lo: float, hi: float) -> bool:
        return math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent)) < self.n_bins

    def _required_exponent(self, lo: float, hi: float) -> int:
        magnitude_exp = math.frexp(max(abs(lo), abs(hi)))[1]
        exponent = magnitude_exp - _INDEX_BITS
        if self.exponent is not None:
            # The grid only ever coarsens: a finer grid cannot be recovered from merged bins.
            exponent = max(exponent, self.exponent)
        # At most ~_INDEX_BITS iterations: by then the whole range fits in a handful of bins.
        while not self._fits(exponent, lo, hi):
            exponent += 1
        return exponent

    def _occupied_stop(self) -> int:
        """One past the last local bin that can be non-empty."""
        assert self.exponent is not None
        return math.floor(math.ldexp(self.max, -self.exponent)) - self.origin + 1

    def _regrid(self, exponent: int, origin: int) -> None:
        """Move the stored counts onto the grid (exponent, origin), merging aligned bins exactly."""
        assert self.exponent is not None
        shift = exponent - self.exponent
        stop = self._occupied_stop()
        old_global = np.arange(self.origin, self.origin + stop, dtype=np.int64)
        # |global index| < 2**61, so shifting by more than 62 changes nothing further (0 or -1).
        new_local = np.right_shift(old_global, min(shift, 62)) - origin
        starts = np.flatnonzero(np.concatenate(([True], new_local[1:] != new_local[:-1])))
        dest = new_local[starts]
        merged_counts = np.add.reduceat(self.counts[:, :stop], starts, axis=1)
        merged_weights = np.add.reduceat(self.weights[:stop], starts)
        self.counts.fill(0)
        self.weights.fill(0.0)
        self.counts[:, dest] = merged_counts
        self.weights[dest] = merged_weights
        self.exponent = exponent
        self.origin = origin

    def _grow_to(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, self.min), max(hi, self.max)
        if lo == self.min and hi == self.max:
            return
        exponent = self._required_exponent(lo, hi)
        origin = math.floor(math.ldexp(lo, -exponent))
        if self.exponent is None:
            self.exponent, self.origin = exponent, origin
        elif exponent != self.exponent or origin != self.origin:
            self._regrid(exponent, origin)
        self.min, self.max = lo, hi

    def local_index(self, scores: np.ndarray) -> np.ndarray:
        """Local bin index of each score; the scores must lie within the range already added."""
        assert self.exponent is not None
        scaled = np.ldexp(scores, -self.exponent)
        idx = np.floor(scaled, out=scaled).astype(np.int64)
        idx -= self.origin
        return idx

    def add(
        self,
        scores: np.ndarray,
        channels: np.ndarray,
        weighted_scores: np.ndarray | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        """Count ``scores`` (finite float64, 1-D) into ``channels`` (ints in ``[0, n_channels)``) and add
        ``weights`` at ``weighted_scores`` to the weight channel."""
        if scores.size == 0 and (weighted_scores is None or weighted_scores.size == 0):
            return
        lo, hi = math.inf, -math.inf
        for arr in (scores, weighted_scores):
            if arr is not None and arr.size:
                lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
        self._grow_to(lo, hi)
        if scores.size:
            # One bincount for all channels: channel c occupies the slice [c * n_bins, (c + 1) * n_bins).
            idx = self.local_index(scores)
            if channels.dtype == np.bool_:
                idx[channels] += self.n_bins  # two channels: only the True entries move, no full-size temporaries
            else:
                idx += channels.astype(np.int64) * self.n_bins
            self.counts += np.bincount(idx, minlength=self.counts.size).reshape(self.counts.shape)
        if weighted_scores is not None and weighted_scores.size:
            self.weights += np.bincount(self.local_index(weighted_scores), weights=weights, minlength=self.n_bins)

    def edge(self, local: int) -> float:
        """Lower edge of local bin ``local`` (``local == n`` gives the upper edge of bin ``n - 1``)."""
        assert self.exponent is not None
        return math.ldexp(float(self.origin + local), self.exponent)

    def counts_above(self, threshold: float) -> np.ndarray:
        """Per-channel count of samples in the bins after the one that holds ``threshold``.

        Every such sample is ``> threshold``; missed are only samples ``> threshold`` inside that same bin.
        So the result is the exact count of samples ``> t'`` for some ``t'`` in ``[threshold, threshold +
        bin_width)``, and exactly the count ``> threshold`` when no sample shares its bin and exceeds it:
        in particular below the minimum, at or above the maximum, and one ulp below a bin edge.
        """
        if self.exponent is None or threshold >= self.max:
            return np.zeros(self.n_channels, dtype=np.int64)
        if threshold < self.min:
            return self.counts.sum(axis=1)
        local = int(self.local_index(np.array([threshold], dtype=np.float64))[0])
        # A tiny negative threshold can underflow to -0.0 when rescaled and land one bin too high.
        if threshold < self.edge(local):
            local -= 1
        return self.counts[:, local + 1 : self._occupied_stop()].sum(axis=1)

    def occupied(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lower bin edges, counts ``[n_channels, k]``, weights ``[k]``) for the bins that can hold data,
        in ascending score order."""
        if self.exponent is None:
            return np.zeros(0), np.zeros((self.n_channels, 0), np.int64), np.zeros(0)
        stop = self._occupied_stop()
        edges = np.ldexp(np.arange(self.origin, self.origin + stop, dtype=np.float64), self.exponent)
        return edges, self.counts[:, :stop], self.weights[:stop]
