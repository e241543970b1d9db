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


def test_accuracy_checks_in_full_at_their_boundaries():
    """Every field of every accuracy gate, worked out by hand, with each limit set exactly at
    the measured value (passes: the gates are <=) and then just under it (fails)."""
    labels = [1] * 10
    meter = _meter(labels, [1] * 6 + [0] * 4, [1] * 5 + [0] * 5)   # 60 % vs 50 %, 1 differs
    p, n = 0.6025, 10
    allowance = 300 * math.sqrt(p * (1 - p) / n * (50000 - n) / (50000 - 1))
    limits = {"onnx_top1_delta": 10.0, "disagreement": 10.0, "published_top1_delta": 0.3,
              "unreadable": 10.0}
    published = {"top1": 60.25, "top5": 90.0, "reference": "paper"}
    checks, info = accuracy_checks(meter, limits, 10, 1, published, pinned=True)
    scope = {"model": "simplified", "stage": "accuracy"}
    assert [c.as_dict() for c in checks[:3]] == [
        {"name": "onnx_top1_delta", "passed": True, "measured": 10.0, "limit": 10.0,
         "detail": "ONNX top-1 50.000% vs source top-1 60.000% on 10 images (percent points; "
                   "the limit allows 1 image)", "scope": scope},
        {"name": "top1_disagreement", "passed": True, "measured": 10.0, "limit": 10.0,
         "detail": "1 of 10 images have a different top-1 (percent of images; the limit "
                   "allows 1 image)", "scope": scope},
        {"name": "unreadable_images", "passed": True, "measured": 10.0, "limit": 10.0,
         "detail": "1 of 10 images could not be decoded by the source's decoder (percent of "
                   "images; the limit allows 1 image)",
         "scope": {"model": "dataset", "stage": "accuracy"}}]
    pub = checks[3].as_dict()
    assert pub == {"name": "published_top1_delta", "passed": True, "measured": 0.25,
                   "limit": round(0.3 + allowance, 4),
                   "detail": f"source top-1 60.000% vs published 60.25% (paper); limit 0.3 pt "
                             f"+ {allowance:.2f} pt sampling allowance (3 standard errors for "
                             "10 of 50000 images)",
                   "scope": {"model": "source", "stage": "accuracy"}}
    assert info == {"applied": True, "top1": 60.25, "top5": 90.0, "delta": -0.25,
                    "limit": round(0.3 + allowance, 4),
                    "sampling_allowance": round(allowance, 4)}

    under = {k: v - 1e-3 for k, v in limits.items()}
    under["published_top1_delta"] = 0.25 - allowance - 1e-3
    checks, _ = accuracy_checks(meter, under, 10, 1, published, pinned=True)
    assert [c.passed for c in checks] == [False, False, False, False]

    # Without a published figure, or not the pinned file: reported why, no check.
    assert accuracy_checks(meter, limits, 10, 1, None, pinned=True)[1] == {
        "applied": False, "why": "the entry names no published accuracy"}
    checks, info = accuracy_checks(meter, limits, 10, 1, published, pinned=False)
    assert len(checks) == 3 and info == {
        "applied": False, "top1": 60.25, "top5": 90.0, "delta": -0.25,
        "why": "the checkpoint is not the pinned published file (local file or digest not "
               "published), so the publisher's figure does not apply"}
    # The whole of ImageNet val: no sampling allowance, and the detail does not mention one.
    full = AccuracyMeter()
    full.images, full.hits["source"][1], full.hits["onnx"][1] = 50000, 30000, 30000
    [*_, whole], info = accuracy_checks(full, limits, 50000, 0, published, pinned=True)
    assert whole.limit == 0.3 and info["sampling_allowance"] == 0.0
    assert whole.detail.endswith("limit 0.3 pt")
    # Nothing decoded: one failing check says so.
    checks, info = accuracy_checks(AccuracyMeter(), limits, 7, 7, published, pinned=True)
    assert [c.as_dict() for c in checks] == [
        {"name": "accuracy_images", "passed": False, "measured": 0, "limit": ">= 1",
         "detail": "none of the 7 dataset images could be decoded", "scope": scope}]
    assert info == {"applied": False, "why": "no image decoded"}


