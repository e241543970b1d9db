"""The int8 build's in-graph percentile ranges against ONNX Runtime's own percentile
calibrator and against numpy's exact order statistic, on a small real model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from converters.variants import make_int8, percentile_ranges

PERCENTILE = 99.999
OP_TYPES = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def _model(path: Path) -> Path:
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
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
    return {k: tuple(float(x) for x in v.range_value) for k, v in calibrator.compute_data().data.items()}


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
