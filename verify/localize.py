"""Where in the network the ONNX model parts from the source: the first diverging layer.

Knows nothing of frameworks. It is given an ONNX model, one input batch (several images: a
graph that holds the batch it was traced at is right on one image alone, and wrong on the
others of a batch), and the source's own layer outputs on that batch (captured by the
source's worker with forward hooks, converters/worker_flow.py `capture`): for every
convolution / linear layer, its weight shape, its output, and the output of a
normalisation layer that directly follows it.

1. Pairing. The ONNX model's Conv / Gemm / MatMul nodes with a constant weight are listed in
   graph order, the source's conv / linear layers in execution order. Both sequences are
   aligned on the weight shapes (a 2-D weight compares transposed or not: paddle stores
   Linear as in x out); the exporters keep weight shapes even where they rename everything
   (paddle2onnx, MindSpore) or fold a BatchNorm into the convolution (torch, onnxsim).
   Layers that do not align (an exporter splitting or merging one) are left out and counted.
2. Values, a bounded number at a time. A copy of the model exposes CHUNK node outputs as
   extra graph outputs; ONNX Runtime runs it on the input and each output is compared with
   its source layer: relative difference = max|onnx - source| / max|source|, against the
   source layer's own output and against the norm output that follows it (a folded
   BatchNorm makes the ONNX Conv compute conv + bn), whichever is closer; on the ONNX side
   the node's output or a tensor of the short single-consumer chain after it (FOLLOWERS: an
   unfolded BatchNormalization, a bias Add, an activation a source fuses into its norm).
3. The first pair (in graph order) above LAYER_RTOL is the first diverging layer: every
   aligned layer before it agrees, so the fault lies in it or between it and the last
   agreeing one (an element-wise op in between shows at the next layer). Chunks after the
   one that holds it are not run. Graph order, not bisection: in a network with parallel
   paths (a downsample branch beside the main path) a later layer can agree again, which
   would mislead a bisection.

The report names the layer in the source's terms (e.g. backbone.layer3.2.convs.1) and the
ONNX node, with the measured difference, the last layer that still agreed, which images of the
batch part there (`rows`), and the layer's difference on the first image alone at batch 1
(`alone`): a layer that agrees alone and parts in the batch is where a graph holding its
traced batch goes wrong. A graph ONNX Runtime refuses at the batch's size is compared at
batch 1 instead, and the report says so (`note`).
"""
from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from verify.ort_runner import OrtRunner

# Clean fp32 exports here: median 1e-5, largest 2.6e-4 of a layer's range (docs/usage.md).
LAYER_RTOL = 1e-3
CHUNK = 16          # node outputs exposed per ONNX Runtime session
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# Ops that may sit between a weighted node and the tensor the source's layer (or the norm
# after it) returns: an unfolded BatchNormalization, a bias Add, an activation a source
# fuses into its norm layer (PaddleClas's BatchNorm(act="relu")).
FOLLOWERS = ("BatchNormalization", "Add", "Relu", "Clip", "Sigmoid", "HardSigmoid",
             "HardSwish", "LeakyRelu", "Mul")
MAX_FOLLOWERS = 3


@dataclass
class OnnxLayer:
    node: str
    op: str
    output: str
    weight_shape: tuple
    followers: tuple = ()   # outputs of the single-consumer chain after it, in order


@dataclass
class SourceLayer:
    name: str
    kind: str
    weight_shape: tuple
    file: str
    norm: str | None = None       # the name of a norm layer that directly follows it
    norm_file: str | None = None


def _shape_key(shape) -> tuple:
    shape = tuple(int(d) for d in shape)
    return tuple(sorted(shape)) if len(shape) == 2 else shape


def onnx_layers(model: onnx.ModelProto) -> list[OnnxLayer]:
    """Weighted nodes (constant weight) in graph order, with their weight shapes."""
    constants = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:   # weights behind a Constant node (some exporters)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = tuple(attr.t.dims)
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for k, node in enumerate(model.graph.node):
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constants:
            chain, tensor = [], node.output[0]
            while len(chain) < MAX_FOLLOWERS and len(consumers.get(tensor, [])) == 1 \
                    and consumers[tensor][0].op_type in FOLLOWERS:
                tensor = consumers[tensor][0].output[0]
                chain.append(tensor)
            found.append(OnnxLayer(node.name or f"{node.op_type}#{k}", node.op_type,
                                   node.output[0], constants[node.input[1]], tuple(chain)))
    return found


