"""The gates' arithmetic, each figure computed here from its definition, not from the code
(issue 17: one-line changes the suite used to let through)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from verify.accuracy import AccuracyMeter, accuracy_checks, sampling_allowance
from verify.compare import compare_logits

LIMITS = {"onnx_top1_delta": 0.1, "disagreement": 100.0, "published_top1_delta": 0.3,
          "unreadable": 100.0}
TOL = {"atol": 10.0, "rtol": 0.0, "min_cosine": 0.99, "min_top1_agreement": 1.0,
       "min_top5_agreement": 1.0}


def _by_name(checks):
    return {c.name: c for c in checks}


def test_cosine_min_fails_below_its_limit_with_the_cosine_measured():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (4, 50))
    ref[:, 0] += 20                                   # class 0 first everywhere, by far
    out = ref.copy()
    out[2, 25:] = -ref[2, 25:]                       # image 2: half its logits flipped
    expected = float(np.dot(ref[2], out[2]) / (np.linalg.norm(ref[2]) * np.linalg.norm(out[2])))
    assert expected < 0.99
    by = _by_name(compare_logits(ref, out, TOL, {}))
    assert by["max_abs_diff"].passed                 # atol 10: not what decides here
    assert not by["cosine_min"].passed
    assert by["cosine_min"].measured == pytest.approx(expected, rel=1e-9)
    assert by["top1_agreement"].passed
    # The same data with a limit under the measured cosine passes: the check is two-valued.
    assert _by_name(compare_logits(ref, out, {**TOL, "min_cosine": expected - 1e-6},
                                   {}))["cosine_min"].passed


def test_top5_agreement_fails_when_a_top5_member_is_replaced_by_a_far_class():
    ref = np.tile(np.arange(20, dtype=np.float64)[::-1] * 10, (5, 1))   # classes 0..4 on top
    out = ref.copy()
    out[3, 4], out[3, 15] = ref[3, 15], ref[3, 4]    # image 3: class 15 (far below) in, 4 out
    by = _by_name(compare_logits(ref, out, TOL, {}))   # a swap of 110 is no near-tie (2 x 10)
    assert by["top1_agreement"].passed and by["top1_agreement"].measured == 1.0
    assert not by["top5_agreement"].passed
    assert by["top5_agreement"].measured == pytest.approx(4 / 5)


def _meter(labels, source_top1, onnx_top1, classes=10) -> AccuracyMeter:
    """Logits whose top-1 is the given class (and whose top-5 follows the class order)."""
    def logits(top1):
        x = np.tile(-np.arange(classes, dtype=np.float64), (len(top1), 1))
        x[np.arange(len(top1)), top1] = 100.0
        return x
    meter = AccuracyMeter()
    meter.add(np.asarray(labels), np.arange(len(labels)), logits(source_top1),
              logits(onnx_top1))
    return meter


def test_top1_counts_only_the_first_class_and_top5_any_of_five():
    labels = [3, 3, 3, 3]
    # Source: right on images 0, 1; on images 2, 3 the label is only in the top 5
    # (classes 0, 1, 2, 3, 4 follow the winner in order).
    meter = _meter(labels, [3, 3, 0, 1], [3, 3, 0, 1])
    assert meter.percent("source", 1) == 50.0
    assert meter.percent("source", 5) == 100.0
    assert meter.hits["onnx"] == {1: 2, 5: 4}


@pytest.mark.parametrize("onnx_better", [True, False])
def test_onnx_top1_delta_is_two_sided(onnx_better):
    labels = [1] * 100
    source = [1] * 50 + [2] * 50
    onnx = [1] * (51 if onnx_better else 49) + [2] * (49 if onnx_better else 51)
    by = _by_name(accuracy_checks(_meter(labels, source, onnx), LIMITS, 100, 0, None,
                                  pinned=False)[0])
    assert not by["onnx_top1_delta"].passed          # 1 point either way > 0.1
    assert by["onnx_top1_delta"].measured == 1.0


@pytest.mark.parametrize("source_better", [True, False])
def test_published_top1_delta_is_two_sided(source_better):
    labels = [1] * 100
    source = [1] * 50 + [2] * 50                     # 50 % measured on the full 100 images
    published = 50.0 + (-20.0 if source_better else 20.0)
    meter = _meter(labels, source, source)
    by = _by_name(accuracy_checks(meter, LIMITS, 100, 0, {"top1": published, "top5": 90.0},
                                  pinned=True)[0])
    check = by["published_top1_delta"]
    assert check.measured == 20.0 and not check.passed


def test_sampling_allowance_is_three_standard_errors_with_the_finite_population_correction():
    # A top-1 of 80 % measured on 1000 of ImageNet val's 50000 images: one standard error of a
    # proportion sampled without replacement is sqrt(p (1 - p) / n * (N - n) / (N - 1)).
    p, n, N = 0.80, 1000, 50000
    standard_error_pt = 100 * math.sqrt(p * (1 - p) / n) * math.sqrt((N - n) / (N - 1))
    assert standard_error_pt == pytest.approx(1.2522, abs=1e-4)
    assert sampling_allowance(80.0, 1000) == pytest.approx(3 * standard_error_pt, rel=1e-9)
    # Without the correction it would be 3.795; with 2 standard errors 2.504.
    assert sampling_allowance(80.0, 1000) == pytest.approx(3.7566, abs=1e-3)
    assert sampling_allowance(80.0, N) == 0.0 and sampling_allowance(80.0, 0) == 0.0
