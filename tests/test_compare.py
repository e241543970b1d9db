"""The comparator on plain arrays: each check fails when it should, with its figures."""
from __future__ import annotations

import numpy as np

from verify.compare import check_signature, compare_logits, failed

TOL = {"atol": 1e-4, "rtol": 1e-5, "min_cosine": 0.99999, "min_top1_agreement": 1.0,
       "min_top5_agreement": 1.0}


def _ref(n=8, k=1000, seed=0):
    return np.random.default_rng(seed).normal(0, 5, size=(n, k)).astype(np.float32)


def _by_name(checks):
    return {c.name: c for c in checks}


def test_identical_logits_pass_every_check():
    ref = _ref()
    checks = compare_logits(ref, ref.copy(), TOL, {})
    assert not failed(checks) and _by_name(checks)["max_abs_diff"].measured == 0.0


def test_small_noise_within_limit_passes_and_is_measured():
    ref = _ref()
    out = ref + np.float32(2e-5)
    c = _by_name(compare_logits(ref, out, TOL, {}))["max_abs_diff"]
    assert c.passed and abs(c.measured - 2e-5) < 1e-6
    assert abs(c.limit - (1e-4 + 1e-5 * float(np.abs(ref).max()))) < 1e-12


def test_one_wrong_logit_fails_max_abs_with_location():
    ref = _ref()
    out = ref.copy()
    out[3, 17] += 0.5
    c = _by_name(compare_logits(ref, out, TOL, {}))["max_abs_diff"]
    assert not c.passed and abs(c.measured - 0.5) < 1e-5
    assert "image 3, class 17" in c.detail


def test_swapped_top1_fails_agreement():
    ref = _ref()
    out = ref.copy()
    top = ref.argmax(1)
    out[0, top[0]] -= 100.0
    checks = _by_name(compare_logits(ref, out, TOL, {}))
    assert not checks["top1_agreement"].passed
    assert checks["top1_agreement"].measured == 7 / 8
    assert not checks["max_abs_diff"].passed


def test_near_tie_swap_within_tolerance_is_not_a_failure():
    ref = _ref(n=2)
    order = np.argsort(-ref[0])
    ref[0, order[1]] = ref[0, order[0]] - 1e-5  # two classes tied within tolerance
    out = ref.copy()
    out[0, order[1]] += 2e-5  # flips the top-1 within the allowed logit difference
    checks = _by_name(compare_logits(ref, out, TOL, {}))
    assert checks["top1_agreement"].measured == 0.5
    assert checks["top1_agreement"].passed and "near-ties" in checks["top1_agreement"].detail


def test_nan_fails_finite_and_stops():
    ref = _ref()
    out = ref.copy()
    out[1, 1] = np.nan
    checks = compare_logits(ref, out, TOL, {})
    assert [c.name for c in checks] == ["finite"] and not checks[0].passed


def test_shape_mismatch_is_its_own_failure():
    checks = compare_logits(_ref(k=1000), _ref(k=1001), TOL, {})
    assert checks[0].name == "logits_shape" and not checks[0].passed


def _info(in_name="input", out_name="logits", batch="batch", classes=1000):
    return {"opset": 17, "inputs": [{"name": in_name, "shape": [batch, 3, 224, 224]}],
            "outputs": [{"name": out_name, "shape": [batch, classes]}]}


def test_signature_checks_names_then_shapes():
    assert not failed(check_signature(_info(), 1000, [3, 224, 224], True, {}))
    names = check_signature(_info(out_name="output"), 1000, [3, 224, 224], True, {})
    assert len(names) == 1 and not names[0].passed  # shapes are not checked past a bad name
    static = check_signature(_info(batch=1), 1000, [3, 224, 224], True, {})
    assert not static[1].passed and "symbolic" in static[1].detail
    classes = check_signature(_info(classes=1001), 1000, [3, 224, 224], True, {})
    assert not classes[1].passed
    opset = check_signature(_info(), 1000, [3, 224, 224], True, {}, opset=11)
    assert opset[0].name == "opset" and not opset[0].passed and opset[0].measured == 17


