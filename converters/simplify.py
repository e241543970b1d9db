"""Stage 3, framework-free: full onnx.checker pass, then onnxsim (its own check reported).

Runs in the orchestrator (onnx + onnxsim + onnxruntime only).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx

from converters.protocol import PipelineError


# One ONNX file holds at most protobuf's 2 GiB. A larger model (mmpretrain's
# convnext-v2-huge, 660 M parameters) needs ONNX external data, which neither the artifact
# (one signed model file) nor this stage writes yet: it is `unsupported`, said before onnxsim
# runs (it used to end in onnx.save's "EncodeError: Failed to serialize proto").
MAX_MODEL_BYTES = onnx.checker.MAXIMUM_PROTOBUF


class OnnxCheckFailed(PipelineError):
    """onnx.checker or onnxsim refused the graph (or it is too large for one file)."""


def _dims(value_info) -> list:
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.dim_param else d.dim_value for d in shape.dim]


def describe(model: onnx.ModelProto) -> dict:
    """Opset, node count and I/O signature of a model."""
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                      None),
        "nodes": len(model.graph.node),
        "inputs": [{"name": i.name, "shape": _dims(i),
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(
                        i.type.tensor_type.elem_type).name} for i in model.graph.input],
        "outputs": [{"name": o.name, "shape": _dims(o),
                     "dtype": onnx.helper.tensor_dtype_to_np_dtype(
                         o.type.tensor_type.elem_type).name} for o in model.graph.output],
    }


def check(path: Path) -> dict:
    """onnx.checker full check (types and shapes inferred too); returns describe()."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise OnnxCheckFailed("onnx_checker",
                              f"onnx.checker rejected {path.name}: {exc}") from exc
    return describe(onnx.load(str(path), load_external_data=False))


# onnxsim optimizer passes seen to change a model's outputs, each tried off on its own before
# all of onnxsim's optimisation is (RETRIES; orchestrator/stages/verify.py re-simplifies only
# when the exporter's model passes the logit gate and the simplified one does not):
# - fuse_pad_into_conv, onnxsim 0.8.1, mmpretrain efficientnet-b0: Conv2dAdaptivePadding's
#   Pad [0,0,0,0, 0,0,1,1], whose pads constant three Pads share, became Conv pads
#   [1,0,1,1] instead of [0,0,1,1] at layers.2.0.depthwise_conv: logits off by 9.98.
#   Skipping the pass alone gives 260 nodes (243 with it, 294 with no optimisation).
# Last, onnxsim on the graph without the exporter's own intermediate shapes (value_info),
# which onnx's shape inference then derives afresh:
# - paddle2onnx 2.1, PaddleClas MicroNet_M3: the Gather of its dynamic-shift activation is
#   declared with the dim_params of another tensor (Reshape_60_o0__d2/d3), one [N, 48, 1, 1]
#   and the other [N, 48, 56, 56]. ONNX Runtime plans buffers by those names and, run inside
#   onnxsim at batch 2, refuses: "Shape mismatch attempting to re-use buffer". The graph runs
#   in a plain session; without the declarations onnxsim simplifies it (1660 -> 400 nodes).
FRAGILE_PASSES = ("fuse_pad_into_conv",)
RETRIES = ([{"skipped": [name]} for name in FRAGILE_PASSES]
           + [{"optimize": False}, {"declared_shapes": False}])


def graph_batch(path: Path) -> int | None:
    """The batch the ONNX model's input holds (exported at a fixed batch: orchestrator/run.py
    `run_stages`), None where it takes any."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type
    first = dims.shape.dim[0] if dims.shape.dim else None
    held = first.dim_value if first is not None and first.HasField("dim_value") else 0
    return held if held > 0 else None


def stored_bytes(path: Path) -> int:
    """The size of the model in `path` as one protobuf message, counted without loading it:
    the file, plus the initializers it keeps as external data (torch.onnx writes a model
    over 2 GiB so). Loading such a model whole fails in protobuf itself ("EncodeError:
    Failed to serialize proto", mmpretrain convnext-v2-huge), so it is sized first."""
    model = onnx.load(str(path), load_external_data=False)
    size, files = model.ByteSize(), set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            if "length" in info:
                size += int(info["length"])
            else:
                files.add(info["location"])
    return size + sum((path.parent / name).stat().st_size for name in files)


def optimizer_setting(skipped: list[str] | tuple = (), optimize: bool = True,
                      declared_shapes: bool = True) -> str:
    """How onnxsim's optimizer ran, for the report."""
    if not optimize:
        said = "off (constant folding and shape inference only)"
    else:
        said = f"on, without {', '.join(skipped)}" if skipped else "on"
    return said if declared_shapes else f"{said}, the exporter's intermediate shapes dropped"


def simplify(src: Path, dst: Path, test_shape: list[int], atol: float, rtol: float,
             check_n: int = 3, skipped: list[str] | tuple = (), optimize: bool = True,
             declared_shapes: bool = True) -> dict:
    """onnxsim `src` into `dst`; onnxsim's own output check on `check_n` random inputs of
    `test_shape` is run and reported, never gating. `declared_shapes=False` drops the
    exporter's intermediate value_info first (RETRIES: declarations ONNX Runtime cannot use).

    Why not gating: on random N(0, 1) inputs a plain-init PaddleClas ResNet50's outputs
    differ by 3.1e-4 after BatchNorm folding, over a 1e-4 tolerance made for real images,
    while the logit gate, which compares the simplified model with the source on the
    verification images at two batch sizes, passes it. A second check on inputs no
    deployment sees must not refuse what the logit gate accepts; a simplification that
    breaks the model fails the logit gate (`simplified` model scope).
    """
    size = stored_bytes(src)
    if size >= MAX_MODEL_BYTES:
        raise OnnxCheckFailed(
            "unsupported", f"the exported model is {size / 2**30:.2f} GiB, over the "
                           f"{MAX_MODEL_BYTES / 2**30:.0f} GiB one ONNX file can hold; models "
                           "this large need ONNX external data, which this pipeline does not "
                           "write yet (docs/coverage.md)")
    import onnxsim   # here: 1 s of imports every other command (--help, predict) need not pay

    model = onnx.load(str(src))
    if not declared_shapes:
        del model.graph.value_info[:]
    name = model.graph.input[0].name
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            simplified, ok = onnxsim.simplify(model, check_n=check_n,
                                              test_input_shapes={name: test_shape},
                                              check_atol=atol, check_rtol=rtol,
                                              perform_optimization=optimize,
                                              skipped_optimizers=list(skipped) or None)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises many types
        raise OnnxCheckFailed("onnxsim",
                              f"onnxsim failed: {type(exc).__name__}: {exc}") from exc
    onnx.save(simplified, str(dst))
    info = check(dst)
    info["optimizer"] = optimizer_setting(skipped, optimize, declared_shapes)
    info["onnxsim_check"] = {"random_inputs": check_n, "atol": atol, "rtol": rtol,
                             "passed": bool(ok), "gating": False}
    if not ok:
        last = [ln for ln in captured.getvalue().splitlines() if "max diff" in ln][-1:]
        info["onnxsim_check"]["note"] = (
            "onnxsim's random-input check found outputs differing beyond atol "
            f"{atol:g} / rtol {rtol:g}: {' '.join(last)}; reported only, the logit gate "
            "decides")
    return info
