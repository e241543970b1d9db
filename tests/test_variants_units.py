"""The int8 build's fast histogram path against onnxruntime's own collector, on plain arrays."""
from __future__ import annotations

import numpy as np
from onnxruntime.quantization.calibrate import HistogramCollector

from converters.variants import _absolute_histograms, _fast_histograms


def _collect(batches, fast: bool):
    collector = HistogramCollector("percentile", symmetric=True, num_bins=2048,
                                   num_quantized_bins=128, percentile=99.999, scenario="same")
    with _fast_histograms(fast):
        for batch in batches:
            collector.collect(batch)
        assert (HistogramCollector.collect_absolute_value is _absolute_histograms) == fast
    return collector.histogram_dict, collector.compute_collection_result()


def test_fast_histograms_match_onnxruntime_up_to_edge_rounding():
    rng = np.random.default_rng(0)
    # Later batches reach past the first batch's range, so the edges get extended.
    batches = [{"a": (rng.normal(0, 1 + k, (8, 16, 28, 28))).astype(np.float32),
                "relu": np.maximum(rng.normal(0, 2, (8, 32, 14, 14)), 0).astype(np.float32)}
               for k in range(4)]
    ours, our_ranges = _collect(batches, fast=True)
    theirs, their_ranges = _collect(batches, fast=False)
    assert HistogramCollector.collect_absolute_value is not _absolute_histograms  # restored
    for name in ("a", "relu"):
        h1, e1, lo1, hi1 = ours[name]
        h2, e2, lo2, hi2 = theirs[name]
        assert len(h1) == len(h2) and h1.sum() == h2.sum()          # every value counted once
        assert (lo1, hi1) == (lo2, hi2)
        # ORT extends its float32 edges with np.arange, which drifts from the uniform grid by
        # float rounding; values near edges land one bin apart, nothing moves further.
        shift = np.abs(np.cumsum(h1) - np.cumsum(h2)).max() / h2.sum()
        assert shift < 0.05, (name, shift)
        r1, r2 = (np.asarray(x[name].range_value if hasattr(x[name], "range_value") else x[name])
                  for x in (our_ranges, their_ranges))
        np.testing.assert_allclose(np.abs(r1).max(), np.abs(r2).max(), rtol=1e-2)