def test_signature_checks_in_full():
    """Every field of every signature check, as the report shows it, in the cases that decide:
    all well; another opset; a fixed batch where it must be symbolic (input or output alone);
    a fixed batch where that is allowed; another class count."""
    scope = {"model": "simplified"}
    want_shapes = {"input": ["N", 3, 224, 224], "logits": ["N", 1000]}
    good = check_signature(_info(), 1000, [3, 224, 224], True, scope, opset=17)
    assert [c.as_dict() for c in good] == [
        {"name": "opset", "passed": True, "measured": 17, "limit": 17, "scope": scope},
        {"name": "io_names", "passed": True,
         "measured": {"inputs": ["input"], "outputs": ["logits"]},
         "limit": {"inputs": ["input"], "outputs": ["logits"]}, "scope": scope},
        {"name": "io_shapes", "passed": True,
         "measured": {"input": ["batch", 3, 224, 224], "logits": ["batch", 1000]},
         "limit": want_shapes, "scope": scope}]
    opset = check_signature(_info(), 1000, [3, 224, 224], True, scope, opset=11)[0]
    assert opset.passed is False and (opset.measured, opset.limit) == (17, 11)
    assert opset.detail == "the exporter wrote another opset than the manifest asks"
    names = check_signature(_info(in_name="x"), 1000, [3, 224, 224], True, scope)
    assert names[0].passed is False and names[0].measured == {"inputs": ["x"],
                                                              "outputs": ["logits"]}
    assert names[0].detail == ("downstream users rely on one interface: input 'input', "
                               "output 'logits'") and names[0].scope == scope
    fixed_out = _info()
    fixed_out["outputs"][0]["shape"][0] = 1       # input symbolic, logits fixed
    for info in (_info(batch=1), fixed_out):
        shapes = check_signature(info, 1000, [3, 224, 224], True, scope)[1]
        assert shapes.passed is False and shapes.limit == want_shapes
        assert shapes.detail == ("shapes differ from the manifest (N must be symbolic when "
                                 "dynamic_batch is on)")
    assert check_signature(_info(batch=1), 1000, [3, 224, 224], False, scope)[1].passed is True
    assert check_signature(_info(classes=1001), 1000, [3, 224, 224], False, scope)[1].passed \
        is False
    assert check_signature(_info(), 1000, [3, 256, 224], False, scope)[1].passed is False


def test_variant_comparison_in_full():
    """compare_variant's four checks with figures worked out by hand: per-image cosine (a
    zero row counts as 1), top-1 agreement, max |diff| reported only; each gate passes at
    equality and fails just above it; NaN and a shape mismatch each stop the comparison."""
    import math

    import pytest

    from verify.compare import compare_variant

    ref = np.array([[2.0, 0, 0], [0.5, 0, 0], [0, 0, 0]])
    out = np.array([[1.0, 1, 0], [0.1, 0.4, 0], [0, 0, 0]])
    cosine = 0.05 / (0.5 * math.sqrt(0.1 ** 2 + 0.4 ** 2))    # row 1, the smallest
    scope = {"model": "int8"}
    gates = {"min_cosine": cosine, "min_top1_agreement": 2 / 3}
    checks = compare_variant(ref, out, gates, scope)
    assert [c.name for c in checks] == ["finite", "cosine_min", "top1_agreement",
                                        "max_abs_diff"]
    finite, cos, agree, diff = checks
    assert finite.as_dict() == {"name": "finite", "passed": True, "measured": True,
                                "limit": True, "scope": scope}
    assert cos.passed is True and cos.measured == pytest.approx(cosine, rel=1e-12)
    assert cos.limit == cosine and cos.scope == scope
    assert cos.detail == "smallest per-image cosine similarity to the fp32 source's logits"
    assert agree.as_dict() == {"name": "top1_agreement", "passed": True, "measured": 2 / 3,
                               "limit": 2 / 3, "scope": scope,
                               "detail": "2/3 images have the fp32 source's top-1"}
    assert diff.as_dict() == {"name": "max_abs_diff", "passed": True, "measured": 1.0,
                              "limit": None, "scope": scope,
                              "detail": "reported, not gated (max|ref| 2)"}
    above = compare_variant(ref, out, {"min_cosine": cosine + 1e-9,
                                       "min_top1_agreement": 2 / 3 + 1e-9}, scope)
    assert [c.passed for c in above] == [True, False, False, True]

    nan = out.copy()
    nan[2, 1] = np.nan
    [bad] = compare_variant(ref, nan, gates, scope)
    assert bad.as_dict() == {"name": "finite", "passed": False, "measured": False,
                             "limit": True, "detail": "NaN or Inf in the logits",
                             "scope": scope}
    [shape] = compare_variant(ref, out[:, :2], gates, scope)
    assert shape.as_dict() == {"name": "logits_shape", "passed": False, "measured": [3, 2],
                               "limit": [3, 3], "scope": scope,
                               "detail": "variant and reference logits differ in shape"}


