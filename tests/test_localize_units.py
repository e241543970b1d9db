"""verify/localize.py on a hand-built ONNX model whose "source" layer outputs are computed
here with numpy: pairing, follower chains, chunking, the first diverging layer and every
field of the result. The end-to-end runs on real conversions are in test_localize.py."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from verify import localize as loc

RNG = np.random.default_rng(7)
X = RNG.standard_normal((1, 4)).astype(np.float32)
W1 = RNG.standard_normal((4, 5)).astype(np.float32)
B1 = RNG.standard_normal(5).astype(np.float32)
W2 = RNG.standard_normal((5, 3)).astype(np.float32)


def _model(path):
    """x -> fc1 MatMul (initializer) -> Add bias -> Relu -> fc2 Gemm (weight from a Constant
    node, unnamed) -> y."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "B1"], ["h1b"]),
             helper.make_node("Relu", ["h1b"], ["r1"]),
             helper.make_node("Constant", [], ["W2c"], value=numpy_helper.from_array(W2)),
             helper.make_node("Gemm", ["r1", "W2c"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(B1, "B1")])
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)],
                              ir_version=8)
    onnx.save(model, str(path))
    return path


def _capture(folder, fc2_scale=1.0, fc1_scale=1.0):
    """The source's records (torch-style [out, in] weights) and their outputs on X."""
    h1 = X.astype(np.float64) @ W1
    r1 = np.maximum(h1 + B1, 0)
    outputs = {"fc1.npy": h1 * fc1_scale, "act1.npy": r1, "drop.npy": r1,
               "fc2.npy": (r1 @ W2) * fc2_scale}
    for name, value in outputs.items():
        np.save(folder / name, value)
    return [
        {"kind": "linear", "name": "head.fc1", "weight_shape": [5, 4], "file": "fc1.npy",
         "shape": [1, 5]},
        {"kind": "norm", "name": "head.act1", "weight_shape": None, "file": "act1.npy",
         "shape": [1, 5]},
        {"kind": "other", "name": "head.drop", "weight_shape": None, "file": "drop.npy",
         "shape": [1, 5]},
        {"kind": "linear", "name": "head.fc2", "weight_shape": [3, 5], "file": "fc2.npy",
         "shape": [1, 3]}]


def test_every_layer_agrees(tmp_path):
    model = _model(tmp_path / "m.onnx")
    result = loc.localize(model, X, _capture(tmp_path), tmp_path)
    worst = result.pop("worst")
    last = result.pop("last_agreeing")
    summary = result.pop("summary")
    assert result == {"onnx_model": "m.onnx", "rtol": 1e-3, "source_layers": 2,
                      "onnx_layers": 2, "aligned": 2, "compared": 2, "sessions": 1,
                      "first_diverging": None, "images": 1}
    assert last["layer"] == "head.fc2" and last["onnx_node"] == "Gemm#4"
    assert last["onnx_op"] == "Gemm" and last["onnx_output"] == "y"
    assert last["weight_shape"] == [3, 5] and last["compared_with"] == "head.fc2"
    assert worst["relative"] < 1e-6 and worst["max_abs_diff"] < 1e-5
    assert re.fullmatch(r"all 2 aligned layers agree within 0\.001 of their range \(largest "
                        rf"\S+ at {worst['layer']}\): the difference builds up or arises after "
                        r"the last aligned layer", summary), summary
    assert not list(tmp_path.glob("localize-*"))   # scratch beside the capture, removed


