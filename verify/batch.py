"""A batch baked into a graph that declares a dynamic batch. Knows nothing of frameworks.

Exporters trace the model at one batch size (1 here). A graph can declare its batch symbolic
(`input: [batch, 3, 224, 224]`) and still hold the traced batch in a constant: a Reshape to
`[1, 8, 7, 8, 7, 96]`, an Expand of a mask to the traced batch. Such a graph is right at the
traced batch and wrong (or refused by the runtime) at any other, which no check at a single
batch size sees. The logit gate runs every model at batch 1 and at the verification batch;
`batch_check` compares the two runs of the same images directly, and `baking_nodes` names
the nodes where ONNX shape inference loses the symbolic batch to a fixed number.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from verify.compare import Check


def _dims(value_info) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in value_info.type.tensor_type.shape.dim]


def graph_constants(graph) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' values, by name."""
    found = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def baking_nodes(model: onnx.ModelProto, limit: int = 10) -> list[dict]:
    """Nodes where the graph stops following the batch, graph order, at most `limit`:
    - a node with an input whose first dimension is the graph's symbolic batch and an output
      whose first dimension is a fixed number (shape inference);
    - a Reshape to a constant shape that starts with a fixed positive number while its data's
      first dimension is not known to be that number (a traced `view(B, ...)` with B an int:
      the element count still fits at other batches, so the runtime computes wrong values
      instead of failing).
    [{"node", "op", "input_shape", "output_shape"}]. Shape and Size, whose outputs describe
    a shape, are not counted."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - a diagnosis: an uninferable graph names nothing
        return []
    graph = inferred.graph
    shapes = {v.name: _dims(v) for v in [*graph.input, *graph.value_info, *graph.output]}
    batch = {d for d in (_dims(graph.input[0])[:1] if graph.input else []) if isinstance(d, str)}
    if not batch:
        return []
    constants = graph_constants(graph)
    found = []
    for k, node in enumerate(graph.node):
        if node.op_type in ("Shape", "Size"):
            continue
        ins = [shapes.get(name) for name in node.input if name in shapes]
        outs = [shapes.get(name) for name in node.output if name in shapes]
        symbolic_in = next((s for s in ins if s and s[0] in batch), None)
        fixed_out = next((s for s in outs if s and isinstance(s[0], int)), None)
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            target = constants[node.input[1]].reshape(-1).tolist()
            data = shapes.get(node.input[0]) or [None]
            if target and target[0] > 0 and data and data[0] != target[0]:
                symbolic_in, fixed_out = data, target
        if symbolic_in is not None and fixed_out is not None:
            found.append({"node": node.name or f"{node.op_type}#{k}", "op": node.op_type,
                          "input_shape": symbolic_in, "output_shape": fixed_out})
            if len(found) == limit:
                break
    return found


# What a batch_independent failure asks of the exporter.
_KEEP_IT_SYMBOLIC = ("The exporter traced a batch into the graph; its dynamic-shape export or "
                     "an export rewrite must keep the batch symbolic")


def _named(nodes: list[dict]) -> str:
    return ("; nodes that fix the batch dimension: " + ", ".join(
        f"{n['node']} ({n['op']} {n['input_shape']} -> {n['output_shape']})"
        for n in nodes[:5]) + (f" (+{len(nodes) - 5} more)" if len(nodes) > 5 else "")
        if nodes else "; shape inference names no node that fixes it")


def refused_at_another_batch(model_path: Path, input_shape: list[int], scope: dict,
                             threads: int | None = 1) -> Check | None:
    """A failed `batch_independent` check when ONNX Runtime runs the model at batch 1 and
    refuses it at batch 2 (a Concat or broadcast of a tensor traced at batch 1), naming the
    nodes; None when it runs at both, or at neither (then the batch is not the cause). Asked
    when onnxsim, which runs the model at batch 2, fails: the entry is then a failed check
    that says where, not a pipeline error."""
    from verify.ort_runner import OrtRunner

    x = np.zeros((2, *input_shape), np.float32)
    try:
        runner = OrtRunner(model_path, threads)
        runner.infer(x[:1], 1)
    except Exception:  # noqa: BLE001 - it does not run at all: not a batch matter
        return None
    try:
        runner.infer(x, 2)
        return None
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's refusal is the finding
        said = str(exc).splitlines()[0][:300]
    nodes = baking_nodes(onnx.load(str(model_path), load_external_data=False))
    return Check("batch_independent", False, "refused at batch 2", "runs at every batch",
                 f"batch baked into the graph: ONNX Runtime runs it at batch 1 and refuses it "
                 f"at batch 2 ({said}){_named(nodes)}. {_KEEP_IT_SYMBOLIC}",
                 {**scope, "batch_sizes": [2, 1]})


def batch_check(outs: dict[int, np.ndarray], tol: dict, model_path: Path | None,
                scope: dict, agree: dict[int, bool] | None = None) -> Check:
    """The same images at batch 1 and at the full batch must give the same logits, within
    the logit limit (atol + rtol x max|logits at batch 1|). `agree`: per batch size, whether
    that run passed the logit check against the source, for the detail text; `model_path`:
    the model, read only on a failure, to name the nodes."""
    sizes = sorted(outs)
    small, large = outs[sizes[0]], outs[sizes[-1]]
    if small.shape != large.shape or not (np.isfinite(small).all()
                                          and np.isfinite(large).all()):
        diff = float("inf")
    else:
        diff = float(np.abs(small.astype(np.float64) - large.astype(np.float64)).max())
    limit = tol["atol"] + tol["rtol"] * float(np.abs(small).max()) if np.isfinite(small).all() \
        else tol["atol"]
    if diff <= limit:
        return Check("batch_independent", True, diff, limit,
                     f"the same images at batch {sizes[0]} and batch {sizes[-1]} give the same "
                     "logits", scope)
    where = ""
    if agree:
        right = [str(b) for b in sizes if agree.get(b)]
        wrong = [str(b) for b in sizes if not agree.get(b)]
        where = (f"; right at batch {', '.join(right)}" if right else "") + \
                (f", wrong at batch {', '.join(wrong)}" if wrong else "")
    nodes = baking_nodes(onnx.load(str(model_path), load_external_data=False)) \
        if model_path is not None else []
    return Check("batch_independent", False, diff, limit,
                 f"batch baked into the graph: the same images give other logits at batch "
                 f"{sizes[-1]} than at batch {sizes[0]}{where}{_named(nodes)}. "
                 f"{_KEEP_IT_SYMBOLIC}", scope)
