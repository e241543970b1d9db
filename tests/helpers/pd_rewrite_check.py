"""Each rule of converters/paddleclas/rewrites.py on a small network, in the paddle
environment: what paddle.jit.save + paddle2onnx make of the network as it is, and with the
rule; ONNX Runtime against paddle's own forward at two batch sizes; paddle's forward with the
rule against without it; the epsilon each exported InstanceNormalization holds.
tests/test_export_rewrites.py reads the lines after RESULT (paddle2onnx writes to the
process's stdout itself)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paddle
import paddle2onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from converters.paddleclas.rewrites import rewritten  # noqa: E402


def export(model, shape, folder: Path) -> tuple[str | None, Path | None]:
    """(error, onnx path): jit.save at a dynamic batch, then paddle2onnx at opset 17."""
    prefix = folder / "inference"
    try:
        paddle.jit.save(model, str(prefix), input_spec=[
            paddle.static.InputSpec([None, *shape], "float32", "x")])
        program = next(p for p in (prefix.with_suffix(".json"), prefix.with_suffix(".pdmodel"))
                       if p.exists())
        with contextlib.redirect_stdout(io.StringIO()):
            paddle2onnx.export(str(program), str(prefix.with_suffix(".pdiparams")),
                               str(folder / "m.onnx"), opset_version=17)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - what the exporter says is the finding
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", None
    return None, folder / "m.onnx"


def onnx_diff(path: Path | None, model, x: np.ndarray) -> float | None:
    """max |ONNX - paddle| over batches of 1 and of all of x (NaN counts as infinite)."""
    if path is None:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for batch in (x[:1], x):
        got = session.run(None, {name: batch})[0]
        want = model(paddle.to_tensor(batch)).numpy()
        diff = np.abs(got - want)
        worst = max(worst, float("inf") if not np.isfinite(diff).all() else float(diff.max()))
    return worst


def epsilons(path: Path | None) -> list[float]:
    import onnx

    if path is None:
        return []
    return [a.f for n in onnx.load(str(path)).graph.node if n.op_type == "InstanceNormalization"
            for a in n.attribute if a.name == "epsilon"]


def check(rule: str, model, shape: list[int]) -> dict:
    model.eval()
    rng = np.random.default_rng(0)
    for p in model.parameters():   # weights unlike an init's (a norm's 1 and 0 hide a fault)
        p.set_value(paddle.to_tensor(rng.standard_normal(p.shape).astype("float32") * 0.5))
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):   # variances above 0
            layer._variance.set_value(paddle.to_tensor(
                rng.uniform(0.5, 1.5, layer._variance.shape).astype("float32")))
    x = rng.standard_normal((3, *shape)).astype("float32")
    plain = model(paddle.to_tensor(x)).numpy()
    out = {"rule": rule}
    with tempfile.TemporaryDirectory() as before, tempfile.TemporaryDirectory() as after:
        out["export_before"], onnx_before = export(model, shape, Path(before))
        out["onnx_diff_before"] = onnx_diff(onnx_before, model, x)
        out["epsilons_before"] = epsilons(onnx_before)
        with rewritten(model) as notes:
            out["paddle_diff"] = float(np.abs(model(paddle.to_tensor(x)).numpy() - plain).max())
            out["export_after"], onnx_after = export(model, shape, Path(after))
        out["notes"] = notes
        out["onnx_diff_after"] = onnx_diff(onnx_after, model, x)
        out["epsilons_after"] = epsilons(onnx_after)
    return out


def main() -> None:
    from paddleclas.ppcls.arch.backbone.model_zoo.mobilevit_v2 import MobileViTV2Block
    from paddleclas.ppcls.arch.backbone.model_zoo.mobilevit_v3 import MobileViTV3BlockV2

    paddle.seed(0)
    norm = paddle.nn.Sequential(paddle.nn.Conv2D(3, 16, 3, padding=1),
                                paddle.nn.GroupNorm(4, 16))
    print("RESULT", json.dumps(check("GroupNorm.forward", norm, [3, 8, 8])), flush=True)
    block = MobileViTV3BlockV2(in_channels=16, attn_unit_dim=16, ffn_multiplier=2,
                               n_attn_blocks=1, patch_h=2, patch_w=2)
    print("RESULT", json.dumps(check("MobileViTV3BlockV2", block, [16, 8, 8])), flush=True)
    block = MobileViTV2Block(in_channels=16, attn_unit_dim=16, ffn_multiplier=2,
                             n_attn_blocks=1, patch_h=2, patch_w=2)
    print("RESULT", json.dumps(check("MobileViTV2Block", block, [16, 8, 8])), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("FLAGS_logtostderr", "0")
    main()