def source_layers(captured: list[dict]) -> list[SourceLayer]:
    """conv / linear records in execution order, each with the norm record right after it
    (same output shape) when there is one."""
    layers: list[SourceLayer] = []
    for i, rec in enumerate(captured):
        if rec["kind"] not in ("conv", "linear"):
            continue
        layer = SourceLayer(rec["name"], rec["kind"], tuple(rec["weight_shape"]), rec["file"])
        nxt = captured[i + 1] if i + 1 < len(captured) else None
        if nxt and nxt["kind"] == "norm" and nxt["shape"] == rec["shape"]:
            layer.norm, layer.norm_file = nxt["name"], nxt["file"]
        layers.append(layer)
    return layers


def align(src: list[SourceLayer], dst: list[OnnxLayer]) -> list[tuple[SourceLayer, OnnxLayer]]:
    """Pairs in order whose weight shapes agree (longest common subsequence blocks)."""
    a = [_shape_key(s.weight_shape) for s in src]
    b = [_shape_key(d.weight_shape) for d in dst]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    pairs = []
    for block in matcher.get_matching_blocks():
        pairs += [(src[block.a + k], dst[block.b + k]) for k in range(block.size)]
    return pairs


def _relative(onnx_out: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    """(max abs difference, relative to max|source|); inf when the shapes differ."""
    if onnx_out.shape != source.shape:
        if onnx_out.size != source.size:
            return float("inf"), float("inf")
        onnx_out = onnx_out.reshape(source.shape)
    diff = float(np.abs(onnx_out.astype(np.float64) - source).max()) if source.size else 0.0
    scale = float(np.abs(source).max()) if source.size else 0.0
    return diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _rows_over(tried: list[tuple[np.ndarray, np.ndarray]], batch: int, rtol: float
               ) -> list[int] | None:
    """The batch positions (0-based) where the layer parts: for each image, the closest of
    the (ONNX output, source reference) pairs TRIED, as the layer itself is judged, above
    rtol of that reference's range. None when no pair leads with the batch."""
    per_row = None
    for onnx_out, source in tried:
        if (batch < 2 or source.ndim == 0 or source.shape[0] != batch
                or onnx_out.size != source.size):
            continue
        scale = float(np.abs(source).max())
        diff = np.abs(onnx_out.reshape(source.shape).astype(np.float64) - source)
        rel = diff.reshape(batch, -1).max(axis=1) / scale if scale > 0 else \
            np.where(diff.reshape(batch, -1).max(axis=1) > 0, np.inf, 0.0)
        per_row = rel if per_row is None else np.minimum(per_row, rel)
    return None if per_row is None else [int(i) for i in np.flatnonzero(per_row > rtol)]


def _alone(runner: OrtRunner, inputs: np.ndarray, tried: list[tuple[str, np.ndarray]]
           ) -> float | None:
    """The layer's relative difference on the first image alone (batch 1), the closest of
    the tensors and references TRIED as in the batch, when it was compared at a larger batch:
    a layer that agrees there and not in the batch is where a graph holding its traced batch
    goes wrong. None when not measurable."""
    batch = inputs.shape[0]
    tried = [(t, ref[:1]) for t, ref in tried if ref.ndim and ref.shape[0] == batch]
    if batch < 2 or not tried:
        return None
    names = list(dict.fromkeys(t for t, _ in tried))
    try:
        outs = dict(zip(names, runner.outputs(names, inputs[:1])))
    except Exception:  # noqa: BLE001 - a graph ORT refuses at batch 1: nothing to say
        return None
    return min(_relative(outs[t], ref)[1] for t, ref in tried)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                             for n in names if n not in present)
    return copy


