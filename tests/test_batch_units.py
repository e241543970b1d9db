"""A batch baked into a graph that declares a dynamic batch (verify/batch.py): right at the
traced batch, wrong at another; reported as such, naming the node, by the logit gate."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.simplify import describe
from orchestrator.stages.verify import verify_models
from verify.batch import baking_nodes, batch_check
from verify.compare import Check
from verify.ort_runner import OrtRunner

TOL = {"atol": 1e-4, "rtol": 1e-5, "min_cosine": 0.99999, "min_top1_agreement": 1.0,
       "min_top5_agreement": 1.0}


def _model(path, baked: bool):
    """logits = x + x (N, 4). Baked: the second term is image 0's, taken through a Reshape
    to the traced batch [1, -1] and a Slice, so the graph is right at batch 1 only (as an
    export traced at batch 1 that keeps the batch in a Reshape constant)."""
    if baked:
        nodes = [helper.make_node("Reshape", ["input", "shape"], ["flat"], name="bake"),
                 helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["first"],
                                  name="first_image"),
                 helper.make_node("Add", ["input", "first"], ["logits"], name="add")]
        inits = [numpy_helper.from_array(np.array([1, -1], np.int64), "shape"),
                 numpy_helper.from_array(np.array([0], np.int64), "starts"),
                 numpy_helper.from_array(np.array([4], np.int64), "ends"),
                 numpy_helper.from_array(np.array([1], np.int64), "axes")]
    else:
        nodes, inits = [helper.make_node("Add", ["input", "input"], ["logits"], name="add")], []
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


def _x(n=3):
    return np.random.default_rng(0).normal(0, 1, (n, 4)).astype(np.float32)


def test_the_reshape_that_fixes_the_batch_is_named(tmp_path):
    model = onnx.load(str(_model(tmp_path / "b.onnx", baked=True)))
    [found] = baking_nodes(model)
    assert (found["node"], found["op"], found["input_shape"]) == ("bake", "Reshape",
                                                                  ["batch", 4])
    assert found["output_shape"] == [1, -1]       # the Reshape's target: the traced batch
    assert baking_nodes(onnx.load(str(_model(tmp_path / "ok.onnx", baked=False)))) == []


def test_batch_check_passes_a_dynamic_graph_and_fails_a_baked_one(tmp_path):
    x = _x()
    good = _model(tmp_path / "ok.onnx", baked=False)
    runner = OrtRunner(good, 1)
    outs = {3: runner.infer(x, 3), 1: runner.infer(x, 1)}
    check = batch_check(outs, TOL, good, {"model": "simplified"})
    assert check.passed and check.name == "batch_independent" and check.measured == 0.0

    bad = _model(tmp_path / "b.onnx", baked=True)
    runner = OrtRunner(bad, 1)
    outs = {3: runner.infer(x, 3), 1: runner.infer(x, 1)}
    assert np.allclose(outs[1], 2 * x)                   # right at the traced batch
    check = batch_check(outs, TOL, bad, {"model": "simplified"}, agree={1: True, 3: False})
    assert not check.passed and check.measured > 0.1
    assert check.detail.startswith("batch baked into the graph: the same images give other "
                                   "logits at batch 3 than at batch 1; right at batch 1, "
                                   "wrong at batch 3; nodes that fix the batch dimension: "
                                   "bake (Reshape ['batch', 4] -> [1, ")


def test_the_logit_gate_reports_a_baked_batch_for_each_model(tmp_path):
    x = _x(4)
    bad = _model(tmp_path / "b.onnx", baked=True)
    good = _model(tmp_path / "ok.onnx", baked=False)
    entry = {"tolerances": TOL, "num_classes": 4, "input_shape": [4],
             "export": {"dynamic_batch": True, "opset": 17}}
    checks, figures, _ = verify_models(entry, {"exported": (good, describe(onnx.load(str(good)))),
                                         "simplified": (bad, describe(onnx.load(str(bad))))},
                                 x, 2 * x, threads=1)
    by = {(c.name, c.scope["model"]): c for c in checks}
    assert figures["batch_sizes"] == [4, 1]
    assert by[("batch_independent", "exported")].passed
    assert not by[("batch_independent", "simplified")].passed
    assert "bake (Reshape" in by[("batch_independent", "simplified")].detail
    # The logit check itself fails at batch 4 and says so.
    assert not by[("max_abs_diff", "simplified")].passed
    assert by[("max_abs_diff", "simplified")].scope["worst_batch"] == 4


def _conv_bn(path):
    """Conv + BatchNorm + pooling: logits (N, 8) of a (N, 3, 16, 16) input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "g"),
             numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 1, 8).astype(np.float32), "m"),
             numpy_helper.from_array(rng.uniform(0.1, 3, 8).astype(np.float32), "v")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("GlobalAveragePool", ["bn"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])]
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