def test_near_ties_are_listed_not_counted_and_the_margin_is_twice_the_logit_limit():
    from verify.accuracy import near_tie_margin, score

    tol = {"atol": 0.25, "rtol": 0.01}
    source = np.array([[3.0, 2.5, 0.0], [0.0, -10.0, 1.0]])
    assert near_tie_margin(source, tol).tolist() == [2 * (0.25 + 0.01 * 3.0),
                                                     2 * (0.25 + 0.01 * 10.0)]
    assert near_tie_margin(source[:0], tol).shape == (0,)
    assert near_tie_margin(source, None).tolist() == [0.0, 0.0]
    # Gap exactly at the margin is a near-tie (<=): row 0's top two are 0.5 apart.
    exact = {"atol": 0.25, "rtol": 0.0}
    swapped = np.array([[2.5, 3.0, 0.0], [0.0, -10.0, 1.0]])
    scored = score(source, {"onnx": swapped}, exact)
    assert scored["onnx"]["near_tie"].tolist() == [True, False]
    assert scored["onnx"]["max_diff"].tolist() == [0.5, 0.0]
    assert score(source, {"onnx": swapped}, {"atol": 0.2499, "rtol": 0.0})[
        "onnx"]["near_tie"].tolist() == [False, False]
    meter = AccuracyMeter()
    meter.add(np.array([0, 2]), np.array([0, 1]), source, swapped, exact)
    checks, _ = accuracy_checks(meter, {**LIMITS, "disagreement": 0.0}, 2, 0, None, False)
    by = _by_name(checks)
    assert by["top1_disagreement"].passed and by["top1_disagreement"].measured == 0.0
    assert by["top1_disagreement"].detail.endswith(
        "; 1 more changed between the source's top two classes, which lie within 2x the logit "
        "limit of each other: near-ties, listed, not counted")
    # Two classes: still a near-tie; one class: nothing to swap with.
    two = score(source[:, :2], {"onnx": swapped[:, :2]}, exact)
    assert two["onnx"]["near_tie"].tolist() == [True, False]
    one = score(source[:, :1], {"onnx": source[:, :1]}, exact)
    assert one["onnx"]["near_tie"].tolist() == [False, False]
    assert one["source"]["top5"].shape == (2, 1)


def test_accuracy_figures_keep_four_decimals_and_limits_are_met_exactly():
    """1 of 3 images differ (33.3333 %, four decimals kept); a published figure without a
    reference; the published limit equal to the measured difference passes; near ties named."""
    from verify.accuracy import score

    labels = np.array([1, 1, 1])
    meter = _meter(labels, [1, 1, 1], [1, 1, 0])                # ONNX 66.67 % vs 100 %
    # One more image (class 0) whose top-1 changes to the source's second class, 0.5 below
    # its first: within twice the logit limit 0.5, a near tie.
    source = np.array([[0.0, 5.0, 4.5]])
    onnx = np.array([[0.0, 5.0, 6.0]])
    meter.add_scored(np.array([0]), np.array([3]),
                     score(source, {"onnx": onnx}, {"atol": 0.5, "rtol": 0.0}))
    limits = {"onnx_top1_delta": 25.0, "disagreement": 25.0, "published_top1_delta": 0.0,
              "unreadable": 25.0}
    published = {"top1": 50.0, "top5": 90.0}
    allowance = sampling_allowance(50.0, 4)
    limits["published_top1_delta"] = 25.0 - allowance         # limit == |75 - 50| exactly
    checks, info = accuracy_checks(meter, limits, 3, 1, published, pinned=True)
    by = _by_name(checks)
    assert (by["onnx_top1_delta"].measured, by["onnx_top1_delta"].passed) == (25.0, True)
    assert by["top1_disagreement"].detail == (
        "1 of 4 images have a different top-1 (percent of images; the limit allows 1 image); "
        "1 more changed between the source's top two classes, which lie within 2x the logit "
        "limit of each other: near-ties, listed, not counted")
    assert by["unreadable_images"].measured == 33.3333 and not by["unreadable_images"].passed
    assert by["published_top1_delta"].passed and by["published_top1_delta"].measured == 25.0
    assert by["published_top1_delta"].detail.startswith(
        "source top-1 75.000% vs published 50.0% (); limit ")
    assert info["delta"] == 25.0
    third = AccuracyMeter()
    third.images, third.hits["source"][1], third.hits["onnx"][1] = 3, 1, 0
    checks, info = accuracy_checks(third, {**limits, "onnx_top1_delta": 50.0}, 3, 0,
                                   {"top1": 33.33, "top5": 0.0}, pinned=True)
    assert checks[0].measured == 33.3333 and info["delta"] == 0.0033
    assert checks[3].measured == 0.0033
    one_of_three = _meter(labels, [1, 1, 1], [1, 1, 0])
    assert _by_name(accuracy_checks(one_of_three, limits, 3, 0, None, False)[0])[
        "top1_disagreement"].measured == 33.3333