def test_the_first_diverging_layer_is_named_with_its_measured_difference(tmp_path):
    model = _model(tmp_path / "m.onnx")
    result = loc.localize(model, X, _capture(tmp_path, fc2_scale=1.01), tmp_path, chunk=1)
    bad, last = result["first_diverging"], result["last_agreeing"]
    reference = (np.maximum(X.astype(np.float64) @ W1 + B1, 0) @ W2) * 1.01
    expected_diff = float(np.abs(reference / 1.01 - reference).max())
    assert bad["layer"] == "head.fc2" and bad["onnx_node"] == "Gemm#4" and bad["onnx_op"] == "Gemm"
    assert bad["compared_with"] == "head.fc2" and bad["onnx_output"] == "y"
    assert bad["relative"] == pytest.approx(0.01 / 1.01, rel=1e-4)
    assert bad["max_abs_diff"] == pytest.approx(expected_diff, rel=1e-4)
    assert result["worst"] == bad
    # fc1 agrees exactly as the MatMul's own output; compared with its norm, the Relu follower.
    assert last["layer"] == "head.fc1" and last["onnx_node"] == "fc1"
    assert last["compared_with"] == "head.fc1" and last["onnx_output"] == "h1"
    assert result["compared"] == 2 and result["sessions"] == 2
    assert result["summary"] == (
        f"first diverging layer: head.fc2 (ONNX node Gemm#4, Gemm): max|diff| "
        f"{bad['max_abs_diff']:.3g}, 0.0099 of its range (limit 0.001); the last agreeing "
        "layer is head.fc1")
    # A looser limit lets the same difference pass.
    loose = loc.localize(model, X, _capture(tmp_path, fc2_scale=1.01), tmp_path, rtol=0.01)
    assert loose["first_diverging"] is None and loose["rtol"] == 0.01
    assert loose["summary"].startswith("all 2 aligned layers agree within 0.01 of their range")


def test_the_closer_of_layer_and_norm_is_taken_and_a_first_layer_fault_stops_early(tmp_path):
    model = _model(tmp_path / "m.onnx")
    # fc1's own output off by 2x, its norm (Relu of fc1 + bias) right: the ONNX follower
    # tensor matches the norm, so fc1 agrees (the case of a BatchNorm folded into a Conv).
    agreed = loc.localize(model, X, _capture(tmp_path, fc1_scale=2.0), tmp_path)
    assert agreed["first_diverging"] is None
    assert agreed["last_agreeing"]["layer"] == "head.fc2"
    captured = _capture(tmp_path, fc1_scale=2.0)
    np.save(tmp_path / "act1.npy", np.load(tmp_path / "act1.npy") * 2.0)
    result = loc.localize(model, X, captured, tmp_path, chunk=1)
    bad = result["first_diverging"]
    # The closest of {fc1's output, its norm's} x {MatMul, + bias, Relu}, worked out here.
    h1 = X.astype(np.float64) @ W1
    onnx_side = [h1, h1 + B1, np.maximum(h1 + B1, 0)]
    source_side = [2 * h1, 2 * np.maximum(h1 + B1, 0)]
    closest = min(np.abs(o - s).max() / np.abs(s).max() for o in onnx_side for s in source_side)
    assert bad["layer"] == "head.fc1" and bad["relative"] == pytest.approx(closest, rel=1e-5)
    assert result["last_agreeing"] is None and result["compared"] == 1
    assert result["sessions"] == 1     # the second chunk is never run
    assert result["summary"].endswith("(limit 0.001); it is the first aligned layer")


def test_nothing_aligned_is_said(tmp_path):
    model = _model(tmp_path / "m.onnx")
    captured = [{"kind": "conv", "name": "c", "weight_shape": [8, 3, 3, 3], "file": "c.npy",
                 "shape": [1, 8]}]
    assert loc.localize(model, X, captured, tmp_path) == {
        "onnx_model": "m.onnx", "rtol": 1e-3, "source_layers": 1, "onnx_layers": 2,
        "aligned": 0, "compared": 0, "sessions": 0, "first_diverging": None,
        "note": "no source layer could be aligned with an ONNX node by weight shape: cannot "
                "localise"}