def test_onnxsims_own_check_is_reported_and_never_refuses(tmp_path):
    """onnxsim folds the BatchNorm into the Conv, which moves fp32 outputs by ~4e-7: over a
    zero tolerance, its random-input check fails. That is reported with onnxsim's words and
    the simplified model is still written; the logit gate decides (converters/simplify.py)."""
    from converters.simplify import simplify

    _conv_bn(tmp_path / "a.onnx")
    info = simplify(tmp_path / "a.onnx", tmp_path / "b.onnx", [2, 3, 16, 16], atol=0.0,
                    rtol=0.0)
    check = info["onnxsim_check"]
    assert (check["passed"], check["gating"], check["random_inputs"]) == (False, False, 3)
    assert check["note"].startswith("onnxsim's random-input check found outputs differing "
                                    "beyond atol 0 / rtol 0: ")
    assert check["note"].endswith("; reported only, the logit gate decides")
    assert info["nodes"] == 3 and (tmp_path / "b.onnx").is_file()   # BatchNorm folded away
    # A tolerance the rounding stays under: passed, nothing to note.
    info = simplify(tmp_path / "a.onnx", tmp_path / "c.onnx", [2, 3, 16, 16], atol=1e-3,
                    rtol=0.0)
    assert info["onnxsim_check"] == {"random_inputs": 3, "atol": 1e-3, "rtol": 0.0,
                                     "passed": True, "gating": False}


def test_a_model_over_one_onnx_files_limit_is_unsupported_before_onnxsim_runs(tmp_path,
                                                                                monkeypatch):
    """A model over protobuf's 2 GiB (mmpretrain convnext-v2-huge) cannot be one ONNX file:
    `unsupported`, with its size, before onnxsim (it was an internal EncodeError at save).
    The limit is lowered to this small model's size, as making a 2 GiB file would cost."""
    import converters.simplify as stage

    src = _conv_bn(tmp_path / "a.onnx")
    size = onnx.load(str(src)).ByteSize()
    monkeypatch.setattr(stage, "MAX_MODEL_BYTES", size)
    with pytest.raises(stage.OnnxCheckFailed) as over:
        stage.simplify(src, tmp_path / "b.onnx", [2, 3, 16, 16], atol=1e-3, rtol=0.0)
    assert over.value.kind == "unsupported" and "need ONNX external data" in over.value.message
    assert not (tmp_path / "b.onnx").exists()
    monkeypatch.setattr(stage, "MAX_MODEL_BYTES", size + 1)   # one byte under: simplified
    assert stage.simplify(src, tmp_path / "b.onnx", [2, 3, 16, 16], atol=1e-3, rtol=0.0)

    # The same model with its weights in external data (as torch.onnx writes one over
    # 2 GiB, which protobuf cannot even load whole): sized without loading them, its weights
    # counted, and refused the same way.
    ext = tmp_path / "ext" / "a.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(str(src)), str(ext), save_as_external_data=True, location="a.data",
              size_threshold=0)
    assert onnx.load(str(ext), load_external_data=False).ByteSize() < size
    assert stage.stored_bytes(ext) >= size
    monkeypatch.setattr(stage, "MAX_MODEL_BYTES", size)
    with pytest.raises(stage.OnnxCheckFailed) as over:
        stage.simplify(ext, tmp_path / "c.onnx", [2, 3, 16, 16], atol=1e-3, rtol=0.0)
    assert over.value.kind == "unsupported"


def test_a_simplification_that_breaks_the_exporters_model_is_redone_and_recorded(tmp_path):
    """onnxsim's output fails the logit gate while the exporter's passes (as its
    fuse_pad_into_conv did to efficientnet-b0): the model is simplified again with the fragile
    passes off (converters/simplify.py RETRIES), checked the same way, and replaces
    model.onnx; the report says what failed and what was used. A fault the exporter's model
    shares is not onnxsim's, and nothing is redone."""
    from orchestrator.stages.verify import resimplify, simplifier_broke
    from verify.compare import failed

    exported = _conv_bn(tmp_path / "exported.onnx")
    broken = onnx.load(str(exported))   # what a wrong pass leaves: one weight changed
    weight = numpy_helper.to_array(broken.graph.initializer[0]) * np.float32(1.5)
    broken.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    simplified = tmp_path / "model.onnx"
    onnx.save(broken, str(simplified))
    x = np.random.default_rng(1).normal(0, 1, (4, 3, 16, 16)).astype(np.float32)
    reference = OrtRunner(exported, 1).infer(x, 4)
    entry = {"tolerances": TOL, "num_classes": 8, "input_shape": [3, 16, 16],
             "export": {"dynamic_batch": True, "opset": 17}}
    models = {"exported": (exported, describe(onnx.load(str(exported)))),
              "simplified": (simplified, describe(broken))}
    checks, _, logits = verify_models(entry, models, x, reference, threads=1)
    assert simplifier_broke(checks)
    assert not simplifier_broke(verify_models(entry, models, x, 2 * reference, threads=1)[0])

    onnx_section, said = {}, []
    checks, logits = resimplify(entry, exported, simplified, x, reference, checks, logits,
                                 1, onnx_section, said.append)
    assert not failed(checks) and {c.scope["model"] for c in checks} == {"exported",
                                                                         "simplified"}
    repair = onnx_section["onnxsim_repair"]
    assert repair["first"]["check"] == "max_abs_diff" and repair["first"]["measured"] > 0.1
    assert repair["used"] == "on, without fuse_pad_into_conv"
    assert repair["tried"] == [{"optimizer": repair["used"], "nodes": 3, "passed": True}]
    assert onnx_section["nodes_simplified"] == 3
    assert np.abs(OrtRunner(simplified, 1).infer(x, 4) - reference).max() < 1e-4
    assert np.array_equal(logits["simplified"], OrtRunner(simplified, 1).infer(x, 4))
    assert not (tmp_path / "model.retry.onnx").exists()
    assert "onnxsim changed the exporter's logits (max_abs_diff" in said[0]


