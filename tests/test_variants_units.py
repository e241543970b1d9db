"""Variants on a small real model: the int8 build's in-graph percentile ranges against ONNX
Runtime's own percentile calibrator and numpy's exact order statistic; minmax and entropy
calibration; fp16's clipped-weight count; the variant gates (top-1 agreement, top-1 drop)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from converters.variants import VariantFailed, make_int8, percentile_ranges

PERCENTILE = 99.999
OP_TYPES = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _model(path: Path, opset: int = 17) -> Path:
    """input (N,3,16,16) -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
            for name, shape in (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("fc", (10, 8)))]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                      ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.save(model, str(path))
    return path


def _ort_ranges(model: Path, data: np.ndarray, tmp: Path) -> dict:
    calibrator = create_calibrator(model, OP_TYPES, augmented_model_path=str(tmp / "aug.onnx"),
                                   calibrate_method=CalibrationMethod.Percentile,
                                   extra_options={"percentile": PERCENTILE})
    class Reader:   # ORT's CalibrationDataReader protocol, 8 images per call
        def __init__(self, batch):
            self.items = iter([{"input": batch}])

        def get_next(self):
            return next(self.items, None)

    for start in range(0, len(data), 8):
        calibrator.collect_data(Reader(data[start:start + 8]))
    return {k: tuple(float(x) for x in v.range_value)
            for k, v in calibrator.compute_data().data.items()}


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(1)
    # Heavy tails, so the percentile sits well inside the range (not clipped to the max).
    return (rng.standard_t(3, (48, 3, 16, 16))).astype(np.float32)


def test_percentile_ranges_are_the_exact_order_statistic(tmp_path, calibration):
    model = _model(tmp_path / "tiny.onnx")
    ranges = percentile_ranges(model, calibration, PERCENTILE, OP_TYPES, tmp_path, batch=16)
    low, high = (float(x) for x in ranges.data["input"].range_value)
    # Independently: the smallest v with share(|x| <= v) >= 99.999 %, clipped to min / max.
    values = np.sort(np.abs(calibration.ravel()).astype(np.float64))
    v = values[int(np.ceil(PERCENTILE / 100 * len(values))) - 1]
    assert high == pytest.approx(min(v, calibration.max()), rel=1e-6)
    assert low == pytest.approx(max(-v, calibration.min()), rel=1e-6)
    assert high < np.abs(calibration).max()          # the tail really was cut


def test_a_tail_concentrated_in_a_smaller_last_batch_is_not_lost(tmp_path, calibration):
    """48 images in batches of 20, 20 and 8, the largest values all in the last 8: each batch's
    TopK must be sized for the whole set's tail, not for its own share of it."""
    model = _model(tmp_path / "tiny.onnx")
    data = calibration.copy()
    data[-8:] *= 50.0
    ranges = percentile_ranges(model, data, 99.0, OP_TYPES, tmp_path, batch=20)
    values = np.sort(np.abs(data.ravel()).astype(np.float64))
    v = values[int(np.ceil(0.99 * len(values))) - 1]
    assert float(ranges.data["input"].range_value[1]) == pytest.approx(v, rel=1e-6)


def test_percentile_ranges_match_onnxruntime_within_a_histogram_bin(tmp_path, calibration):
    model = _model(tmp_path / "tiny.onnx")
    ours = {k: tuple(float(x) for x in v.range_value) for k, v in percentile_ranges(
        model, calibration, PERCENTILE, OP_TYPES, tmp_path, batch=16).data.items()}
    theirs = _ort_ranges(model, calibration, tmp_path)
    assert set(ours) == set(theirs) >= {"input", "c1", "r1", "c2", "logits"}
    for name, (lo, hi) in theirs.items():
        # ORT's threshold is a 2048-bin histogram edge: within a few bins of the exact value.
        width = max(abs(lo), abs(hi)) / 2048 * 4 + 1e-6
        assert ours[name][0] == pytest.approx(lo, abs=width), name
        assert ours[name][1] == pytest.approx(hi, abs=width), name


def test_int8_build_uses_the_in_graph_ranges_and_stays_close_to_onnxruntimes(tmp_path,
                                                                             calibration):
    from verify.ort_runner import OrtRunner

    model = _model(tmp_path / "tiny.onnx")
    cfg = {"calibration": "percentile", "percentile": PERCENTILE}
    fast = make_int8(model, tmp_path / "fast.onnx", calibration, cfg)
    slow = make_int8(model, tmp_path / "ort.onnx", calibration, cfg, in_graph_percentile=False)
    assert fast["ranges"].startswith("in-graph") and slow["ranges"] == "onnxruntime's calibrator"
    assert fast["quantize_linear_nodes"] == slow["quantize_linear_nodes"] > 0
    x = calibration[:8]
    a = OrtRunner(tmp_path / "fast.onnx").infer(x, 8)
    b = OrtRunner(tmp_path / "ort.onnx").infer(x, 8)
    ref = OrtRunner(model).infer(x, 8)
    assert not np.array_equal(a, ref)                     # really quantized
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.998