def test_onnx_layers_follow_single_consumer_chains_up_to_three(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Add", ["a", "x"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Mul", ["c", "x"], ["d"]),
             helper.make_node("Sigmoid", ["d"], ["e"]),          # a fourth follower: left out
             helper.make_node("MatMul", ["e", "w"], ["f"]),       # no name: op#index
             helper.make_node("Relu", ["f"], ["g"]),
             helper.make_node("Identity", ["f"], ["g2"]),         # f has two consumers
             helper.make_node("MatMul", ["g", "x"], ["h"], name="dynamic"),  # not a weight
             helper.make_node("Conv", ["g"], ["i"], name="one_input"),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Gemm", ["t", "w"], ["j"], name="gemm"),
             helper.make_node("Softmax", ["j"], ["k"])]           # not a follower
    graph = helper.make_graph(nodes, "g", [], [], [w])
    layers = loc.onnx_layers(helper.make_model(graph))
    assert layers == [
        loc.OnnxLayer("mm", "MatMul", "a", (2, 2), ("b", "c", "d")),
        loc.OnnxLayer("MatMul#5", "MatMul", "f", (2, 2), ()),
        loc.OnnxLayer("gemm", "Gemm", "j", (2, 2), ())]


def test_source_layers_take_a_norm_only_right_after_with_the_same_shape():
    captured = [
        {"kind": "conv", "name": "c1", "weight_shape": [4, 3, 1, 1], "file": "c1", "shape": [4]},
        {"kind": "norm", "name": "bn1", "file": "bn1", "shape": [4]},
        {"kind": "conv", "name": "c2", "weight_shape": [4, 4, 1, 1], "file": "c2", "shape": [4]},
        {"kind": "norm", "name": "pooled", "file": "p", "shape": [2]},
        {"kind": "linear", "name": "fc", "weight_shape": [2, 4], "file": "fc", "shape": [2]},
        {"kind": "relu", "name": "act", "file": "a", "shape": [2]},
        {"kind": "linear", "name": "last", "weight_shape": [2, 2], "file": "l", "shape": [2]}]
    assert loc.source_layers(captured) == [
        loc.SourceLayer("c1", "conv", (4, 3, 1, 1), "c1", "bn1", "bn1"),
        loc.SourceLayer("c2", "conv", (4, 4, 1, 1), "c2"),
        loc.SourceLayer("fc", "linear", (2, 4), "fc"),
        loc.SourceLayer("last", "linear", (2, 2), "l")]


def test_align_pairs_transposed_linear_weights_and_skips_what_does_not_match():
    src = [loc.SourceLayer("a", "conv", (8, 3, 3, 3), "a"),
           loc.SourceLayer("extra", "conv", (5, 5, 1, 1), "e"),
           loc.SourceLayer("fc", "linear", (10, 8), "f")]
    dst = [loc.OnnxLayer("A", "Conv", "a", (8, 3, 3, 3)),
           loc.OnnxLayer("B", "Conv", "b", (3, 8, 3, 3)),      # not a's shape in another order
           loc.OnnxLayer("F", "Gemm", "f", (8, 10))]
    assert [(s.name, d.node) for s, d in loc.align(src, dst)] == [("a", "A"), ("fc", "F")]
    assert loc._shape_key([3, 2]) == (2, 3) and loc._shape_key([3, 2, 1]) == (3, 2, 1)


@pytest.mark.parametrize("onnx_out,source,expected", [
    (np.array([1.0, 2.0]), np.array([1.0, 4.0]), (2.0, 0.5)),
    (np.array([[1.0, 2.0]]), np.array([1.0, 3.0]), (1.0, 1 / 3)),       # reshaped
    (np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0]), (float("inf"), float("inf"))),
    (np.array([0.0, 0.0]), np.array([0.0, 0.0]), (0.0, 0.0)),
    (np.array([0.5, 0.0]), np.array([0.0, 0.0]), (0.5, float("inf"))),
    (np.zeros(0), np.zeros(0), (0.0, 0.0)),
    (np.array([-3.0]), np.array([-1.0]), (2.0, 2.0)),
])
def test_relative_difference(onnx_out, source, expected):
    assert loc._relative(onnx_out, source) == pytest.approx(expected)


def test_exposed_outputs_are_added_once_and_the_model_is_not_changed(tmp_path):
    model = onnx.load(str(_model(tmp_path / "m.onnx")))
    exposed = loc._with_outputs(model, ["h1", "y", "r1"])
    assert [o.name for o in exposed.graph.output] == ["y", "h1", "r1"]
    assert [o.name for o in model.graph.output] == ["y"]