def test_a_graph_the_runtime_refuses_at_batch_2_is_a_failed_check_naming_it(tmp_path):
    """A token expanded to the traced batch 1 and concatenated with the input (as MindSpore
    writes coat's class token) runs at batch 1 and is refused at batch 2, where onnxsim runs
    it: a failed batch_independent check with ONNX Runtime's words and the node, not a
    pipeline error. A graph that runs at both, or at neither, is not a batch matter."""
    from verify.batch import refused_at_another_batch

    nodes = [helper.make_node("Expand", ["token", "to"], ["tokens"], name="expand_token"),
             helper.make_node("Concat", ["tokens", "input"], ["logits"], axis=1,
                              name="cat_token")]
    inits = [numpy_helper.from_array(np.ones((1, 2), np.float32), "token"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "to")]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])], inits)
    baked = tmp_path / "baked.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(baked))
    check = refused_at_another_batch(baked, [4], {"model": "exported"})
    assert check is not None and check.passed is False and check.name == "batch_independent"
    assert (check.measured, check.limit) == ("refused at batch 2", "runs at every batch")
    try:     # ONNX Runtime's own words, first line, as it refuses batch 2 here
        OrtRunner(baked, 1).infer(np.zeros((2, 4), np.float32), 2)
    except Exception as exc:  # noqa: BLE001 - ORT's error types differ by build
        said = str(exc).splitlines()[0][:300]
    assert "cat_token" in said      # ONNX Runtime names the node it refused
    assert check.detail.startswith("batch baked into the graph: ONNX Runtime runs it at "
                                   f"batch 1 and refuses it at batch 2 ({said}); nodes that "
                                   "fix the batch dimension: cat_token (Concat")
    assert check.scope == {"model": "exported", "batch_sizes": [2, 1]}
    assert refused_at_another_batch(_model(tmp_path / "ok.onnx", baked=False), [4],
                                    {"model": "exported"}) is None
    assert refused_at_another_batch(baked, [5], {"model": "exported"}) is None   # no batch