def test_variant_drop_check_in_full_at_its_limit():
    from verify.accuracy import variant_drop_check

    meter = AccuracyMeter(("fp16",))
    labels = np.arange(4)
    source = np.eye(4)
    fp16 = np.eye(4)
    fp16[3] = [0, 0, 1, 0]                                     # one of four loses its top-1
    meter.add(labels, np.arange(4), source, {"fp16": fp16})
    check = variant_drop_check(meter, "fp16", 25.0)
    assert check.as_dict() == {
        "name": "top1_drop", "passed": True, "measured": 25.0, "limit": 25.0,
        "detail": "fp16 top-1 75.000% vs fp32 source 100.000% on 4 images (1 images change "
                  "top-1, 0 more between near-tied classes; the limit allows 1 image)",
        "scope": {"model": "fp16", "stage": "accuracy"}}
    assert not variant_drop_check(meter, "fp16", 24.5).passed


def test_sampling_allowance_of_one_image():
    assert sampling_allowance(80.0, 1) == pytest.approx(300 * math.sqrt(0.8 * 0.2), rel=1e-12)


def test_score_top5_is_five_classes_and_an_empty_batch_is_empty():
    from verify.accuracy import concat_scores, score

    x = np.tile(-np.arange(8, dtype=np.float64), (1, 1))        # classes in order 0..7
    scored = score(x, {"onnx": x})
    assert scored["source"]["top5"].tolist() == [[0, 1, 2, 3, 4]]
    assert scored["onnx"]["top5"].tolist() == [[0, 1, 2, 3, 4]]
    meter = AccuracyMeter()
    meter.add_scored(np.array([5]), np.array([0]), scored)      # the sixth class: no top-5 hit
    assert meter.hits == {"source": {1: 0, 5: 0}, "onnx": {1: 0, 5: 0}}
    empty = score(np.zeros((0, 8)), {"onnx": np.zeros((0, 8))})
    assert empty["onnx"]["max_diff"].shape == (0,) and empty["onnx"]["top5"].shape == (0, 5)
    assert concat_scores([scored])["onnx"]["top5"].tolist() == [[0, 1, 2, 3, 4]]


def test_topk_matches_a_full_sort_on_a_thousand_classes():
    from verify.accuracy import _topk

    x = np.random.default_rng(11).normal(size=(64, 1000))
    assert (_topk(x, 5) == np.argsort(-x, axis=1)[:, :5]).all()


def test_top5_starts_with_top1_and_ranks_ties_by_the_lower_class_index():
    """Logits with many ties (quantised): the source's and a candidate's top-5 begin with
    their argmax, and equal logits rank by class index. With an unstable sort, or the higher
    index first, thousands of these rows disagree (numpy 2.4 sorts small arrays with SIMD
    networks, which are not stable)."""
    from verify.accuracy import score

    rng = np.random.default_rng(5)
    src = rng.integers(0, 4, size=(20000, 10)).astype(np.float32)
    cand = rng.integers(0, 4, size=(20000, 10)).astype(np.float32)
    scored = score(src, {"onnx": cand})
    for name, logits in (("source", src), ("onnx", cand)):
        top5 = scored[name]["top5"]
        assert (top5[:, 0] == logits.argmax(1)).all(), name
        ranked = np.take_along_axis(logits, top5, 1)
        assert (np.diff(ranked, axis=1) <= 0).all(), name
        tied = np.diff(ranked, axis=1) == 0
        assert (np.diff(top5, axis=1)[tied] > 0).all(), name


def test_an_empty_meter_reads_zero_and_top5_keeps_four_decimals():
    """No image counted: every percentage is 0.0 (no division by zero). Three images with two
    top-5 hits: 66.6667, as top-1 is rounded."""
    meter = AccuracyMeter(("onnx",))
    assert meter.percent("source", 1) == meter.percent("onnx", 5) == 0.0
    assert meter.side("onnx") == {"top1": 0.0, "top5": 0.0, "images": 0}
    logits = np.zeros((3, 10))
    logits[:, :5] = [5.0, 4.0, 3.0, 2.0, 1.0]          # top-5: classes 0..4, top-1: class 0
    meter.add(np.array([0, 4, 9]), np.arange(3), logits, {"onnx": logits})
    assert meter.side("onnx") == {"top1": 33.3333, "top5": 66.6667, "images": 3}