def test_the_scratch_model_lives_beside_the_capture_only(tmp_path, monkeypatch):
    """No file in the working folder, nothing in the system temp folder (here one that does not
    exist, so a scratch put there fails), nothing left beside the capture."""
    import tempfile

    work, capture = tmp_path / "cwd", tmp_path / "capture"
    work.mkdir()
    capture.mkdir()
    model = _model(tmp_path / "m.onnx")
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp"))
    opened = []

    class Seen(loc.OrtRunner):   # the real runner, its model path and threads noted
        def __init__(self, path, threads=None):
            opened.append((Path(path), threads))
            super().__init__(path, threads)

    monkeypatch.setattr(loc, "OrtRunner", Seen)
    result = loc.localize(model, X, _capture(capture), capture, threads=1)
    assert result["first_diverging"] is None and result["sessions"] == 1
    [(exposed, threads)] = opened
    assert (exposed.name, exposed.parent.parent, threads) == ("exposed.onnx", capture, 1)
    assert exposed.parent.name.startswith("localize-")
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in capture.iterdir()) == ["act1.npy", "drop.npy", "fc1.npy",
                                                         "fc2.npy"]


def test_a_tie_names_the_layer_not_its_norm_and_the_limit_is_inclusive(tmp_path):
    """The norm's output equal to the layer's: the layer itself is named. A difference of
    exactly the limit agrees (the limit is inclusive)."""
    model = _model(tmp_path / "m.onnx")
    captured = _capture(tmp_path, fc2_scale=1.01)           # fc2 diverges: fc1 is the last ok
    h1 = X.astype(np.float64) @ W1
    np.save(tmp_path / "fc1.npy", np.maximum(h1 + B1, 0))    # fc1 == its norm act1
    last = loc.localize(model, X, captured, tmp_path)["last_agreeing"]
    assert (last["layer"], last["compared_with"], last["onnx_output"]) == (
        "head.fc1", "head.fc1", "r1")
    # An exact limit with values chosen so the relative difference is a binary fraction.
    src = tmp_path / "exact"
    src.mkdir()
    path = _eye_chain(tmp_path / "eye.onnx", ["y"])
    np.save(src / "fc.npy", np.array([[4.0, 1.5]]))          # ONNX gives [4, 1]: 0.5 / 4
    rec = [{"kind": "linear", "name": "fc", "weight_shape": [2, 2], "file": "fc.npy",
            "shape": [1, 2]}]
    x = np.array([[4.0, 1.0]], dtype=np.float32)
    assert loc.localize(path, x, rec, src, rtol=0.125)["first_diverging"] is None
    assert loc.localize(path, x, rec, src, rtol=0.124)["first_diverging"]["relative"] == 0.125


def _eye_chain(path, outputs):
    """x (1 x 2) through one identity-weight MatMul per name in `outputs`, in that order."""
    inputs = ["x", *outputs[:-1]]
    nodes = [helper.make_node("MatMul", [i, "w"], [o], name=f"mm_{o}")
             for i, o in zip(inputs, outputs)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info(outputs[-1], TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)],
                                ir_version=8), str(path))
    return path


def test_the_worst_of_equal_layers_is_the_first(tmp_path):
    path = _eye_chain(tmp_path / "two.onnx", ["a", "b"])
    x = np.array([[4.0, 1.0]], dtype=np.float32)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.array([[4.0, 1.5]]))   # both 0.125 off
    rec = [{"kind": "linear", "name": n, "weight_shape": [2, 2], "file": f"{n}.npy",
            "shape": [1, 2]} for n in ("a", "b")]
    result = loc.localize(path, x, rec, tmp_path, rtol=0.5)
    assert result["worst"]["layer"] == "a" and result["last_agreeing"]["layer"] == "b"