def test_an_exported_graph_onnx_checker_rejects_is_a_failed_check_not_an_error(tmp_path):
    """The exporter's graph fails onnx.checker's full check (a declared shape that inference
    contradicts, as MindSpore declared convit's traced shapes): the simplify stage reports a
    failed `onnx_valid` check with the checker's words, not a pipeline error. An onnxsim
    failure of a graph that runs at batch 2 is no conversion finding (None: the stage then
    simplifies again without the optimizer, or stops with an error)."""
    import pytest

    from converters.simplify import OnnxCheckFailed, check
    from orchestrator.stages.simplify import _unsimplifiable

    graph = helper.make_graph(
        [helper.make_node("Concat", ["input", "input"], ["logits"], axis=1, name="cat")],
        "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 6])])
    bad = tmp_path / "exported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(bad))
    with pytest.raises(OnnxCheckFailed) as caught:
        check(bad)
    entry = {"input_shape": [4], "export": {"dynamic_batch": True}}
    found = _unsimplifiable(caught.value, bad, entry, None)
    assert (found.name, found.passed, found.measured, found.limit) == (
        "onnx_valid", False, "rejected by onnx.checker", "valid ONNX")
    assert found.detail.startswith("the exporter's graph is not valid ONNX: onnx.checker "
                                   "rejected exported.onnx: ") and "cat" in found.detail
    assert found.scope == {"model": "exported"}

    class Opts:
        threads = 1

    ok = _model(tmp_path / "ok.onnx", baked=False)
    assert _unsimplifiable(OnnxCheckFailed("onnxsim", "onnxsim failed: x"), ok, entry,
                           Opts()) is None


def _fixed(path, batch: int):
    """logits = 2 x input, a graph that holds batch `batch` (exported at a fixed batch)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "input"], ["logits"], name="add")], "m",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    return path


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runners_feed_a_fixed_batch_graph_its_own_batch_at_any_asked_size(tmp_path, runtime):
    """A model exported at a fixed batch (orchestrator/run.py's fallback) runs on any number
    of images on both runtimes: fed its own batch at a time, a short last batch padded and
    cut back, whatever batch size the caller asks for."""
    from verify.runners import make_runner

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    for held in (1, 2):
        runner = make_runner(runtime, _fixed(tmp_path / f"fixed{held}.onnx", held))
        assert runner.fixed_batch == held
        for asked in (1, 4, 5):
            np.testing.assert_array_equal(runner.infer(x, asked), 2 * x)
    dynamic = make_runner(runtime, _model(tmp_path / "dynamic.onnx", baked=False))
    assert dynamic.fixed_batch is None
    np.testing.assert_array_equal(dynamic.infer(x, 4), 2 * x)
    # The logits own their memory: ONNX Runtime's own arrays keep the session's arena alive
    # after the runner is gone (5 GiB a session for mindcv coat_lite_tiny at batch 16)
    assert dynamic.infer(x, 5).flags.owndata and dynamic.infer(x, 2).flags.owndata


def test_a_fixed_batch_graph_is_checked_one_image_at_a_time_without_a_batch_check(tmp_path):
    """verify_models on an entry exported at a fixed batch: every image's logits compared, at
    batch 1 only, and no batch check (a graph that takes one batch has none to hold)."""
    path = _fixed(tmp_path / "fixed.onnx", 1)
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    entry = {"num_classes": 4, "input_shape": [4], "tolerances": TOL,
             "export": {"dynamic_batch": False, "opset": 17}}
    model = {"simplified": (path, describe(onnx.load(path)))}
    checks, figures, logits = verify_models(entry, model, x, 2 * x, 1)
    assert figures["batch_sizes"] == [1]
    assert logits["simplified"].shape == (6, 4)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert "batch_independent" not in {c.name for c in checks}
    wrong = 2 * x
    wrong[5] += 1.0   # the last image: a check that stopped at the first batch would miss it
    checks, _, _ = verify_models(entry, model, x, wrong, 1)
    assert not next(c for c in checks if c.name == "max_abs_diff").passed


def test_a_fixed_batch_graph_is_known_as_such_and_gets_no_int8_variant(tmp_path):
    """converters/simplify.py graph_batch reads the batch a graph holds; int8 calibration,
    which runs batches of 8, is refused for it with the reason (the fp32 model ships)."""
    from converters.simplify import graph_batch
    from converters.variants import VariantFailed, make_int8

    fixed = _fixed(tmp_path / "fixed.onnx", 1)
    assert graph_batch(fixed) == 1
    assert graph_batch(_model(tmp_path / "dynamic.onnx", baked=False)) is None
    with pytest.raises(VariantFailed, match="holds a fixed batch 1"):
        make_int8(fixed, tmp_path / "int8.onnx", np.zeros((8, 4), np.float32), {})


def test_the_fixed_batch_retry_follows_an_exporter_refusal_and_keeps_both_errors(monkeypatch):
    """orchestrator/run.py run_stages, the order of its tries (the stages themselves are the
    zoo test's): an exporter that refuses a dynamic batch is tried at a fixed batch 1; where
    that passes, the report says so and why; where that fails too, the first refusal stands
    with the second's first line; a failure that is not the exporter's is not retried; with
    export.fixed_batch_fallback off nothing is retried."""
    from converters.protocol import Timer
    from manifests.loader import Entry
    from orchestrator import run
    from converters.protocol import PipelineError
    from orchestrator.stages.context import EntryContext, new_report

    def context(fallback=True):
        entry = Entry({"name": "e", "source": "paddleclas", "model_id": "M",
                       "export": {"dynamic_batch": True, "opset": 13,
                                  "fixed_batch_fallback": fallback}}, None)
        report = new_report(entry)
        report.onnx = {}
        return EntryContext(entry, [entry], None, report, Timer(), None, None, None,
                            said.append)

    said, tries = [], []

    def stages(outcomes):
        def fake(ctx, batch_fallback=False):
            tries.append(ctx.entry["export"]["dynamic_batch"])
            outcome = outcomes[len(tries) - 1]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return fake

    refused = PipelineError("export", "paddle.jit.save failed at a dynamic batch",
                            stage="convert")
    monkeypatch.setattr(run, "_stages", stages([refused, ([], {}, True)]))
    ctx = context()
    assert run.run_stages(ctx) == ([], {}, True) and tries == [True, False]
    assert ctx.report.onnx["batch"]["fixed"] == 1
    assert ctx.report.onnx["batch"]["dynamic_batch_tried"]["error"] == refused.message
    assert ctx.report.warnings == ["fixed batch 1: the exporter refused a dynamic batch "
                                      "(report: onnx.batch)"]

    tries.clear()
    again = PipelineError("export", "paddle2onnx failed at opset 13\nmore", stage="convert")
    monkeypatch.setattr(run, "_stages", stages([refused, again]))
    with pytest.raises(PipelineError) as caught:
        run.run_stages(context())
    assert (caught.value.stage, caught.value.kind) == ("convert", "export")
    assert caught.value.message == (f"{refused.message}\nexported at a fixed batch 1 instead: "
                                    "convert/export: paddle2onnx failed at opset 13")

    # A graph that holds its traced batch (a failed batch check, not an error): exported
    # again at a fixed batch 1, the check that made it so in the report. (mindcv convit_tiny
    # went this way in the zoo test until its constant Reshapes were left as traced.)
    from verify.compare import Check
    held = Check("batch_independent", False, 0.7, 1e-4,
                 "batch 16 vs 1: the graph holds batch 1 at node '12Mul'",
                 {"model": "exported"})
    tries.clear()
    monkeypatch.setattr(run, "_stages", stages([([held], {}, True), ([], {}, True)]))
    ctx = context()
    assert run.run_stages(ctx) == ([], {}, True) and tries == [True, False]
    assert ctx.report.onnx["batch"]["fixed"] == 1
    assert ctx.report.onnx["batch"]["dynamic_batch_tried"] == {"check": held.as_dict()}
    assert ctx.report.warnings == ["fixed batch 1: the dynamic-batch graph held its traced "
                                      "batch (report: onnx.batch)"]
    # At a fixed batch, failing again: the fixed-batch run's own checks stand, no third try.
    tries.clear()
    monkeypatch.setattr(run, "_stages", stages([([held], {}, True), ([held], {}, False)]))
    assert run.run_stages(context()) == ([held], {}, False) and tries == [True, False]
    # With the fallback off, the failed check is the entry's verdict: no retry.
    tries.clear()
    monkeypatch.setattr(run, "_stages", stages([([held], {}, True)]))
    assert run.run_stages(context(False)) == ([held], {}, True) and tries == [True]

    for outcome, fallback in [(PipelineError("digest", "wrong file", stage="fetch"), True),
                              (refused, False)]:
        tries.clear()
        monkeypatch.setattr(run, "_stages", stages([outcome, ([], {}, True)]))
        with pytest.raises(PipelineError):
            run.run_stages(context(fallback))
        assert tries == [True]


def test_a_source_that_amplifies_rounding_is_named_in_its_failed_value_check():
    """orchestrator/stages/verify.py amplified_rounding: a failed max_abs_diff of a source
    whose own logits move by more than the limit under a one-ulp input change keeps failing
    (fail closed) and says why; a passing check, another check, or a source that moves less
    than the limit are left as they are."""
    from orchestrator.stages.verify import amplified_rounding

    def checks():
        return [Check("max_abs_diff", False, 743.0, 0.28, "limit = ...", {"model": "exported"}),
                Check("cosine_min", False, 0.93, 0.99999, "", {"model": "exported"}),
                Check("max_abs_diff", True, 1e-6, 0.28, "limit = ...", {"model": "simplified"})]

    chaotic = {"images": 2, "max_abs_logit_change": 8743.6, "max_abs_logit": 11451.8}
    found = checks()
    notes = amplified_rounding(found, chaotic)
    assert [c.passed for c in found] == [False, False, True]
    assert notes == [f"exported: {found[0].detail.split('; ', 1)[1]}"]
    assert found[0].detail == (
        "limit = ...; the source itself is this sensitive: a one-ulp change of its input "
        "moves its logits by 8.74e+03 (3.12e+04x the limit, on 2 images), so it amplifies "
        "float32 rounding and this difference may be rounding, not a conversion fault; "
        "trained checkpoints rarely do this")
    assert [c.detail for c in found[1:]] == ["", "limit = ..."]
    steady = checks()
    assert amplified_rounding(steady, {**chaotic, "max_abs_logit_change": 0.2}) == []
    zero = [Check("max_abs_diff", False, 1e-6, 0.0, "", {"model": "simplified"})]
    assert len(amplified_rounding(zero, {**chaotic, "max_abs_logit_change": 4e-5})) == 1
    assert "(over the limit, on 2 images)" in zero[0].detail   # no division by a zero limit
    assert [c.detail for c in steady] == [c.detail for c in checks()]



def test_a_source_whose_own_inference_form_moved_the_logits_is_named_in_its_failed_check():
    """orchestrator/stages/verify.py switched_form_differs: a failed max_abs_diff of a model
    exported in the source's own inference form, when that form run by the source is already
    over the limit from the model as trained (a random-init LeViT-384: 0.55 vs 0.005), keeps
    failing and says that the switch moved the logits; under the limit, nothing is added."""
    from orchestrator.stages.verify import switched_form_differs

    def checks():
        return [Check("max_abs_diff", False, 0.549, 0.00505, "limit = ...",
                      {"model": "exported"}),
                Check("max_abs_diff", True, 1e-6, 0.00505, "limit = ...",
                      {"model": "simplified"})]

    found = checks()
    notes = switched_form_differs(found, {"images": 16, "max_abs_logit_change": 0.55})
    assert [c.passed for c in found] == [False, True]
    assert found[0].detail == (
        "limit = ...; the source's own inference form, which is what was exported, is "
        "already 0.55 from the model as trained (109x the limit, run by the source on the "
        "same 16 images): its switch, not the exporter, moved the logits (a random-init "
        "checkpoint can amplify the switch's rounding)")
    assert notes == [f"exported: {found[0].detail.split('; ', 1)[1]}"]
    assert found[1].detail == "limit = ..."
    exact = checks()
    assert switched_form_differs(exact, {"images": 16, "max_abs_logit_change": 2e-6}) == []
    assert [c.detail for c in exact] == [c.detail for c in checks()]


# ------------------------------------------------- the diagnosis itself, node by node
def _graph(nodes, inits=(), outputs=(("logits", ["batch", 4]),), batch="batch"):
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _to(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


def test_a_reduction_over_the_batch_is_named_and_shape_nodes_are_not(tmp_path):
    """A node whose input follows the symbolic batch and whose output starts with a fixed
    number (shape inference: a mean over the batch keeps a batch of 1) is named, an unnamed
    one by its op and position; Shape and Size, whose outputs describe a shape, are not."""
    model = _graph([helper.make_node("Shape", ["input"], ["shape"], name="shape_of"),
                    helper.make_node("Size", ["input"], ["size"], name="size_of"),
                    helper.make_node("ReduceMean", ["input"], ["mean"], axes=[0], keepdims=1),
                    helper.make_node("Add", ["input", "mean"], ["logits"], name="add")],
                   outputs=[("logits", ["batch", 4]), ("shape", [2]), ("size", [])])
    assert baking_nodes(model) == [{"node": "ReduceMean#2", "op": "ReduceMean",
                                    "input_shape": ["batch", 4], "output_shape": [1, 4]}]


def test_a_reshape_counts_only_when_it_fixes_a_batch_the_data_does_not_have():
    """Reshape to a constant shape (an initializer or a Constant node's value): counted when
    the shape starts with a fixed positive number the data's first dimension is not; a 0
    (copy the dimension) or -1 (infer it) first entry keeps the batch, and a Reshape of data
    that already has that first dimension changes nothing."""
    constant = helper.make_node("Constant", [], ["from_node"], name="shape_node",
                                value=numpy_helper.from_array(np.array([2, -1], np.int64)))
    nodes = [constant,
             helper.make_node("Reshape", ["input", "zero"], ["r0"], name="keeps_zero"),
             helper.make_node("Reshape", ["input", "minus"], ["r1"], name="keeps_minus"),
             helper.make_node("Reshape", ["input", "from_node"], ["r2"], name="fixes_two"),
             helper.make_node("ReduceMean", ["input"], ["one"], axes=[0], keepdims=1,
                              name="mean"),
             helper.make_node("Reshape", ["one", "again"], ["r3"], name="already_one"),
             helper.make_node("Add", ["r0", "r1"], ["logits"], name="add")]
    inits = [_to("zero", [0, 4]), _to("minus", [-1, 4]), _to("again", [1, 4])]
    outputs = [("logits", ["batch", 4]), ("r2", None), ("r3", None)]
    found = baking_nodes(_graph(nodes, inits, outputs))
    assert [(n["node"], n["op"]) for n in found] == [("fixes_two", "Reshape"),
                                                     ("mean", "ReduceMean")]
    assert (found[0]["input_shape"], found[0]["output_shape"]) == (["batch", 4], [2, -1])
    # The Constant node's value is read as the target shape.
    from verify.batch import graph_constants
    values = graph_constants(_graph(nodes, inits, outputs).graph)
    assert sorted(values) == ["again", "from_node", "minus", "zero"]
    assert values["from_node"].tolist() == [2, -1] and values["zero"].tolist() == [0, 4]


def test_baking_nodes_stops_at_its_limit_in_graph_order():
    nodes = [helper.make_node("Reshape", ["input", "one"], [f"r{i}"], name=f"bake{i}")
             for i in range(12)]
    nodes.append(helper.make_node("Relu", ["input"], ["logits"]))
    model = _graph(nodes, [_to("one", [1, -1])])
    assert [n["node"] for n in baking_nodes(model)] == [f"bake{i}" for i in range(10)]
    assert [n["node"] for n in baking_nodes(model, limit=3)] == ["bake0", "bake1", "bake2"]
    assert len(baking_nodes(model, limit=20)) == 12


def test_baking_nodes_needs_a_symbolic_batch_and_an_inferable_graph():
    """A graph whose input holds a fixed batch has no symbolic batch to lose; a graph
    without inputs has none either; a model shape inference cannot read names nothing."""
    held = _graph([helper.make_node("ReduceMean", ["input"], ["logits"], axes=[0],
                                    keepdims=1)], outputs=[("logits", [1, 4])], batch=4)
    assert baking_nodes(held) == []
    symbolic = _graph([helper.make_node("ReduceMean", ["input"], ["logits"], axes=[0],
                                        keepdims=1)], outputs=[("logits", [1, 4])])
    assert len(baking_nodes(symbolic)) == 1
    empty = helper.make_model(helper.make_graph([], "m", [], []),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert baking_nodes(empty) == []
    assert baking_nodes(b"\xff\xff not a model") == []


def test_dims_reads_names_numbers_and_unknowns():
    from verify.batch import _dims

    info = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 3, None])
    assert _dims(info) == ["batch", 3, None]
    zero = helper.make_tensor_value_info("z", TensorProto.FLOAT, [0])
    assert _dims(zero) == [0]


def test_the_named_nodes_are_cut_at_five_and_the_rest_counted():
    from verify.batch import _named

    nodes = [{"node": f"n{i}", "op": "Reshape", "input_shape": ["batch", 4],
              "output_shape": [1, 4]} for i in range(7)]
    assert _named(nodes[:1]) == ("; nodes that fix the batch dimension: n0 (Reshape "
                                 "['batch', 4] -> [1, 4])")
    assert _named(nodes[:2]) == ("; nodes that fix the batch dimension: n0 (Reshape "
                                 "['batch', 4] -> [1, 4]), n1 (Reshape ['batch', 4] -> [1, 4])")
    assert _named(nodes[:5]).count("Reshape") == 5 and "more" not in _named(nodes[:5])
    assert _named(nodes[:6]) == _named(nodes[:5]) + " (+1 more)"
    assert _named(nodes) == _named(nodes[:5]) + " (+2 more)"
    assert _named([]) == "; shape inference names no node that fixes it"


def test_batch_checks_limit_scale_and_what_counts_as_a_difference(tmp_path, monkeypatch):
    """The limit is atol + rtol x max|logits at batch 1|; a difference exactly at it passes;
    logits of another shape, or non-finite ones, are an infinite difference (the limit then
    atol alone where batch 1's logits are not finite); the passing detail names both sizes
    and the scope is kept."""
    monkeypatch.chdir(tmp_path)   # an empty folder: no model, so no file may be read
    tol = {"atol": 0.5, "rtol": 0.25}
    small = np.array([[4.0, -8.0]], np.float32)
    check = batch_check({1: small, 3: small + np.float32(2.5)}, tol, None, {"model": "m"})
    assert (check.passed, check.measured, check.limit) == (True, 2.5, 2.5)
    assert check.detail == "the same images at batch 1 and batch 3 give the same logits"
    assert check.scope == {"model": "m"}
    check = batch_check({1: small, 3: small + np.float32(2.75)}, tol, None, {"model": "m"})
    assert (check.passed, check.measured, check.limit) == (False, 2.75, 2.5)
    assert check.detail == ("batch baked into the graph: the same images give other logits "
                            "at batch 3 than at batch 1; shape inference names no node that "
                            "fixes it. " + "The exporter traced a batch into the graph; its "
                            "dynamic-shape export or an export rewrite must keep the batch "
                            "symbolic")
    assert batch_check({1: small, 2: small[:, :1]}, tol, None, {}).measured == float("inf")
    nan = np.array([[np.nan, 1.0]], np.float32)
    check = batch_check({1: nan, 2: nan}, tol, None, {})
    assert (check.passed, check.measured, check.limit) == (False, float("inf"), 0.5)
    check = batch_check({1: small, 2: nan}, tol, None, {})
    assert (check.passed, check.measured, check.limit) == (False, float("inf"), 2.5)


@pytest.mark.parametrize("agree, where", [
    ({1: True, 4: True}, "; right at batch 1, 4"),
    ({1: False, 4: False}, ", wrong at batch 1, 4"),
    ({4: True}, "; right at batch 4, wrong at batch 1"),
    ({}, "")])
def test_a_failed_batch_check_says_at_which_sizes_the_source_agreed(agree, where):
    small = np.zeros((1, 2), np.float32)
    check = batch_check({1: small, 4: small + 1}, {"atol": 0.0, "rtol": 0.0}, None, {},
                        agree=agree)
    assert not check.passed
    assert check.detail.startswith("batch baked into the graph: the same images give other "
                                   f"logits at batch 4 than at batch 1{where}; shape "
                                   "inference names no node")


def test_in_batches_feeds_each_batch_and_pads_a_fixed_graphs_short_last_one():
    """verify/ort_runner.py in_batches with a recording `run`: a dynamic graph gets the asked
    batch size, the last batch short; a graph that holds its batch gets exactly that many
    images each time, a short last batch padded with copies of its last image and every
    output cut back to the real images; `run`'s outputs are kept in order."""
    from verify.ort_runner import fixed_batch, in_batches

    x = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    fed = []

    def run(batch):
        fed.append(batch[:, 0].tolist())
        return [batch * 2, batch[:, :1]]

    parts = in_batches(x, 3, None, run)
    assert fed == [[0, 1, 2], [3, 4, 5], [6]]
    assert [[p.shape[0] for p in part] for part in parts] == [[3, 3], [3, 3], [1, 1]]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), 2 * x)
    fed.clear()
    parts = in_batches(x, 3, 4, run)
    assert fed == [[0, 1, 2, 3], [4, 5, 6, 6]]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), 2 * x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), x[:, :1])
    fed.clear()
    parts = in_batches(x[:6], 3, 4, run)            # two copies of the last image
    assert fed == [[0, 1, 2, 3], [4, 5, 5, 5]]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), 2 * x[:6])
    fed.clear()
    assert len(in_batches(x[:4], 1, 2, run)) == 2 and fed == [[0, 1], [2, 3]]   # no padding
    assert in_batches(x[:0], 3, None, run) == []
    assert (fixed_batch([4, 3]), fixed_batch(["N", 3]), fixed_batch([None, 3]),
            fixed_batch([0, 3]), fixed_batch([-1, 3]), fixed_batch([])) == (
        4, None, None, None, None, None)


