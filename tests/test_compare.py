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


# --------------------------------------------------------------------------- canary
def _tiny_cnn(path):
    """input (N,3,8,8) -> Conv 3->4 -> Relu -> Conv 4->6 -> Relu -> Conv 6->8 -> mean -> Gemm
    8->10: three convolutions, the middle one is the canary's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
    inits = [init("w1", (4, 3, 3, 3)), init("w2", (6, 4, 3, 3)), init("w3", (8, 6, 1, 1)),
             init("fc", (10, 8))]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8),
              str(path))
    return path


def test_canary_is_caught_by_a_sane_tolerance_and_fails_a_loose_one(tmp_path):
    from verify.canary import canary_check, perturbed, pick_weight
    from verify.ort_runner import OrtRunner
    import onnx

    path = _tiny_cnn(tmp_path / "m.onnx")
    assert pick_weight(onnx.load(str(path))) == ("conv2", "w2")
    inputs = np.random.default_rng(1).normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    reference = OrtRunner(path, 1).infer(inputs, 4)
    # The canary differs from the model by the perturbation only (1e-3 relative, seeded).
    faulty = perturbed(onnx.load(str(path)), "w2")
    w2 = {i.name: onnx.numpy_helper.to_array(i) for i in faulty.graph.initializer}["w2"]
    w2_clean = {i.name: onnx.numpy_helper.to_array(i)
                for i in onnx.load(str(path)).graph.initializer}["w2"]
    relative = np.abs(w2 / w2_clean - 1)
    assert 1e-4 < relative.mean() < 2e-3

    tight = {**TOL, "atol": 1e-6, "rtol": 0.0}
    check, info = canary_check(path, inputs, reference, tight)
    assert check.passed and check.name == "canary_caught"
    assert info["node"] == "conv2" and info["margin"] == check.measured > 1
    assert info["limit"] == 1e-6
    assert abs(info["max_abs_diff"] / info["limit"] - info["margin"]) < 1e-3
    assert "the logit gate catches a fault of that size" in check.detail

    loose = {**TOL, "atol": 10.0, "rtol": 0.0, "min_cosine": 0.0,
             "min_top1_agreement": 0.0, "min_top5_agreement": 0.0}
    check, info = canary_check(path, inputs, reference, loose)
    assert not check.passed and check.measured < 1 and info["failed_checks"] == []
    assert "too loose to catch a real fault" in check.detail


def test_canary_skips_a_conv_whose_folded_weights_are_all_zero(tmp_path):
    """A zero-gamma BatchNorm folded into its conv leaves zeros: relative noise cannot move
    them, so the canary takes the nearest conv that has weights."""
    import onnx
    from onnx import numpy_helper

    from verify.canary import candidates, pick_weight

    path = _tiny_cnn(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == "w2":
            init.CopyFrom(numpy_helper.from_array(np.zeros((6, 4, 3, 3), np.float32), "w2"))
    assert pick_weight(model) in {("conv1", "w1"), ("conv3", "w3")}
    assert "w2" not in {w for _, w in candidates(model)}



def test_canary_result_in_full_scratch_beside_the_model(tmp_path, monkeypatch):
    """The check and the report section field by field; the perturbed copy lives in a
    scratch folder beside the model (not the working folder or the system temp), removed."""
    import tempfile

    import onnx

    from verify.canary import NOISE, SEED, canary_check, perturbed
    from verify.ort_runner import OrtRunner

    models, cwd = tmp_path / "models", tmp_path / "cwd"
    models.mkdir()
    cwd.mkdir()
    path = _tiny_cnn(models / "m.onnx")
    inputs = np.random.default_rng(1).normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    reference = OrtRunner(path, 1).infer(inputs, 4)
    onnx.save(perturbed(onnx.load(str(path)), "w2"), str(tmp_path / "expected.onnx"))
    diff = float(np.abs(OrtRunner(tmp_path / "expected.onnx", 1).infer(inputs, 4)
                        - reference).max())
    tight = {**TOL, "atol": 1e-6, "rtol": 0.0}
    failed_names = sorted(c.name for c in failed(compare_logits(
        reference, OrtRunner(tmp_path / "expected.onnx", 1).infer(inputs, 4), tight, {})))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp"))
    check, info = canary_check(path, inputs, reference, tight, threads=1)
    margin = round(diff / 1e-6, 3)
    assert info == {"node": "conv2", "weight": "w2", "noise": NOISE, "seed": SEED, "tried": 1,
                    "max_abs_diff": diff, "limit": 1e-6, "margin": margin,
                    "failed_checks": failed_names}
    assert check.as_dict() == {
        "name": "canary_caught", "passed": True, "measured": margin, "limit": "> 1",
        "scope": {"model": "canary", "stage": "verify"},
        "detail": f"a copy with conv2's weights x (1 + 0.001 N(0,1)) differs from the source "
                  f"by {diff:.3g}, {diff / 1e-6:.1f}x the limit 1e-06: the logit gate catches "
                  "a fault of that size in this model"}
    assert list(cwd.iterdir()) == [] and [p.name for p in models.iterdir()] == ["m.onnx"]

    # atol = rtol = 0: no ratio to a zero limit, still caught and said.
    zero = {**TOL, "atol": 0.0, "rtol": 0.0}
    check, info = canary_check(path, inputs, reference, zero, clean=reference)
    assert check.passed and check.measured is None and info["margin"] is None
    assert check.detail.endswith(f"differs from the source by {diff:.3g}, over the limit 0: "
                                 "the logit gate catches a fault of that size in this model")
    # Non-finite logits stop the comparison before any difference: the failed check is named.
    nan = reference.copy()
    nan[0, 0] = np.nan
    check, info = canary_check(path, inputs, nan, tight, clean=reference)
    assert check.passed and check.measured is None
    assert info["failed_checks"] == ["finite"] and info["max_abs_diff"] is None
    assert check.detail == ("a copy with conv2's weights x (1 + 0.001 N(0,1)) fails finite: the "
                            "logit gate catches a fault of that size in this model")


def _affine_model(path, scale: float, shift: float):
    """y = scale * (x @ W) + shift: a MatMul whose weight matters little when scale is small
    against shift."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).normal(0, 1, (4, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"], name="mm"),
         helper.make_node("Mul", ["h", "s"], ["hs"]),
         helper.make_node("Add", ["hs", "b"], ["logits"])], "affine",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(shift, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


def test_canary_with_no_effect_relative_to_the_logits_is_skipped_and_said(tmp_path):
    """A change of ~1e-4 on logits of ~1000 is below NO_EFFECT (1e-5 of max |logit|): the
    copy computes the same function, so there is no canary."""
    from verify.canary import canary_check
    from verify.ort_runner import OrtRunner

    path = _affine_model(tmp_path / "m.onnx", 0.1, 1000.0)
    inputs = np.random.default_rng(4).normal(0, 1, (3, 4)).astype(np.float32)
    clean = OrtRunner(path, 1).infer(inputs, 3)
    why = ("perturbing the weights of 1 node(s) near the middle (mm...) left the logits "
           "unchanged")
    check, info = canary_check(path, inputs, clean, TOL)
    assert info == {"skipped": why, "tried": ["mm"]}
    assert check.as_dict() == {"name": "canary_caught", "passed": True, "measured": None,
                               "limit": "> 1", "detail": f"no canary: {why}",
                               "scope": {"model": "canary", "stage": "verify"}}
    # The same weight with logits near 1: the change counts, and the canary runs.
    near_one = _affine_model(tmp_path / "n.onnx", 0.1, 0.0)
    check, info = canary_check(near_one, inputs, OrtRunner(near_one, 1).infer(inputs, 3),
                               {**TOL, "atol": 1e-7, "rtol": 0.0})
    assert info["node"] == "mm" and info["tried"] == 1 and check.passed


def test_canary_without_a_weight_says_so(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from verify.canary import canary_check

    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])], "relu",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    x = np.ones((1, 3), np.float32)
    check, info = canary_check(path, x, x, TOL)
    assert info == {"skipped": "no Conv/Gemm/MatMul weight to perturb", "tried": []}
    assert check.detail == "no canary: no Conv/Gemm/MatMul weight to perturb"