def test_a_norm_as_the_last_record_is_taken():
    captured = [{"kind": "conv", "name": "c", "weight_shape": [4, 3, 1, 1], "file": "c",
                 "shape": [4]},
                {"kind": "norm", "name": "bn", "file": "bn", "shape": [4]}]
    assert loc.source_layers(captured) == [
        loc.SourceLayer("c", "conv", (4, 3, 1, 1), "c", "bn", "bn")]


def test_align_keeps_order_within_a_block_and_long_repeated_sequences():
    """difflib's autojunk would treat a shape repeated in a long network as junk and align
    nothing of it; a block of several layers pairs each with its own."""
    shapes = [(8, 3, 3, 3), (16, 8, 1, 1), (16, 16, 3, 3)]
    src = [loc.SourceLayer(f"s{i}", "conv", shapes[i % 3], "f") for i in range(300)]
    dst = [loc.OnnxLayer(f"d{i}", "Conv", "o", shapes[i % 3]) for i in range(300)]
    extra = loc.OnnxLayer("x", "Conv", "o", (1, 1))     # an ONNX-only layer in front
    pairs = loc.align(src, [extra] + dst)
    assert [(s.name, d.node) for s, d in pairs] == [(f"s{i}", f"d{i}") for i in range(300)]
    short = loc.align(src[1:4], [extra] + dst[1:4])
    assert [(s.name, d.node) for s, d in short] == [("s1", "d1"), ("s2", "d2"), ("s3", "d3")]


def test_a_column_output_is_reshaped_not_broadcast():
    # [[1], [2]] against [1, 3]: as the source's shape the difference is 1; broadcast, 2.
    assert loc._relative(np.array([[1.0], [2.0]]), np.array([1.0, 3.0])) == (1.0, 1 / 3)