def localize(model_path: Path, inputs: np.ndarray, captured: list[dict], capture_dir: Path,
             rtol: float = LAYER_RTOL, chunk: int = CHUNK, threads: int | None = None) -> dict:
    """report['verification']['localization']: the first diverging layer, or none."""
    model = onnx.load(str(model_path))
    src, dst = source_layers(captured), onnx_layers(model)
    pairs = align(src, dst)
    result: dict = {"onnx_model": model_path.name, "rtol": rtol,
                    "source_layers": len(src), "onnx_layers": len(dst), "aligned": len(pairs),
                    "compared": 0, "sessions": 0}
    if not pairs:
        result["first_diverging"] = None
        result["note"] = ("no source layer could be aligned with an ONNX node by weight shape: "
                          "cannot localise")
        return result
    last_ok, first_bad, worst = None, None, None
    batch = captured_batch = int(inputs.shape[0])
    result["images"] = batch
    # Scratch beside the capture, never beside the model: it may sit in a signed artifact or a
    # read-only store.
    with tempfile.TemporaryDirectory(prefix="localize-", dir=capture_dir) as tmp:
        path = Path(tmp) / "exposed.onnx"
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            names = [t for _, d in part for t in (d.output, *d.followers)]
            onnx.save(_with_outputs(model, names), str(path))
            runner = OrtRunner(path, threads)
            try:
                outs = runner.outputs(names, inputs)
            except Exception as exc:  # noqa: BLE001 - ORT's error types differ by build
                if batch == 1 or result["sessions"]:
                    raise
                # A graph refused at the batch's size (the batch check reports it): the
                # layers can still be compared on the first image alone.
                result["note"] = (f"ONNX Runtime refused the model at batch {batch} "
                                  f"({str(exc).splitlines()[0][:300]}); compared on the "
                                  "first image at batch 1")
                inputs, batch = inputs[:1], 1
                result["images"] = 1
                outs = runner.outputs(names, inputs)
            outs = dict(zip(names, outs))
            result["sessions"] += 1
            for s, d in part:
                candidates = [(s.name, s.file)] + ([(s.norm, s.norm_file)] if s.norm else [])
                best, tried = None, []
                for label, file in candidates:
                    ref = np.load(capture_dir / file).astype(np.float64)
                    if batch != captured_batch and ref.ndim and ref.shape[0] == captured_batch:
                        ref = ref[:batch]
                    for tensor in (d.output, *d.followers):
                        tried.append((tensor, ref))
                        diff, rel = _relative(outs[tensor], ref)
                        if best is None or rel < best["relative"]:
                            best = {"layer": s.name, "compared_with": label,
                                    "onnx_node": d.node, "onnx_op": d.op,
                                    "onnx_output": tensor,
                                    "weight_shape": list(s.weight_shape),
                                    "max_abs_diff": diff, "relative": rel}
                result["compared"] += 1
                if worst is None or best["relative"] > worst["relative"]:
                    worst = best
                if best["relative"] > rtol:
                    rows = _rows_over([(outs[t], ref) for t, ref in tried], batch, rtol)
                    first_bad = worst = {**best, "rows": rows,
                                         "alone": _alone(runner, inputs, tried)}
                    break
                last_ok = best
            del outs, runner
            if first_bad:
                break
    result["first_diverging"] = first_bad
    result["last_agreeing"] = last_ok
    result["worst"] = worst
    if first_bad:
        before = f"; the last agreeing layer is {last_ok['layer']}" if last_ok else \
            "; it is the first aligned layer"
        rows, alone = first_bad.get("rows"), first_bad.get("alone")
        where = ""
        if rows:   # ([] when each image agrees by its own closest pairing, none as a whole)
            where = (f"; images {', '.join(str(r + 1) for r in rows)} of the {batch} part "
                     "there")
        if alone is not None and alone <= rtol:
            where += (f"; on the first image alone (batch 1) it agrees ({alone:.3g}): the "
                      "graph holds the batch it was traced at (batch held in the graph)")
        result["summary"] = (
            f"first diverging layer: {first_bad['layer']} (ONNX node {first_bad['onnx_node']}, "
            f"{first_bad['onnx_op']}): max|diff| {first_bad['max_abs_diff']:.3g}, "
            f"{first_bad['relative']:.3g} of its range (limit {rtol:g}){before}{where}")
    else:
        result["summary"] = (
            f"all {len(pairs)} aligned layers agree within {rtol:g} of their range (largest "
            f"{worst['relative']:.3g} at {worst['layer']}): the difference builds up or "
            "arises after the last aligned layer")
    return result