def test_outputs_names_tensors_and_batches_them_as_asked(tmp_path):
    from verify.ort_runner import OrtRunner

    runner = OrtRunner(_model(tmp_path / "ok.onnx", baked=False), threads=1)
    assert (runner.name, runner.input_name, runner.output_name) == ("onnxruntime", "input",
                                                                    "logits")
    x = _x(5)
    whole = runner.outputs(["logits"], x)
    batched = runner.outputs(["logits"], x, 2)
    assert len(whole) == len(batched) == 1
    np.testing.assert_array_equal(whole[0], 2 * x)
    np.testing.assert_array_equal(batched[0], 2 * x)
    assert runner.session.get_session_options().intra_op_num_threads == 1


def test_the_diagnosis_reads_graphs_shape_inference_only_half_agrees_with():
    """Shape inference is asked not to be strict: a graph whose declared output shape
    contradicts what inference finds (exporters write such shapes: MindSpore's convit) is
    still read, and its baking node named."""
    model = _graph([helper.make_node("ReduceMean", ["input"], ["mean"], axes=[0], keepdims=1,
                                     name="mean"),
                    helper.make_node("Relu", ["input"], ["logits"])],
                   outputs=[("logits", ["batch", 5]), ("mean", None)])
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert [n["node"] for n in baking_nodes(model)] == ["mean"]