def _batch_model(path, hold_batch: str | None):
    """x [N, 4] -> fc1 MatMul -> (held: the first row broadcast over the batch, as a graph
    traced at batch 1 treats it; or reshaped to the traced [1, 5]) -> Add -> Relu -> fc2."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1")]
    if hold_batch == "broadcast":
        nodes += [helper.make_node("Slice", ["h1", "zero", "one", "zero"], ["first"]),
                  helper.make_node("Shape", ["h1"], ["shape"]),
                  helper.make_node("Expand", ["first", "shape"], ["held"])]
    elif hold_batch == "reshape":
        nodes += [helper.make_node("Reshape", ["h1", "traced"], ["held"])]
    else:
        nodes += [helper.make_node("Identity", ["h1"], ["held"])]
    nodes += [helper.make_node("Add", ["held", "B1"], ["h1b"]),
              helper.make_node("Relu", ["h1b"], ["r1"]),
              helper.make_node("Gemm", ["r1", "W2"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(B1, "B1"),
         numpy_helper.from_array(W2, "W2"),
         numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([1, 5], np.int64), "traced")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 13)],
                                ir_version=8), str(path))
    return path


def _batch_capture(folder, x):
    h1 = x.astype(np.float64) @ W1
    np.save(folder / "fc1.npy", h1)
    np.save(folder / "fc2.npy", np.maximum(h1 + B1, 0) @ W2)
    return [{"kind": "linear", "name": "head.fc1", "weight_shape": [5, 4], "file": "fc1.npy",
             "shape": list(h1.shape)},
            {"kind": "linear", "name": "head.fc2", "weight_shape": [3, 5], "file": "fc2.npy",
             "shape": [len(x), 3]}]


def test_a_graph_that_holds_the_traced_batch_parts_only_after_the_first_image(tmp_path):
    """Right on one image, wrong on the others of a batch (mmpretrain swin-tiny's export, a
    MindSpore class token): the localiser compares several images at once, so it names the
    layer and says that only the images after the first part there."""
    # Seeded here, not from the module RNG (its state depends on the tests before this one
    # on the same xdist worker): about 1 in 10 draws leaves an image's fc2 output all 0
    # (ReLU), and an image that agrees by chance would not part.
    x = np.random.default_rng(5).standard_normal((4, 4)).astype(np.float32)
    held = _batch_model(tmp_path / "held.onnx", "broadcast")
    alone = loc.localize(held, x[:1], _batch_capture(tmp_path, x[:1]), tmp_path)
    assert alone["first_diverging"] is None and alone["images"] == 1   # what batch 1 saw
    found = loc.localize(held, x, _batch_capture(tmp_path, x), tmp_path)
    bad = found["first_diverging"]
    assert found["images"] == 4 and bad["layer"] == "head.fc2" and bad["onnx_node"] == "fc2"
    assert found["last_agreeing"]["layer"] == "head.fc1"
    assert bad["rows"] == [1, 2, 3] and found["worst"] == bad
    assert bad["alone"] < 1e-6
    assert found["summary"].endswith(
        f"; images 2, 3, 4 of the 4 part there; on the first image alone (batch 1) it agrees "
        f"({bad['alone']:.3g}): the graph holds the batch it was traced at (batch held in the "
        "graph)")
    # At a limit equal to that figure it still agrees (the limit is inclusive, as for layers).
    # fc1's reference is ONNX Runtime's own output here, so fc1 agrees at any limit.
    from verify.ort_runner import OrtRunner

    records = _batch_capture(tmp_path, x)
    exposed = tmp_path / "exposed.onnx"
    onnx.save(loc._with_outputs(onnx.load(str(held)), ["h1"]), str(exposed))
    [h1] = OrtRunner(exposed, 1).outputs(["h1"], x)
    np.save(tmp_path / "fc1.npy", h1.astype(np.float64))
    at = loc.localize(held, x, records, tmp_path, rtol=bad["alone"])
    assert at["last_agreeing"]["relative"] == 0.0
    assert at["first_diverging"]["layer"] == "head.fc2"
    assert at["first_diverging"]["alone"] == bad["alone"]
    assert at["summary"].endswith("(batch held in the graph)")
    # A fault in every image is not called a held batch.
    clean = _batch_model(tmp_path / "clean.onnx", None)
    records = _batch_capture(tmp_path, x)
    shifted = np.load(tmp_path / "fc2.npy")
    np.save(tmp_path / "fc2.npy", shifted + 0.01 * np.abs(shifted).max())   # 1 % everywhere
    every = loc.localize(clean, x, records, tmp_path)
    assert every["first_diverging"]["rows"] == [0, 1, 2, 3]
    assert every["first_diverging"]["alone"] > 1e-3
    assert every["summary"].endswith("; images 1, 2, 3, 4 of the 4 part there")


@pytest.mark.parametrize("batch", [2, 3])
def test_a_graph_refused_at_the_batch_size_is_compared_on_the_first_image(tmp_path, batch):
    """ONNX Runtime's first line is quoted in the note (batch 2 is a batch like any other)."""
    from verify.ort_runner import OrtRunner

    x = RNG.standard_normal((batch, 4)).astype(np.float32)
    model = _batch_model(tmp_path / "reshape.onnx", "reshape")
    found = loc.localize(model, x, _batch_capture(tmp_path, x), tmp_path)
    try:
        OrtRunner(model, 1).infer(x, batch)
    except Exception as exc:  # noqa: BLE001 - ORT's error types differ by build
        said = str(exc).splitlines()[0][:300]
    assert found["note"] == (f"ONNX Runtime refused the model at batch {batch} ({said}); "
                             "compared on the first image at batch 1")
    assert found["first_diverging"] is None and found["compared"] == 2 and found["images"] == 1
    assert found["worst"]["relative"] < 1e-6


def test_rows_over_names_each_image_by_its_closest_pairing():
    """localize._rows_over: per image, the smallest relative difference over the pairs tried
    (as the layer is judged: its own output or the norm after it), against each reference's
    whole range; images strictly over rtol, 0-based."""
    source = np.array([[10.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    near = source + np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 2.0]])   # rows: 0, .05, .2
    far = source + np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 1.5]])    # rows: .3, 0, .15
    assert loc._rows_over([(near, source)], 3, 0.01) == [1, 2]
    assert loc._rows_over([(near, source)], 3, 0.05) == [2]           # over, not at
    assert loc._rows_over([(near, source), (far, source)], 3, 0.01) == [2]
    assert loc._rows_over([(far, source), (near, source)], 3, 0.149) == [2]
    assert loc._rows_over([(far, source), (near, source)], 3, 0.15) == []
    # An output of the same size in another layout ((N, C, 1, 1) for (N, C)) is reshaped.
    assert loc._rows_over([(near.reshape(3, 2, 1, 1), source)], 3, 0.01) == [1, 2]