def test_canary_candidates_nearest_the_middle_first(tmp_path):
    """Four convolutions: the middle is the third (index 2), then the second, the fourth and
    the first (distance, then graph order)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from verify.canary import candidates

    inits = [numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), f"w{i}")
             for i in range(4)]
    nodes = [helper.make_node("Conv", [f"t{i}", f"w{i}"], [f"t{i + 1}"], name=f"c{i}")
             for i in range(4)]
    nodes.insert(2, helper.make_node("Gemm", ["t2", "w0"], ["g"], name="gemm"))
    model = helper.make_model(helper.make_graph(nodes, "g", [], [], inits))
    assert candidates(model) == [("c2", "w2"), ("c1", "w1"), ("c3", "w3"), ("c0", "w0")]


def _chain(path, op: str, count: int, scale: float = 1.0, shift: float = 0.0, bias=False):
    """input (N,4) -> `count` x (op with a 4x4 weight [+ bias]) -> * scale + shift."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    nodes, inits, last = [], [], "input"
    for i in range(count):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.5, (4, 4)).astype(np.float32),
                                             f"w{i}"))
        inputs = [last, f"w{i}"]
        if bias:
            inits.append(numpy_helper.from_array(np.ones(4, np.float32), f"b{i}"))
            inputs.append(f"b{i}")
        nodes.append(helper.make_node(op, inputs, [f"h{i}"], name=f"{op.lower()}{i}"))
        last = f"h{i}"
    inits += [numpy_helper.from_array(np.array(scale, np.float32), "s"),
              numpy_helper.from_array(np.array(shift, np.float32), "b")]
    nodes += [helper.make_node("Mul", [last, "s"], ["hs"]),
              helper.make_node("Add", ["hs", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


def test_canary_candidates_are_weights_not_biases_and_gemms_without_convs(tmp_path):
    """Without a Conv the Gemm/MatMul weights are the candidates (never a bias), the middle
    of three first, then by distance and graph order."""
    import onnx

    from verify.canary import candidates, pick_weight

    model = onnx.load(str(_chain(tmp_path / "g.onnx", "Gemm", 3, bias=True)))
    assert candidates(model) == [("gemm1", "w1"), ("gemm0", "w0"), ("gemm2", "w2")]
    model = onnx.load(str(_chain(tmp_path / "m.onnx", "MatMul", 2)))
    assert candidates(model) == [("matmul1", "w1"), ("matmul0", "w0")]
    assert pick_weight(model) == ("matmul1", "w1")
    model.graph.ClearField("initializer")                   # weights from graph inputs
    assert candidates(model) == [] and pick_weight(model) is None


def test_perturbed_changes_only_that_weight_each_element_by_its_own_draw(tmp_path):
    import onnx
    from onnx import numpy_helper

    from verify.canary import perturbed

    model = onnx.load(str(_chain(tmp_path / "m.onnx", "MatMul", 2)))
    before = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    after = {i.name: numpy_helper.to_array(i)
             for i in perturbed(model, "w1", noise=1e-2).graph.initializer}
    assert all(np.array_equal(numpy_helper.to_array(i), before[i.name])
               for i in model.graph.initializer)                      # the original is kept
    assert all(np.array_equal(after[k], before[k]) for k in before if k != "w1")
    relative = after["w1"] / before["w1"] - 1
    assert after["w1"].dtype == np.float32 and 3e-3 < relative.std() < 3e-2
    assert len(np.unique(np.round(relative, 6))) > 8           # not one factor for all


def test_a_canary_that_changes_nothing_names_the_first_three_nodes_it_tried(tmp_path):
    from verify.canary import canary_check
    from verify.ort_runner import OrtRunner

    path = _chain(tmp_path / "m.onnx", "MatMul", 5, scale=1e-4, shift=1000.0)
    inputs = np.random.default_rng(4).normal(0, 1, (3, 4)).astype(np.float32)
    clean = OrtRunner(path, 1).infer(inputs, 3)
    check, info = canary_check(path, inputs, clean, TOL)
    why = ("perturbing the weights of 5 node(s) near the middle (matmul2, matmul1, "
           "matmul3...) left the logits unchanged")
    assert info == {"skipped": why,
                    "tried": ["matmul2", "matmul1", "matmul3", "matmul0", "matmul4"]}
    assert check.detail == f"no canary: {why}"


def test_a_canary_under_a_loose_tolerance_says_to_tighten_it(tmp_path):
    from verify.canary import canary_check
    from verify.ort_runner import OrtRunner

    path = _tiny_cnn(tmp_path / "m.onnx")
    inputs = np.random.default_rng(1).normal(0, 1, (4, 3, 8, 8)).astype(np.float32)
    reference = OrtRunner(path, 1).infer(inputs, 4)
    loose = {**TOL, "atol": 10.0, "rtol": 0.0, "min_cosine": 0.0,
             "min_top1_agreement": 0.0, "min_top5_agreement": 0.0}
    check, info = canary_check(path, inputs, reference, loose)
    diff = info["max_abs_diff"]
    assert check.detail == (
        f"a copy with conv2's weights x (1 + 0.001 N(0,1)) passes the logit check "
        f"({diff:.3g} <= 10): the tolerance is too loose to catch a real fault of that size; "
        "tighten it in the manifest")


def test_decided_by_names_the_first_diverging_layer():
    """The summary line of a failed entry says where the network parts (README)."""
    from orchestrator.run import _decided_by
    from verify.compare import Check

    failed = Check("max_abs_diff", False, 0.5, 0.001, "",
                   {"model": "exported", "first_diverging_layer": "backbone.layer2.2.convs.0"})
    assert _decided_by([failed], False) == ("max_abs_diff (exported) 0.5 vs limit 0.001; first "
                                            "diverging layer backbone.layer2.2.convs.0")
    failed.scope["first_diverging_layer"] = None   # localised, nothing above the limit
    assert _decided_by([failed], False) == "max_abs_diff (exported) 0.5 vs limit 0.001"
