"""The faults a conversion typically makes are caught on the three demo models (issue 30):
a swapped colour order, 1e-3 noise in one convolution's weights, a BatchNorm epsilon error and
a 1.001 logit scale each fail the logit gate at the shipped entries' own tolerances, where the
shipped model itself passes. The reference is each source's own forward (tests/helpers), on
the models of the session's shared three-source run."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import (MINDSPORE_PYTHON, MM_PYTHON, PADDLE_PYTHON, THREE_SOURCES, helper_logits,
                      read_report)
from verify.compare import compare_logits, failed
from verify.ort_runner import OrtRunner

pytestmark = pytest.mark.slow

# entry -> (environment, helper, the helper's model argument)
SOURCE_LOGITS = {
    "res2net50-w14-s8": (MM_PYTHON, "framework_logits.py",
                         "mmpretrain:res2net50-w14-s8_3rdparty_8xb32_in1k"),
    "paddleclas-res2net50-14w-8s": (PADDLE_PYTHON, "paddle_logits.py", "Res2Net50_14w_8s"),
    "mindcv-res2net50": (MINDSPORE_PYTHON, "mindspore_logits.py", "res2net50"),
}


def _noisy_middle_conv(path, out, noise=1e-3):
    """The model with the middle convolution's weights times (1 + noise N(0, 1))."""
    model = onnx.load(str(path))
    weights = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in weights]
    tensor = weights[convs[len(convs) // 2].input[1]]
    w = numpy_helper.to_array(tensor)
    rng = np.random.default_rng(0)
    noisy = (w * (1 + noise * rng.standard_normal(w.shape))).astype(w.dtype)
    tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("name", list(THREE_SOURCES))
def test_typical_conversion_faults_fail_the_logit_gate(name, three_sources, checkpoints,
                                                      tmp_path, monkeypatch):
    out, _ = three_sources
    report = read_report(out, name)
    tol = report["entry"]["tolerances"]
    python, helper, model_arg = SOURCE_LOGITS[name]
    checkpoint = checkpoints(THREE_SOURCES[name])
    x = np.random.default_rng(7).normal(0, 1, (6, 3, 224, 224)).astype(np.float32)
    ref = helper_logits(python, helper, model_arg, checkpoint, x, tmp_path)
    model = out / name / "model.onnx"
    clean = OrtRunner(model).infer(x, len(x))
    assert not failed(compare_logits(ref, clean, tol, {})), "the shipped model itself"

    monkeypatch.setenv("FAULT_BN_EPS", "1e-3")   # the source's 1e-5 written as 1e-3
    wrong_eps = helper_logits(python, helper, model_arg, checkpoint, x, tmp_path)
    faults = {
        "colour order swapped": OrtRunner(model).infer(np.ascontiguousarray(x[:, ::-1]),
                                                       len(x)),
        "1e-3 noise in one conv": OrtRunner(
            _noisy_middle_conv(model, tmp_path / "noisy.onnx")).infer(x, len(x)),
        "BatchNorm epsilon 1e-3": wrong_eps,
        "logits x 1.001": clean * np.float32(1.001),
    }
    for fault, logits in faults.items():
        assert not np.array_equal(logits, clean), fault          # the fault took effect
        caught = failed(compare_logits(ref, logits, tol, {}))
        assert caught, f"{name}: {fault} passed the gate"