def test_rows_over_skips_pairs_that_do_not_lead_with_the_batch():
    source = np.array([[1.0, 2.0], [3.0, 4.0]])
    off = source + [[0.0, 0.0], [1.0, 0.0]]
    assert loc._rows_over([(off, source)], 2, 0.1) == [1]
    assert loc._rows_over([(off, source)], 1, 0.1) is None            # one image: no rows
    assert loc._rows_over([(off[:1], source[:1])], 2, 0.1) is None    # not the batch's size
    assert loc._rows_over([(np.float64(1.0), np.float64(2.0))], 2, 0.1) is None   # 0-d
    assert loc._rows_over([(off[:, :1], source)], 2, 0.1) is None     # another size
    assert loc._rows_over([(off.T, source.T)], 3, 0.1) is None        # batch 3 of 2 rows
    assert loc._rows_over([], 2, 0.1) is None
    # A skipped pair does not hide the one that counts.
    assert loc._rows_over([(off[:, :1], source), (off, source)], 2, 0.1) == [1]


def test_rows_over_is_relative_whatever_the_references_range():
    """A reference whose range is under 1 is still a relative measure: a difference of 1e-4
    of a 0.5 range is under 1e-3 and does not part."""
    source = np.array([[0.5, 0.0], [0.0, 0.25]])
    moved = source + np.array([[0.0, 5e-5], [4e-3, 0.0]])
    assert loc._rows_over([(moved, source)], 2, 1e-3) == [1]


def test_rows_over_of_an_all_zero_reference_counts_any_difference():
    zero = np.zeros((3, 2))
    moved = zero.copy()
    moved[2, 1] = 1e-9
    assert loc._rows_over([(moved, zero)], 3, 1e-3) == [2]
    assert loc._rows_over([(zero, zero)], 3, 1e-3) == []


def test_alone_is_the_first_images_closest_difference_at_batch_one(tmp_path):
    """localize._alone runs the first image alone and takes the smallest relative difference
    over the (tensor, reference) pairs tried, each reference cut to its first image; nothing
    to say at batch 1, for references that do not lead with the batch, or for a graph ONNX
    Runtime refuses at batch 1."""
    from verify.ort_runner import OrtRunner

    # Its own seeded data, not the module RNG's (whose state depends on the tests run before
    # this one on the same xdist worker): the first image's logits must not all be 0 (ReLU),
    # or every difference on it is 0.
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    runner = OrtRunner(_batch_model(tmp_path / "m.onnx", None), 1)
    y = runner.infer(x, 3).astype(np.float64)
    assert np.abs(y[0]).min() > 1e-3
    first = y.copy()
    first[0] *= 1.5                              # the first image off by a third ...
    first[1:] *= 100                             # (the others are not looked at)
    assert loc._alone(runner, x, [("y", first)]) == pytest.approx(1 / 3, rel=1e-5)
    other = y.copy()
    other[1:] *= 2                               # ... this one right on the first image
    assert loc._alone(runner, x, [("y", first), ("y", other)]) < 1e-6
    assert loc._alone(runner, x, [("y", other), ("y", first)]) < 1e-6
    assert loc._alone(runner, x[:1], [("y", first[:1])]) is None       # batch 1 already
    assert loc._alone(runner, x[:2], [("y", first[:2])]) == pytest.approx(1 / 3, rel=1e-5)
    assert loc._alone(runner, x, [("y", y[:2])]) is None               # not the batch
    assert loc._alone(runner, x, [("y", np.float64(1.0))]) is None     # 0-d
    assert loc._alone(runner, x, [("h1", y)]) is None                  # ORT refuses