def test_only_the_first_dimension_is_the_batch_and_only_a_reshape_has_a_target():
    """A symbolic second dimension is not the batch: a node that fixes it is not named. A
    constant second input of another op (a scale) is no target shape."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["input"], ["t"], perm=[1, 0]),
         helper.make_node("ReduceMean", ["t"], ["fixed_channels"], axes=[0], keepdims=1),
         helper.make_node("Mul", ["input", "scale"], ["logits"], name="scale_it")],
        "m", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "c"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "c"]),
         helper.make_tensor_value_info("fixed_channels", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([2.0], np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert baking_nodes(model) == []


def test_the_batch_check_compares_the_smallest_and_the_largest_batch():
    """With logits at three batch sizes, the check is batch 1 against the largest; a middle
    size that agrees does not hide a largest one that does not."""
    small = np.ones((1, 2), np.float32)
    tol = {"atol": 0.0, "rtol": 0.0}
    check = batch_check({1: small, 2: small, 4: small}, tol, None, {})
    assert check.passed
    assert check.detail == "the same images at batch 1 and batch 4 give the same logits"
    check = batch_check({4: small + 1, 1: small, 2: small}, tol, None, {})
    assert check.passed is False and check.measured == 1.0
    assert check.detail.startswith("batch baked into the graph: the same images give other "
                                   "logits at batch 4 than at batch 1; shape inference")


def test_a_refusal_is_quoted_to_300_characters_and_runs_on_one_thread_unless_told(
        tmp_path, monkeypatch):
    """refused_at_another_batch quotes ONNX Runtime's first line cut to 300 characters (a
    node name can be longer: exporters write scope paths), and runs the model on one
    thread unless given another count."""
    import verify.ort_runner as ort_runner
    from verify.batch import refused_at_another_batch

    long_name = "cat_" + "x" * 400
    nodes = [helper.make_node("Expand", ["token", "to"], ["tokens"], name="expand_token"),
             helper.make_node("Concat", ["tokens", "input"], ["logits"], axis=1,
                              name=long_name)]
    inits = [numpy_helper.from_array(np.ones((1, 2), np.float32), "token"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "to")]
    baked = tmp_path / "baked.onnx"
    onnx.save(_graph(nodes, inits, outputs=[("logits", ["batch", 6])]), str(baked))
    threads = []

    class Seen(ort_runner.OrtRunner):
        def __init__(self, path, count=None):
            threads.append(count)
            super().__init__(path, count)

    monkeypatch.setattr(ort_runner, "OrtRunner", Seen)
    check = refused_at_another_batch(baked, [4], {})
    quoted = check.detail.split(" at batch 2 (", 1)[1]
    assert len(quoted.split("); nodes that fix", 1)[0]) == 300 and long_name[:40] in quoted
    refused_at_another_batch(baked, [4], {}, threads=2)
    assert threads == [1, 2]