def test_minmax_and_entropy_calibrations_are_what_the_manifest_asks(tmp_path, calibration):
    """minmax: the input's range is exactly the calibration data's min and max; entropy runs
    ORT's KL search and cuts the heavy tail more than minmax does."""
    model = _model(tmp_path / "tiny.onnx")
    built = {}
    for method in ("minmax", "entropy"):
        info = make_int8(model, tmp_path / f"{method}.onnx", calibration,
                         {"calibration": method})
        assert info["calibration"] == method and info["ranges"] == "onnxruntime's calibrator"
        # The input's QuantizeLinear scale and zero point, as the quantizer wrote them.
        q = onnx.load(str(tmp_path / f"{method}.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
        node = next(n for n in q.graph.node if n.op_type == "QuantizeLinear"
                    and n.input[0] == "input")
        scale, zero = float(inits[node.input[1]]), int(inits[node.input[2]])
        built[method] = (-zero * scale, (255 - zero) * scale)   # uint8 range in real units
    lo, hi = built["minmax"]
    # uint8 with a zero point rounds the range to whole steps: within one step of the data.
    step = (hi - lo) / 255
    assert lo == pytest.approx(float(calibration.min()), abs=step)
    assert hi == pytest.approx(float(calibration.max()), abs=step)
    assert built["entropy"][1] - built["entropy"][0] < (hi - lo) * 0.9


def test_fp16_counts_the_weights_it_had_to_clip(tmp_path):
    from converters.variants import make_fp16

    model = onnx.load(str(_model(tmp_path / "tiny.onnx")))
    assert make_fp16(tmp_path / "tiny.onnx", tmp_path / "ok.onnx")[
        "weights_clipped_to_fp16_range"] == 0
    for init in model.graph.initializer:
        if init.name == "w2":
            w = numpy_helper.to_array(init).copy()
            w[0, 0, 0, 0], w[1, 0, 0, 0] = 1e6, 1e-9       # past fp16's max and below its tiny
            init.CopyFrom(numpy_helper.from_array(w, "w2"))
    onnx.save(model, str(tmp_path / "big.onnx"))
    assert make_fp16(tmp_path / "big.onnx", tmp_path / "big16.onnx")[
        "weights_clipped_to_fp16_range"] >= 1


def test_weights_written_as_float_data_reach_fp16_as_raw_bytes_with_the_same_values(tmp_path):
    """paddle2onnx and MindSpore write weights as float_data, which the float16 converter
    walks one Python int at a time (12x slower on Res2Net50): they are turned into raw bytes
    first, and the fp16 model is the one a raw-data fp32 model gives."""
    from converters.variants import as_raw_data, make_fp16

    model = onnx.load(str(_model(tmp_path / "raw.onnx")))
    for init in model.graph.initializer:       # as paddle2onnx writes them
        values = numpy_helper.to_array(init)
        init.ClearField("raw_data")
        init.float_data.extend(values.ravel().tolist())
    onnx.save(model, str(tmp_path / "floats.onnx"))
    converted = as_raw_data(onnx.load(str(tmp_path / "floats.onnx")))
    assert all(t.raw_data and not t.float_data for t in converted.graph.initializer)
    for a, b in zip(model.graph.initializer, converted.graph.initializer):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b)), a.name

    make_fp16(tmp_path / "raw.onnx", tmp_path / "raw16.onnx")
    make_fp16(tmp_path / "floats.onnx", tmp_path / "floats16.onnx")
    half = [{t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
            for p in (tmp_path / "raw16.onnx", tmp_path / "floats16.onnx")]
    assert half[0].keys() == half[1].keys()
    assert all(half[0][k].dtype == half[1][k].dtype == np.float16
               and np.array_equal(half[0][k], half[1][k]) for k in half[0])


def test_variant_gates_fail_on_disagreement_and_on_a_top1_drop_only():
    from verify.accuracy import AccuracyMeter, variant_drop_check
    from verify.compare import compare_variant

    ref = np.tile(-np.arange(10, dtype=np.float64), (4, 1))
    ref[:, 3] = 10.0
    out = ref.copy()
    out[1, 7] = 20.0                                   # image 1: the variant picks class 7
    by = {c.name: c for c in compare_variant(ref, out, {"min_cosine": -1.0,
                                                        "min_top1_agreement": 1.0}, {})}
    assert not by["top1_agreement"].passed and by["top1_agreement"].measured == 0.75
    assert by["max_abs_diff"].passed and by["max_abs_diff"].limit is None   # reported only

    labels = np.full(4, 3)                             # class 3 is right for every image

    def drop(source, variant):
        meter = AccuracyMeter(("onnx", "int8"))
        meter.add(labels, np.arange(4), source, {"onnx": source, "int8": variant})
        return variant_drop_check(meter, "int8", 1.0)

    worse = out.copy()
    worse[2, 8] = 20.0                                 # the variant misses images 1 and 2
    check = drop(ref, worse)                           # source 100 %, variant 50 %
    assert not check.passed and check.measured == 50.0
    missing = ref.copy()
    missing[0, 9] = 20.0                               # the source misses image 0
    check = drop(missing, ref)                         # source 75 %, variant 100 %: a gain
    assert check.passed and check.measured == -25.0


def test_exclude_nodes_naming_a_node_the_model_lacks_is_refused_and_writes_nothing(
        tmp_path, calibration):
    model = _model(tmp_path / "tiny.onnx")
    cfg = {"calibration": "percentile", "percentile": PERCENTILE}
    with pytest.raises(VariantFailed, match="variants.int8.exclude_nodes names node\\(s\\) the "
                       "model does not have: /no/such/Conv"):
        make_int8(model, tmp_path / "q.onnx", calibration, {**cfg, "exclude_nodes": [
            "/no/such/Conv"]})
    assert not (tmp_path / "q.onnx").exists()
    named = onnx.load(str(model)).graph.node[0].name
    assert named
    make_int8(model, tmp_path / "q.onnx", calibration, {**cfg, "exclude_nodes": [named]})
    assert (tmp_path / "q.onnx").exists()


def test_exclude_op_types_keeps_those_nodes_in_fp32(tmp_path, calibration):
    """README: `exclude_op_types` keeps node types in fp32. The Gemm excluded: its weight
    stays a float initializer and no DequantizeLinear feeds it; the Convs still quantized."""
    model = _model(tmp_path / "tiny.onnx")
    cfg = {"calibration": "percentile", "percentile": PERCENTILE}

    def weight_of(path, op):
        """What gives each `op` node its weight: an initializer (fp32) or an op's output."""
        graph = onnx.load(str(path)).graph
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        inits = {i.name for i in graph.initializer}
        return {"initializer" if n.input[1] in inits else made_by.get(n.input[1])
                for n in graph.node if n.op_type == op}

    make_int8(model, tmp_path / "all.onnx", calibration, cfg)
    assert weight_of(tmp_path / "all.onnx", "Gemm") == {"DequantizeLinear"}
    info = make_int8(model, tmp_path / "kept.onnx", calibration,
                     {**cfg, "exclude_op_types": ["Gemm"]})
    assert info["excluded_op_types"] == ["Gemm"] and info["excluded_nodes"] == 1
    assert weight_of(tmp_path / "kept.onnx", "Gemm") == {"initializer"}
    assert weight_of(tmp_path / "kept.onnx", "Conv") == {"DequantizeLinear"}


@pytest.mark.parametrize("in_graph", [True, False])
def test_an_opset_11_model_is_upgraded_for_per_channel_int8(tmp_path, calibration, in_graph):
    """MindSpore exports opset 11, where DequantizeLinear has no `axis`: the int8 build works
    on an opset 13 copy (before, ORT wrote an invalid model and the variant failed)."""
    from verify.ort_runner import OrtRunner

    model = _model(tmp_path / "tiny11.onnx", opset=11)
    info = make_int8(model, tmp_path / "q.onnx", calibration,
                     {"calibration": "percentile", "percentile": PERCENTILE},
                     in_graph_percentile=in_graph)
    assert info["opset_upgraded"].startswith("11 -> 13")
    q = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(q)
    assert {o.version for o in q.opset_import if o.domain in ("", "ai.onnx")} == {13}
    x = calibration[:8]
    out, ref = OrtRunner(tmp_path / "q.onnx").infer(x, 8), OrtRunner(model).infer(x, 8)
    cosine = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() > 0.99


def test_int8_diagnosis_ranks_the_worst_tensors_and_breaks_ties_the_same_every_run(
        tmp_path, calibration, monkeypatch):
    """int8_tensor_errors on a real int8 build: the worst tensors by SQNR, each with the node
    that makes it. ORT's matching comes back in an order that changes between runs, so a tie
    must be broken by the graph, not by that order: with every figure rounded to whole dB
    (ties everywhere) and ORT's rows given in reverse, the answer is the same."""
    import onnxruntime.quantization.qdq_loss_debug as debug

    from converters.variants import int8_tensor_errors

    model = _model(tmp_path / "tiny.onnx")
    make_int8(model, tmp_path / "int8.onnx", calibration, {"calibration": "minmax"})
    images = calibration[:2]
    found = int8_tensor_errors(model, tmp_path / "int8.onnx", images, top=3)
    assert found["images"] == 2 and found["tensors_compared"] >= 4
    worst = found["worst"]
    assert len(worst) == 3 and [r["sqnr_db"] for r in worst] == sorted(
        r["sqnr_db"] for r in worst)
    names = {n.name for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert all(r["node"] in names for r in worst if r["node"] is not None)

    real = debug.compute_activation_error

    def tied(matched, reverse):
        errors = {k: {m: float(round(v)) for m, v in e.items()} for k, e in
                  real(matched).items()}
        return dict(reversed(list(errors.items()))) if reverse else errors

    answers = []
    for reverse in (False, True):
        monkeypatch.setattr(debug, "compute_activation_error",
                            lambda matched, reverse=reverse: tied(matched, reverse))
        answers.append(int8_tensor_errors(model, tmp_path / "int8.onnx", images, top=10))
    assert answers[0] == answers[1]
    rows = answers[0]["worst"]
    assert len({r["sqnr_db"] for r in rows}) < len(rows)   # there were ties to break
