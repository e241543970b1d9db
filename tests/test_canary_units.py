"""The canary (verify/canary.py) on small ONNX models: its verdict follows what a fault does to
the class probabilities, not the model's sensitivity or logit scale, and a loose tolerance
still fails. The framework-made checkpoints of all three kinds (images, noise, plain) go
through the whole gate in test_gate_inits.py."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verify.canary import (MATTERS, NOISES, candidates, canary_check, perturbed,
                           probability_shift)
from verify.compare import compare_logits, failed
from verify.ort_runner import OrtRunner

TOL = {"atol": 1e-4, "rtol": 1e-5, "min_cosine": 0.99999, "min_top1_agreement": 1.0,
       "min_top5_agreement": 1.0}
LOOSE = {**TOL, "atol": 10.0, "rtol": 0.0, "min_cosine": 0.0, "min_top1_agreement": 0.0,
         "min_top5_agreement": 0.0}


def _save(path, nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


def _tiny_cnn(path, gain: float = 1.0, shift: float = 0.0):
    """input (N,3,8,8) -> Conv 3->4 -> Relu -> Conv 4->6 -> Relu -> Conv 6->8 -> mean -> Gemm
    8->10, then * gain + shift: three convolutions, the middle one is the canary's first.
    gain 1e-3 makes an insensitive model (logits ~1e-3, as a plain init's); shift 1000 a
    large-logit one."""
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
    inits = [init("w1", (4, 3, 3, 3)), init("w2", (6, 4, 3, 3)), init("w3", (8, 6, 1, 1)),
             init("fc", (10, 8)), numpy_helper.from_array(np.array(gain, np.float32), "g"),
             numpy_helper.from_array(np.array(shift, np.float32), "s")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["h"], name="fc", transB=1),
             helper.make_node("Mul", ["h", "g"], ["hg"]),
             helper.make_node("Add", ["hg", "s"], ["logits"])]
    return _save(path, nodes, inits, ["N", 3, 8, 8], ["N", 10])


def _chain(path, op: str, count: int, scale: float = 1.0, shift: float = 0.0, bias=False):
    """input (N,4) -> `count` x (op with a 4x4 weight [+ bias]) -> * scale + shift."""
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
    return _save(path, nodes, inits, ["N", 4], ["N", 4])


def _inputs(n=4):
    return np.random.default_rng(1).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


def _logits(path, x):
    return OrtRunner(path, 1).infer(x, len(x))


# --------------------------------------------------------------------------- the verdicts
def test_a_sane_tolerance_is_shown_to_catch_faults_and_its_resolution_is_reported(tmp_path):
    path = _tiny_cnn(tmp_path / "m.onnx")
    x = _inputs()
    reference = _logits(path, x)
    tight = {**TOL, "atol": 1e-6, "rtol": 0.0}
    check, info = canary_check(path, x, reference, tight, threads=1)
    assert check.passed and check.name == "canary_caught" and info["status"] == "caught"
    # Two mid layers nearest the middle, and the classifier.
    assert [layer["node"] for layer in info["layers"]] == ["conv2", "conv1", "fc"]
    # Each layer climbs the ladder until the gate fails; every step before it passed.
    for layer in info["layers"]:
        steps = layer["steps"]
        assert [s["noise"] for s in steps] == list(NOISES[:len(steps)])
        assert [s["caught"] for s in steps] == [False] * (len(steps) - 1) + [True]
        assert layer["smallest_caught"] == steps[-1]["noise"]
        assert all(s["max_abs_diff"] <= s["limit"] for s in steps[:-1])
        assert steps[-1]["failed_checks"] and steps[-1]["max_abs_diff"] > 1e-6
    assert info["resolution"] == min(layer["smallest_caught"] for layer in info["layers"])
    # Measured is the largest probability shift the gate let through; it is under MATTERS.
    assert check.measured == info["largest_let_through"] < MATTERS
    assert check.limit == f"< {MATTERS:g}"
    assert check.detail.startswith("caught: the smallest fault caught is ")
    assert "smallest caught per layer: conv2: " in check.detail


def test_a_loose_tolerance_fails_naming_the_fault_that_matters(tmp_path):
    path = _tiny_cnn(tmp_path / "m.onnx")
    x = _inputs()
    check, info = canary_check(path, x, _logits(path, x), LOOSE, threads=1)
    assert not check.passed and info["status"] == "blind"
    assert check.measured == info["largest_let_through"] >= MATTERS
    # No fault on the ladder was caught: every layer climbed it to the top.
    assert all(len(layer["steps"]) == len(NOISES) and layer["smallest_caught"] is None
               for layer in info["layers"])
    assert "yet passes the logit check (limit 10)" in check.detail
    assert check.detail.endswith("the tolerance is too loose to catch a fault that matters; "
                                 "tighten it in the manifest")


@pytest.mark.parametrize("gain", [1e-3, 1e-4])
def test_an_insensitive_models_correct_conversion_passes(tmp_path, gain):
    """Logits ~1e-3 (as a plain-init model's): a 1e-3 fault moves them by ~1e-6, under any
    sane limit, and moves no probability; the old fixed 1e-3 canary refused this model."""
    path = _tiny_cnn(tmp_path / "m.onnx", gain=gain)
    x = _inputs()
    clean = _logits(path, x)
    converted = clean + np.float32(1e-7)      # a correct conversion: fp32 rounding
    assert not failed(compare_logits(clean, converted, TOL, {}))
    check, info = canary_check(path, x, clean, TOL, threads=1, clean=converted)
    assert check.passed, check.detail
    first = info["layers"][0]["steps"]
    one_in_1000 = next(s for s in first if s["noise"] == 1e-3)
    assert not one_in_1000["caught"] and one_in_1000["probability_shift"] < 1e-5
    assert info["status"] in ("caught", "not_shown")
    if info["status"] == "not_shown":           # nothing caught: said, not silent
        assert info["warning"].startswith("gate power not shown")


def test_a_large_logit_models_correct_conversion_passes_and_loose_still_fails(tmp_path):
    """Logits ~1e3: the limit's rtol part (1e-4 x 1e3 = 0.1) is over what a 1e-3 fault moves;
    that fault moves no probability, so the tolerance is not blind to anything that
    matters. A loose tolerance still fails."""
    path = _tiny_cnn(tmp_path / "m.onnx", gain=300.0)
    x = _inputs()
    clean = _logits(path, x)
    assert np.abs(clean).max() > 100
    default = {**TOL, "rtol": 1e-4}
    check, info = canary_check(path, x, clean, default, threads=1)
    assert check.passed and info["status"] == "caught", check.detail
    check, info = canary_check(path, x, clean, {**LOOSE, "atol": 1e4}, threads=1)
    assert not check.passed and info["status"] == "blind"


def test_logits_that_respond_to_no_weight_pass_with_a_warning_never_silently(tmp_path):
    path = _chain(tmp_path / "m.onnx", "MatMul", 5, scale=1e-4, shift=1000.0)
    x = np.random.default_rng(4).normal(0, 1, (3, 4)).astype(np.float32)
    check, info = canary_check(path, x, _logits(path, x), TOL, threads=1)
    why = ("the logits do not respond to the weights of the 5 node(s) tried (matmul2, "
           "matmul1, matmul3...), even at x (1 + 1 N(0,1))")
    assert info["tried"] == ["matmul2", "matmul1", "matmul3", "matmul0", "matmul4"]
    assert info["status"] == "not_shown" and info["layers"] == []
    assert info["warning"] == f"gate power not shown: {why}"
    assert check.as_dict() == {"name": "canary_caught", "passed": True, "measured": None,
                               "limit": f"< {MATTERS:g}",
                               "detail": f"gate power not shown: {why}",
                               "scope": {"model": "canary", "stage": "verify"}}


def test_a_model_without_a_weight_passes_with_a_warning(tmp_path):
    path = _save(tmp_path / "relu.onnx", [helper.make_node("Relu", ["input"], ["logits"])],
                 [], ["N", 3], ["N", 3])
    x = np.ones((1, 3), np.float32)
    check, info = canary_check(path, x, x, TOL)
    assert check.passed and info["tried"] == [] and info["status"] == "not_shown"
    assert info["warning"] == "gate power not shown: no Conv/Gemm/MatMul weight to perturb"


def test_the_scratch_copy_lives_beside_the_model_and_is_removed(tmp_path, monkeypatch):
    import tempfile

    models, cwd = tmp_path / "models", tmp_path / "cwd"
    models.mkdir()
    cwd.mkdir()
    path = _tiny_cnn(models / "m.onnx")
    x = _inputs()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp"))
    check, _ = canary_check(path, x, _logits(path, x), {**TOL, "atol": 1e-6, "rtol": 0.0})
    assert check.passed
    assert list(cwd.iterdir()) == [] and [p.name for p in models.iterdir()] == ["m.onnx"]


def test_non_finite_reference_logits_count_as_caught(tmp_path):
    path = _tiny_cnn(tmp_path / "m.onnx")
    x = _inputs()
    clean = _logits(path, x)
    nan = clean.copy()
    nan[0, 0] = np.nan
    check, info = canary_check(path, x, nan, TOL, clean=clean)
    step = info["layers"][0]["steps"][0]
    assert step["caught"] and step["failed_checks"] == ["finite"]
    assert step["max_abs_diff"] is None and check.passed
    assert "fails finite" in check.detail


# --------------------------------------------------------------------------- the pieces
def test_probability_shift_is_the_largest_total_variation_over_images():
    a = np.zeros((2, 2))
    b = np.array([[0.0, 0.0], [np.log(3), 0.0]])     # second image: (0.5, 0.5) -> (0.75, 0.25)
    assert probability_shift(a, b) == pytest.approx(0.25)
    assert probability_shift(a, a + 1000.0) == 0.0    # a shift of every logit moves nothing
    big = np.array([[1000.0, 0.0]])
    assert probability_shift(big, big + [[0.0, 5.0]]) < 1e-300 + 1e-12


def test_candidates_are_convs_nearest_the_middle_then_gemms(tmp_path):
    """Four convolutions: the middle is the third (index 2), then the second, the fourth and
    the first (distance, then graph order); the Gemm comes after every conv."""
    inits = [numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), f"w{i}")
             for i in range(4)]
    nodes = [helper.make_node("Conv", [f"t{i}", f"w{i}"], [f"t{i + 1}"], name=f"c{i}")
             for i in range(4)]
    nodes.insert(2, helper.make_node("Gemm", ["t2", "w0"], ["g"], name="gemm"))
    model = helper.make_model(helper.make_graph(nodes, "g", [], [], inits))
    assert candidates(model) == [("c2", "w2"), ("c1", "w1"), ("c3", "w3"), ("c0", "w0"),
                                 ("gemm", "w0")]


def test_candidates_are_weights_not_biases_nor_zeros(tmp_path):
    model = onnx.load(str(_chain(tmp_path / "g.onnx", "Gemm", 3, bias=True)))
    assert candidates(model) == [("gemm1", "w1"), ("gemm0", "w0"), ("gemm2", "w2")]
    model = onnx.load(str(_chain(tmp_path / "m.onnx", "MatMul", 2)))
    assert candidates(model)[0] == ("matmul1", "w1")
    model.graph.ClearField("initializer")                   # weights from graph inputs
    assert candidates(model) == []
    # A zero-gamma BatchNorm folded into its conv leaves zeros: relative noise cannot move
    # them, so that conv is no candidate.
    model = onnx.load(str(_tiny_cnn(tmp_path / "z.onnx")))
    for init in model.graph.initializer:
        if init.name == "w2":
            init.CopyFrom(numpy_helper.from_array(np.zeros((6, 4, 3, 3), np.float32), "w2"))
    assert "w2" not in {w for _, w in candidates(model)}


def test_weights_held_in_constant_nodes_are_candidates_and_perturbed(tmp_path):
    """paddle2onnx writes weights as Constant nodes, which onnxsim with its optimizer off
    leaves as they are (PaddleClas SwinTransformer_tiny): the canary finds and perturbs them
    as initializers (before, it said "no Conv/Gemm/MatMul weight to perturb")."""
    model = onnx.load(str(_chain(tmp_path / "m.onnx", "MatMul", 3)))
    weights = {i.name: i for i in model.graph.initializer}
    held = [helper.make_node("Constant", [], [name], value=weights[name])
            for name in ("w0", "w1", "w2")]
    kept = [i for i in model.graph.initializer if i.name not in ("w0", "w1", "w2")]
    model.graph.ClearField("initializer")
    model.graph.initializer.extend(kept)
    for k, node in enumerate(held):
        model.graph.node.insert(k, node)
    onnx.checker.check_model(model)
    assert candidates(model) == [("matmul1", "w1"), ("matmul0", "w0"), ("matmul2", "w2")]
    copy = perturbed(model, "w1", noise=1e-2)
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
              for n in copy.graph.node if n.op_type == "Constant"}
    before = numpy_helper.to_array(weights["w1"])
    draw = np.random.default_rng(0).standard_normal(before.shape)
    assert np.array_equal(values["w1"], (before * (1 + 1e-2 * draw)).astype(np.float32))
    assert np.array_equal(values["w0"], numpy_helper.to_array(weights["w0"]))


def test_perturbed_changes_only_that_weight_each_element_by_its_own_draw(tmp_path):
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
    # Multiplied, not divided: the seeded draw reproduces the copy exactly.
    draw = np.random.default_rng(0).standard_normal(before["w1"].shape)
    assert np.array_equal(after["w1"], (before["w1"] * (1 + 1e-2 * draw)).astype(np.float32))


def test_a_pass_with_a_warning_says_so_in_decided_by():
    """The entry's one-line verdict carries the canary's warning on a pass, never on a fail."""
    from orchestrator.stages.package import decided_by
    from verify.compare import Check

    ok = Check("max_abs_diff", True, 1e-6, 1e-4)
    warning = "gate power not shown: no Conv/Gemm/MatMul weight to perturb"
    assert decided_by([ok], True, None, [warning]) == (
        f"max|diff| 1e-06 <= 0.0001; WARNING: {warning}")
    assert decided_by([ok], True) == "max|diff| 1e-06 <= 0.0001"
    bad = Check("max_abs_diff", False, 0.5, 1e-4, "", {"model": "simplified"})
    assert decided_by([bad], False, None, [warning]) == (
        "max_abs_diff (simplified) 0.5 vs limit 0.0001")


def _step(noise, caught, shift, diff=None, limit=0.002, failed_checks=("max_abs_diff",)):
    return {"noise": noise, "caught": caught, "probability_shift": shift,
            "max_abs_diff": diff, "limit": limit, "failed_checks": list(failed_checks)}


def test_the_verdict_names_each_outcome_its_figures_and_what_it_was_built_from():
    """canary._verdict on hand-made ladders: every field of the report's section and every
    figure of the check's text (the end-to-end tests reach it only through whole models)."""
    from verify import canary

    scope = {"model": "simplified"}

    def _verdict(layers, tried, scope):   # every outcome is the same check, for that scope
        check, info = canary._verdict(layers, tried, scope)
        assert (check.name, check.limit, check.scope) == ("canary_caught", f"< {MATTERS:g}",
                                                          scope)
        return check, info
    SEED = canary.SEED
    base = {"noises": list(NOISES), "seed": SEED, "matters": MATTERS}

    check, info = _verdict([], [], scope)
    assert info == {**base, "tried": [], "layers": [], "status": "not_shown",
                    "warning": "gate power not shown: no Conv/Gemm/MatMul weight to perturb",
                    "largest_let_through": None, "resolution": None}
    assert (check.name, check.passed, check.measured, check.limit, check.scope) == (
        "canary_caught", True, None, f"< {MATTERS:g}", scope)
    assert check.detail == info["warning"]
    tried = ["a", "b", "c", "d"]
    _, info = _verdict([], tried, scope)
    assert info["warning"] == (
        "gate power not shown: the logits do not respond to the weights of the 4 node(s) tried "
        f"(a, b, c...), even at x (1 + {NOISES[-1]:g} N(0,1))")
    _, info = _verdict([], tried[:3], scope)
    assert "(a, b, c), even" in info["warning"]

    # caught: the smallest noise caught over the layers, per layer, the worst let through
    conv = {"node": "Conv.7", "smallest_caught": 0.01,
            "steps": [_step(1e-3, False, 0.004), _step(1e-2, True, 0.02, 0.05)]}
    head = {"node": "Gemm.0", "smallest_caught": None,
            "steps": [_step(1e-3, False, 0.001), _step(1.0, False, 0.003)]}
    check, info = _verdict([conv, head], ["Conv.7", "Gemm.0"], scope)
    assert info == {**base, "tried": ["Conv.7", "Gemm.0"], "layers": [conv, head],
                    "status": "caught", "largest_let_through": 0.004, "resolution": 0.01}
    assert (check.passed, check.measured) == (True, 0.004)
    assert check.detail == (
        "caught: the smallest fault caught is Conv.7's weights x (1 + 0.01 N(0,1)) (fails "
        "max_abs_diff; max|diff| 0.05, 25.0x the limit 0.002); smallest caught per layer: "
        "Conv.7: 0.01; Gemm.0: none up to 1 (largest shift 0.30%); the largest fault let "
        "through moves 0.40% of the class probability (< 1%)")
    # caught by a check without a figure (top-1 agreement): no ratio; a zero limit: none
    conv["steps"][1] = _step(1e-2, True, 0.02, None, failed_checks=("top1", "top5"))
    assert "(fails top1, top5); smallest" in _verdict([conv], [], scope)[0].detail
    conv["steps"][1] = _step(1e-2, True, 0.02, 0.05, limit=0.0)
    assert "(fails max_abs_diff; max|diff| 0.05, limit 0); smallest" in \
        _verdict([conv], [], scope)[0].detail

    # blind: a fault let through moves as much as matters
    loose = {"node": "Conv.3", "smallest_caught": None,
             "steps": [_step(1e-3, False, 0.002, 0.01), _step(0.1, False, 0.2, 0.3)]}
    check, info = _verdict([loose, head], [], scope)
    assert (info["status"], info["largest_let_through"], info["resolution"]) == (
        "blind", 0.2, None)
    assert (check.passed, check.measured) == (False, 0.2)
    assert check.detail == (
        "a copy with Conv.3's weights x (1 + 0.1 N(0,1)) moves 20.0% of the class probability "
        "on some image and differs from the source by 0.3, yet passes the logit check (limit "
        "0.002): the tolerance is too loose to catch a fault that matters; tighten it in the "
        "manifest")
    exact = {"node": "Conv.3", "smallest_caught": None, "steps": [_step(1.0, False, MATTERS, 1)]}
    assert _verdict([exact], [], scope)[1]["status"] == "blind"   # MATTERS itself matters

    # nothing caught and nothing that matters: passes, saying so
    check, info = _verdict([head], [], scope)
    assert (info["status"], info["largest_let_through"], info["resolution"]) == (
        "not_shown", 0.003, None)
    assert info["warning"] == (f"gate power not shown: no fault up to x (1 + {NOISES[-1]:g} "
                               "N(0,1)) in 1 layer(s) was caught, and none moved 1% of the "
                               "class probability")
    assert (check.passed, check.measured, check.detail) == (True, 0.003, info["warning"])


def test_one_step_of_the_ladder_reports_the_faults_effect_and_the_gates_answer():
    """canary._step on hand-made logits: the fault's largest logit move from the clean
    model, its probability shift (rounded to 1e-6), the logit check's figure and limit
    against the source, whether any check failed, and which, by name."""
    from verify import canary

    clean = np.array([[2.0, 0.0, -1.0], [0.5, 0.25, 0.0]], np.float32)
    reference = clean + np.float32(1e-3)
    out = clean.copy()
    out[1, 2] = 4.0      # row 2 turns: the cosine check fails too (named in sorted order)
    tol = {**TOL, "atol": 0.5, "rtol": 0.25, "min_cosine": 0.99}
    step = canary._step(0.1, out, clean, reference, tol)
    assert step == {"noise": 0.1, "effect": 4.0,
                    "probability_shift": round(probability_shift(out, clean), 6),
                    "max_abs_diff": pytest.approx(3.999, abs=1e-6),
                    "limit": pytest.approx(0.5 + 0.25 * 2.001, abs=1e-6), "caught": True,
                    "failed_checks": ["cosine_min", "max_abs_diff"]}
    assert 0.5 < step["probability_shift"] < 1
    assert step["probability_shift"] == round(step["probability_shift"], 6)

    # Under the limit: nothing failed, nothing named.
    near = clean + np.float32(0.01)
    step = canary._step(1e-3, near, clean, reference, tol)
    assert (step["caught"], step["failed_checks"]) == (False, [])
    assert step["effect"] == pytest.approx(0.01, abs=1e-6) and step["max_abs_diff"] < 0.01
    assert step["probability_shift"] == 0.0       # every logit moved alike: no probability

    # A fault that makes the logits non-finite: caught by `finite`, no figures but a whole
    # probability moved.
    broken = clean.copy()
    broken[0, 0] = np.inf
    step = canary._step(1.0, broken, clean, reference, tol)
    assert step == {"noise": 1.0, "effect": None, "probability_shift": 1.0,
                    "max_abs_diff": None, "limit": None, "caught": True,
                    "failed_checks": ["finite"]}


def test_every_step_is_the_copy_with_that_fault_run_against_the_source(tmp_path, monkeypatch):
    """Each step of each layer's ladder is what ONNX Runtime gives for the model with that
    weight times (1 + noise N(0,1)), run here independently: its move from the clean logits,
    its difference from the source's and the check's limit; the ladder stops at the first
    caught step. The faulty copies are written to one scratch file, canary.onnx, in a
    canary-* folder beside the model, each run on the threads asked for, and the mid layers
    past LAYERS are never tried."""
    from pathlib import Path

    from verify import canary

    path = _tiny_cnn(tmp_path / "m.onnx")
    x = _inputs()
    clean = _logits(path, x)
    reference = clean + np.float32(2e-7)
    tight = {**TOL, "atol": 1e-6, "rtol": 0.0}
    opened = []

    class Seen(canary.OrtRunner):
        def __init__(self, model_path, threads=None):
            opened.append((Path(model_path), threads))
            super().__init__(model_path, threads)

    monkeypatch.setattr(canary, "OrtRunner", Seen)
    check, info = canary_check(path, x, reference, tight, threads=1, clean=clean)
    model = onnx.load(str(path))
    assert info["tried"] == ["conv2", "conv1", "fc"]       # conv3 is past LAYERS
    for layer in info["layers"]:
        for step in layer["steps"]:
            copy = tmp_path / "copy.onnx"
            onnx.save(perturbed(model, layer["weight"], step["noise"]), str(copy))
            out = _logits(copy, x)
            assert step["effect"] == float(np.abs(out - clean).max())
            assert step["max_abs_diff"] == float(np.abs(out.astype(np.float64)
                                                         - reference).max())
            assert step["limit"] == 1e-6
            assert step["probability_shift"] == round(probability_shift(out, clean), 6)
        assert layer["smallest_caught"] == layer["steps"][-1]["noise"]
    assert {(p.name, threads) for p, threads in opened} == {("canary.onnx", 1)}
    assert {p.parent.parent for p, _ in opened} == {tmp_path}
    assert all(p.parent.name.startswith("canary-") for p, _ in opened)
    # One run per step, none for the clean model (given), and no second look at a step.
    assert len(opened) == sum(len(layer["steps"]) for layer in info["layers"])
    # Not given, the clean logits are the model's own, on the threads asked for.
    opened.clear()
    again, _ = canary_check(path, x, reference, tight, threads=1)
    assert opened[0] == (path, 1) and again.as_dict() == check.as_dict()


def test_logits_all_zero_judge_no_effect_on_an_absolute_scale(tmp_path):
    """`no effect` is a move of at most NO_EFFECT x max|clean logits|; where the clean logits
    are all zero on these images that scale is 1, so a weight whose largest fault moves
    them by 1.5e-5 reaches the logits (its ladder is climbed) and one moving them by 0.5e-5
    does not."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(0, 1, (4, 4)).astype(np.float32), "w")

    def model(x, name):
        """logits = x @ w - (x @ w as ONNX Runtime computes it for this x): all zero."""
        plain = _save(tmp_path / f"{name}-plain.onnx",
                      [helper.make_node("MatMul", ["input", "w"], ["logits"], name="mm")],
                      [w], list(x.shape), list(x.shape))
        offset = numpy_helper.from_array(_logits(plain, x), "offset")
        return _save(tmp_path / f"{name}.onnx",
                     [helper.make_node("MatMul", ["input", "w"], ["h"], name="mm"),
                      helper.make_node("Sub", ["h", "offset"], ["logits"])],
                     [w, offset], list(x.shape), list(x.shape))

    x0 = rng.normal(0, 1, (3, 4)).astype(np.float32)
    probe = model(x0, "probe")
    moved = onnx.load(str(probe))
    onnx.save(perturbed(moved, "w", NOISES[-1]), str(tmp_path / "moved.onnx"))
    largest = float(np.abs(_logits(tmp_path / "moved.onnx", x0)).max())
    for target, reached in ((1.5e-5, True), (0.5e-5, False)):
        x = (x0 * np.float32(target / largest)).astype(np.float32)
        path = model(x, f"m{target}")
        clean = _logits(path, x)
        assert not clean.any()
        _, info = canary_check(path, x, clean, TOL, threads=1)
        assert info["tried"] == ["mm"]
        assert bool(info["layers"]) is reached, (target, info)


def test_the_classifier_beyond_the_tried_matmuls_is_still_searched(tmp_path):
    """Twelve MatMuls: the eight nearest the middle are the candidates, the last (the
    classifier) is not among them and is appended; after LAYERS mid layers only it is
    tried. head() is the last constant-weight Gemm or MatMul."""
    from verify.canary import head

    path = _chain(tmp_path / "m.onnx", "MatMul", 12)
    model = onnx.load(str(path))
    assert head(model) == ("matmul11", "w11")
    assert ("matmul11", "w11") not in candidates(model) and len(candidates(model)) == 8
    x = np.random.default_rng(4).normal(0, 1, (3, 4)).astype(np.float32)
    _, info = canary_check(path, x, _logits(path, x), TOL, threads=1)
    assert info["tried"] == ["matmul6", "matmul5", "matmul11"]
    assert [layer["node"] for layer in info["layers"]] == info["tried"]
    gemm = onnx.load(str(_chain(tmp_path / "g.onnx", "Gemm", 3)))
    assert head(gemm) == ("gemm2", "w2")
    conv = onnx.load(str(_tiny_cnn(tmp_path / "c.onnx")))
    assert head(conv) == ("fc", "fc")


def test_only_constant_nodes_hold_constant_tensors(tmp_path):
    """ConstantOfShape also has a `value` attribute (its fill value): its output is computed
    from a shape, not a constant tensor the canary could perturb."""
    from verify.canary import _constant_tensors

    model = onnx.load(str(_chain(tmp_path / "m.onnx", "MatMul", 1)))
    fill = helper.make_node("ConstantOfShape", ["shape_in"], ["filled"],
                            value=numpy_helper.from_array(np.array([1.0], np.float32)))
    model.graph.node.insert(0, fill)
    assert sorted(_constant_tensors(model)) == ["b", "s", "w0"]


def test_perturbed_takes_its_seed(tmp_path):
    from verify.canary import faulty_weight

    model = onnx.load(str(_chain(tmp_path / "m.onnx", "MatMul", 1)))
    before = numpy_helper.to_array(model.graph.initializer[0])
    for seed in (0, 1):
        after = {i.name: numpy_helper.to_array(i)
                 for i in perturbed(model, "w0", 0.1, seed=seed).graph.initializer}
        assert np.array_equal(after["w0"], faulty_weight(before, 0.1, seed))
    assert not np.array_equal(faulty_weight(before, 0.1, 0), faulty_weight(before, 0.1, 1))


def test_probability_shift_is_per_image_whatever_the_other_images_logits():
    """Each image's softmax on its own: another image's logits 1000 higher change nothing,
    and the figure is the largest image's shift, not their sum."""
    a = np.array([[1000.0, 0.0], [0.0, 0.0]])
    b = np.array([[1000.0, 0.0], [np.log(3), 0.0]])
    assert probability_shift(a, b) == pytest.approx(0.25)
    both = np.array([[np.log(3), 0.0], [np.log(3), 0.0]])
    assert probability_shift(np.zeros((2, 2)), both) == pytest.approx(0.25)