def test_compare_logits_in_full_with_each_limit_met_exactly():
    """Every field of every check, worked out by hand: the worst difference equal to the
    limit passes; a zero reference row counts as cosine 1; a row of small norm is measured
    as it is; ties in a top-k set go to the lower class index."""
    import math

    import pytest

    tol = {"atol": 0.5, "rtol": 0.0, "min_cosine": 0.9, "min_top1_agreement": 1.0,
           "min_top5_agreement": 1.0}
    scope = {"model": "simplified", "batch": 3}
    ref = np.array([[4, 3, 2, 1, 0, -1], [0, 0, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 0]],
                   dtype=np.float32)
    out = np.array([[4, 3, 2, 1, 0, -1.5], [0.5, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0]],
                   dtype=np.float32)
    checks = [c.as_dict() for c in compare_logits(ref, out, tol, scope)]
    cosine = checks[2].pop("measured")
    assert cosine == pytest.approx(0.25 / (0.5 * math.sqrt(0.5)), rel=1e-12)   # row 2
    assert checks == [
        {"name": "finite", "passed": True, "measured": True, "limit": True, "scope": scope},
        {"name": "max_abs_diff", "passed": True, "measured": 0.5, "limit": 0.5, "scope": scope,
         "detail": "limit = atol 0.5 + rtol 0 x max|ref| 4; worst at image 0, class 5; mean "
                   "abs diff 0.0833"},
        {"name": "cosine_min", "passed": False, "limit": 0.9, "scope": scope,
         "detail": "smallest per-image cosine similarity"},
        {"name": "top1_agreement", "passed": True, "measured": 1.0, "limit": 1.0,
         "scope": scope, "detail": "3/3 images agree on the top-1 set"},
        {"name": "top5_agreement", "passed": True, "measured": 1.0, "limit": 1.0,
         "scope": scope, "detail": "3/3 images agree on the top-5 set"}]
    over = compare_logits(ref, out, {**tol, "atol": 0.4999}, scope)
    assert [c.passed for c in over] == [True, False, False, True, True]


def test_cosine_of_equal_and_of_zero_logits_is_one_and_the_limit_is_inclusive():
    tol = {**TOL, "min_cosine": 1.0}
    exact = _by_name(compare_logits(np.array([[3.0, 4.0]]), np.array([[3.0, 4.0]]), tol, {}))
    assert exact["cosine_min"].measured == 1.0 and exact["cosine_min"].passed
    zeros = _by_name(compare_logits(np.zeros((2, 3)), np.zeros((2, 3)), tol, {}))
    assert zeros["cosine_min"].measured == 1.0 and zeros["cosine_min"].passed


def test_near_ties_are_counted_up_to_twice_the_limit_and_agreement_is_inclusive():
    """limit 0.25: a swap with a class 0.5 below the reference's top is a near tie, 0.625
    below is not; two ties and one real swap out of four images."""
    tol = {"atol": 0.25, "rtol": 0.0, "min_cosine": 0.0, "min_top1_agreement": 0.25,
           "min_top5_agreement": 1.0}
    ref = np.array([[1, 0.5, 0], [1, 0.375, 0], [1, 0.75, 0], [1, 0, 0]])
    out = np.array([[0.5, 1, 0], [0.375, 1, 0], [0.75, 1, 0], [1, 0, 0]])
    top1 = _by_name(compare_logits(ref, out, tol, {}))["top1_agreement"]
    assert top1.as_dict() == {
        "name": "top1_agreement", "passed": True, "measured": 0.25, "limit": 0.25,
        "detail": "1/4 images agree on the top-1 set; 2 disagreement(s) are near-ties within "
                  "2x the logit limit"}
    # Above the agreement limit, the one real swap fails it; without it, ties alone pass.
    strict = {**tol, "min_top1_agreement": 0.5}
    assert not _by_name(compare_logits(ref, out, strict, {}))["top1_agreement"].passed
    ties_only = _by_name(compare_logits(ref[[0, 2, 3]], out[[0, 2, 3]], strict, {}))
    assert ties_only["top1_agreement"].passed
    assert ties_only["top1_agreement"].measured == 1 / 3


def test_shape_and_non_finite_checks_in_full():
    scope = {"model": "fp32"}
    [shape] = compare_logits(np.zeros((2, 4)), np.zeros((2, 3)), TOL, scope)
    assert shape.as_dict() == {"name": "logits_shape", "passed": False, "measured": [2, 3],
                               "limit": [2, 4], "scope": scope,
                               "detail": "candidate and reference logits differ in shape"}
    ref = np.zeros((2, 3))
    ref[1, 2] = np.inf                        # the reference's own Inf fails too
    [finite] = compare_logits(ref, np.zeros((2, 3)), TOL, scope)
    assert finite.as_dict() == {"name": "finite", "passed": False, "measured": False,
                                "limit": True, "detail": "NaN or Inf in the logits",
                                "scope": scope}


def test_topk_breaks_ties_by_the_lower_class_index():
    from verify.compare import _topk

    x = np.zeros((2, 1000))
    x[0, ::7] = 1.0
    x[1, 500] = 2.0
    assert _topk(x, 5).tolist() == [[0, 7, 14, 21, 28], [500, 0, 1, 2, 3]]


def test_variant_top1_is_per_image():
    from verify.compare import compare_variant

    ref = np.array([[0.0, 1, 0], [0, 0, 1]])           # flat argmax 5, per image [1, 2]
    checks = compare_variant(ref, ref.copy(), {"min_cosine": 1.0, "min_top1_agreement": 1.0},
                             {})
    assert [(c.name, c.measured) for c in checks[1:3]] == [("cosine_min", 1.0),
                                                           ("top1_agreement", 1.0)]
    zeros = compare_variant(np.zeros((1, 3)), np.zeros((1, 3)),
                            {"min_cosine": 1.0, "min_top1_agreement": 1.0}, {})
    assert zeros[1].measured == 1.0 and zeros[1].passed


def test_decided_by_names_the_first_diverging_layer():
    """The summary line of a failed entry says where the network parts (docs/usage.md)."""
    from orchestrator.stages.package import decided_by
    from verify.compare import Check

    failed = Check("max_abs_diff", False, 0.5, 0.001, "",
                   {"model": "exported", "first_diverging_layer": "backbone.layer2.2.convs.0"})
    assert decided_by([failed], False) == ("max_abs_diff (exported) 0.5 vs limit 0.001; first "
                                            "diverging layer backbone.layer2.2.convs.0")
    failed.scope["first_diverging_layer"] = None   # localised, nothing above the limit
    assert decided_by([failed], False) == "max_abs_diff (exported) 0.5 vs limit 0.001"
