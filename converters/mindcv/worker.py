"""MindCV worker: build with mindcv's code, load strictly, export with MindSpore's exporter.

Runs only in the mindspore environment:
    .venvs/mindspore/bin/python -m converters.mindcv.worker WORKDIR/job.json
The order of the stages lives in converters/worker_flow.py.

MindSpore traps (docs/environments.md): anything that loads protobuf before mindspore breaks its
old-style _pb2 modules, so mindspore is the first heavy import here and this environment
has no onnx package; mindcv's `res2net50()` function defaults to 1001 classes, so models are
always built with the manifest's num_classes.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

# First heavy import, on purpose: anything that loads protobuf before mindspore (onnx does)
# breaks mindspore 2.7's old-style _pb2 modules. onnx is imported later, in export only.
import mindspore  # noqa: F401,E402

from converters import worker_flow
from converters.data_loader import stack
from converters.protocol import WorkerError, worker_main

warnings.filterwarnings("ignore")
DEMO_KEY = "demo_checkpoint"  # written by converters.mindcv.make_checkpoint --mark-demo


def build_model(model_id: str, num_classes: int, **kwargs):
    """A mindcv model by its create_model name (e.g. res2net50_v1b), random init, eval."""
    import mindcv

    if model_id not in mindcv.list_models():
        raise WorkerError("model_id", f"mindcv has no model {model_id!r}")
    model = mindcv.create_model(model_id, pretrained=False, num_classes=num_classes, **kwargs)
    model.set_train(False)
    return model


class MindCVAdapter:
    framework = "mindcv"
    derive_module = "converters.mindcv.derive"

    def versions(self) -> dict:
        import mindcv
        import numpy

        return {"framework": "mindcv", "mindcv": mindcv.__version__,
                "mindspore": mindspore.__version__, "numpy": numpy.__version__,
                "mode": "GRAPH_MODE"}

    def build(self, model_id: str, num_classes: int):
        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device("CPU")
        return build_model(model_id, num_classes)

    def state_shapes(self, model) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in model.parameters_dict().items()}

    def load(self, model, checkpoint: Path, candidates: list[dict], num_classes: int) -> dict:
        import mindspore as ms

        from converters.mindcv import checkpoint as ck

        shapes = self.state_shapes(model)
        weights, info = ck.load_ckpt(checkpoint, set(shapes))
        if DEMO_KEY in weights:
            info["demo"] = True
            weights.pop(DEMO_KEY)
        worker_flow.require_fit(self, {k: tuple(v.shape) for k, v in weights.items()},
                                shapes, candidates, info["layout"], num_classes=num_classes)
        not_loaded, unused = ms.load_param_into_net(model, weights, strict_load=True)
        if not_loaded or unused:  # require_fit has already proven this cannot happen
            raise WorkerError("checkpoint_mismatch", f"mindspore did not load {not_loaded[:5]}"
                                                     f", left unused {unused[:5]}")
        model.set_train(False)
        return info

    def transform(self, cfg: dict):
        """mindcv's own eval transforms (transforms_imagenet_eval), run eagerly per image."""
        import numpy as np
        from mindcv.data.transforms_factory import transforms_imagenet_eval

        if cfg.get("decode", "mindspore") != "mindspore":
            raise WorkerError("preprocess", f"mindcv decodes with MindSpore's Decode, manifest "
                                            f"asks {cfg['decode']!r}")
        scale = float(cfg.get("scale", 1.0))
        ops = transforms_imagenet_eval(
            image_resize=cfg["crop"], crop_pct=cfg["crop"] / cfg["resize_short"],
            mean=[m / scale for m in cfg["mean"]], std=[s / scale for s in cfg["std"]],
            interpolation=cfg["interpolation"])

        def per_image(path: str):
            img = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
            for op in ops:
                img = op(img)
            return img

        return per_image, stack

    def forward(self, model, inputs, batch_size: int):
        import mindspore as ms
        import numpy as np

        outs = [model(ms.Tensor(inputs[i:i + batch_size])).asnumpy()
                for i in range(0, len(inputs), batch_size)]
        return np.concatenate(outs)

    def capture(self, model, inputs, record) -> None:
        """Forward hooks run in PyNative mode only: the capture switches to it (the graph
        mode forward and export are done by then; a capture worker does nothing else)."""
        import mindspore as ms
        from mindspore import nn

        ms.set_context(mode=ms.PYNATIVE_MODE)
        kinds = (((nn.Conv2d, nn.Conv1d, nn.Conv3d), "conv"), (nn.Dense, "linear"),
                 ((nn.BatchNorm2d, nn.BatchNorm1d), "norm"))
        with worker_flow.hooked(model.cells_and_names(), kinds,
                                lambda cell, hook: cell.register_forward_hook(hook),
                                lambda out: out.asnumpy(), record):
            model(ms.Tensor(inputs))

    def for_inference(self, model) -> list[str]:
        return worker_flow.switch_to_inference(model.cells_and_names(), "switch_to_deploy",
                                               self.framework)

    def export(self, model, sample, path: Path, opset: int, dynamic_batch: bool,
               workdir: Path) -> list[str]:
        import mindspore as ms
        from mindspore import onnx as ms_onnx

        from converters.mindcv import rewrites

        # converters/mindcv/rewrites.py: cells the exporter cannot write, replaced after the
        # reference logits were computed from the unmodified model.
        counts = rewrites.rewrite(model)
        axes = {"input": {0: "batch"}} if dynamic_batch else None
        try:
            # Functions a construct calls that the exporter cannot write are replaced while
            # it parses the network (rewrites.FUNCTION_RULES), and put back after.
            with rewrites.functions_rewritten(model) as called, logged_errors() as errors:
                ms_onnx.export(model, ms.Tensor(sample), file_name=str(path),
                               input_names=["input"], output_names=["logits"],
                               dynamic_axes=axes)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is an export error
            raise WorkerError("export", f"mindspore.onnx.export failed: {type(exc).__name__}: "
                                        f"{str(exc)[:400]}") from exc
        fixups = rewrites.notes({**counts, **called})
        if not path.exists():
            # MindSpore 2.7's exporter logs a failed write ("Failed to write ONNX file"),
            # removes the file and returns: its log is the only account of why.
            said = "; ".join(errors)[:400] or "and logged no error"
            raise WorkerError("export", f"mindspore.onnx.export wrote no {path.name}: {said}")
        stable_graph_name(path)
        if dynamic_batch:
            fixups += (free_traced_batch(path) + batch_from_concat(path)
                       + declare_output_batch(path))
        return fixups


@contextlib.contextmanager
def logged_errors():
    """The messages MindSpore's own logger records at ERROR or above while the block runs
    (it logs some failures instead of raising them)."""
    import logging

    from mindspore import log as ms_log

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep(logging.ERROR)
    logger = ms_log._get_logger()   # noqa: SLF001 - MindSpore exposes no other handle on it
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


def free_traced_batch(path: Path) -> list[str]:
    """MindSpore's exporter writes every Reshape with the static shape it traced at batch 1,
    the batch folded into the leading dimension (mindcv convnext_tiny `[1, 3136, 96]`,
    shufflenet_v2's channel shuffle `[24, 2, 784]` for (B x 24, 2, 784)), so the graph fails at
    any other batch. A constant target shape with more than one dimension and no -1 or 0 gets
    -1 first: the runtime then takes the leading dimension from the element count, which grows
    with the batch for activations and stays as traced for a constant. One that already has a
    -1 and starts with the traced 1 (mindcv ViT's patches, `(B, C, -1)` written [1, 768, -1])
    gets 0 first: the input's own leading dimension, the batch. Where the batch is not
    in the leading dimension this computes other values at batch > 1, and the logit gate,
    which compares batch 1 with the verification batch and both with the source
    (verify/batch.py), fails the model: nothing wrong ships.
    A Reshape of a constant (no path from the graph's input) is left as written: its shape
    is the same at every batch. mindcv swinv2's attention mask, (nW, N, N) reshaped to
    (1, -1, 1, N, N), became (nW, 1, 1, N, N) with a 0 first."""
    import numpy as np
    import onnx  # after mindspore: see the import at the top
    from onnx import numpy_helper

    model = onnx.load(str(path))
    constant = {init.name for init in model.graph.initializer}
    varying = {i.name for i in model.graph.input} - constant
    for node in model.graph.node:   # in topological order, as ONNX requires
        if any(name in varying for name in node.input):
            varying.update(node.output)
    targets = {node.input[1] for node in model.graph.node
               if node.op_type == "Reshape" and len(node.input) > 1 and node.input[0] in varying}

    def freed(tensor) -> bool:
        shape = numpy_helper.to_array(tensor)
        if shape.ndim != 1 or len(shape) < 2 or (shape == 0).any():
            return False
        fixed = shape.astype(np.int64)
        if (shape > 0).all():
            fixed[0] = -1
        elif shape[0] == 1 and (shape == -1).sum() == 1:
            fixed[0] = 0     # `(B, C, -1)` traced as [1, C, -1]: B is the input's own
        else:
            return False
        tensor.CopyFrom(numpy_helper.from_array(fixed, tensor.name))
        return True

    changed = sum(freed(init) for init in model.graph.initializer if init.name in targets)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] in targets:
            changed += sum(freed(attr.t) for attr in node.attribute if attr.name == "value")
    if not changed:
        return []
    onnx.save(model, str(path))
    return [f"{changed} Reshape target shape(s) traced at batch 1 take their leading dimension "
            "from the element count (-1) or from their input (0) (MindSpore's exporter writes "
            "static shapes; the logit gate compares batch 1 with the verification batch)"]


def batch_from_concat(path: Path) -> list[str]:
    """MindSpore writes a per-image constant at the batch it traced, 1, where it meets the
    batch in a Concat, so the graph fails at any other batch:
    - `ops.broadcast_to(token, (x.shape[0], -1, -1))` (mindcv ViT's class token) and
      `token.expand_as(ones((B, ...)))` (coat) as an Expand of a constant to a constant
      shape [1, ...];
    - `ops.tile(token, (B, 1, 1))` (convit) and `ops.zeros((B, h, 1, c))` (coat's padding)
      as the constant itself, [1, ...], concatenated along another axis than the batch.
    Each such input gets its leading dimension from the Shape of the Concat's first other
    input (an Expand to [N, ...]); a constant concatenated along the batch axis is left as it
    is. The logit gate compares batch 1 with the verification batch and both with the source,
    so a wrong guess fails there."""
    import numpy as np
    import onnx  # after mindspore: see the import at the top
    from onnx import helper, numpy_helper

    from verify.batch import graph_constants

    model = onnx.load(str(path))
    graph = model.graph
    constants = graph_constants(graph)
    producer = {out: node for node in graph.node for out in node.output}

    def traced(name: str):
        """The Expand making `name`, if it expands a constant to [1, ...]."""
        node = producer.get(name)
        if node is None or node.op_type != "Expand" or node.input[0] not in constants:
            return None
        shape = constants.get(node.input[1])
        return node if shape is not None and shape.ndim == 1 and len(shape) > 1 \
            and shape[0] == 1 else None

    def held(name: str, concat) -> bool:
        """`name` is a constant [1, ...] concatenated along another axis than the batch."""
        value = constants.get(name)
        if value is None or value.ndim < 2 or value.shape[0] != 1:
            return False
        axis = next((a.i for a in concat.attribute if a.name == "axis"), 0)
        return axis % value.ndim != 0

    changed = 0
    for concat in [n for n in graph.node if n.op_type == "Concat"]:
        for position, name in enumerate(list(concat.input)):
            expand = traced(name)
            constant = expand is None and held(name, concat)
            carriers = [i for i in concat.input if i != name and traced(i) is None
                        and i not in constants]
            if (expand is None and not constant) or not carriers:
                continue
            tag = f"{expand.name if expand is not None else name}_batch_{changed}"
            rest = (constants[expand.input[1]][1:] if expand is not None
                    else np.array(constants[name].shape[1:])).astype(np.int64)
            graph.initializer.extend([
                numpy_helper.from_array(np.array([0], np.int64), f"{tag}_start"),
                numpy_helper.from_array(np.array([1], np.int64), f"{tag}_end"),
                numpy_helper.from_array(rest, f"{tag}_rest")])
            made = [helper.make_node("Shape", [carriers[0]], [f"{tag}_shape"],
                                     name=f"{tag}_Shape"),
                    helper.make_node("Slice", [f"{tag}_shape", f"{tag}_start", f"{tag}_end"],
                                     [f"{tag}_n"], name=f"{tag}_Slice"),
                    helper.make_node("Concat", [f"{tag}_n", f"{tag}_rest"], [f"{tag}_to"],
                                     axis=0, name=f"{tag}_Concat")]
            if expand is not None:
                old, expand.input[1] = expand.input[1], f"{tag}_to"
                _drop_if_unused(graph, old)
                graph.node.remove(expand)     # after the batch carrier: just before the Concat
            else:
                expand = helper.make_node("Expand", [name, f"{tag}_to"], [f"{tag}_expanded"],
                                          name=f"{tag}_Expand")
                concat.input[position] = f"{tag}_expanded"
            at = list(graph.node).index(concat)
            for offset, new in enumerate([*made, expand]):
                graph.node.insert(at + offset, new)
            changed += 1
    if not changed:
        return []
    # The exporter declares the shapes it traced (batch 1) for inner tensors too: onnx.checker
    # refuses those that now disagree with inference, so the declarations go.
    del graph.value_info[:]
    onnx.save(model, str(path))
    return [f"{changed} constant(s) at the traced batch 1 entering a Concat (an Expand to "
            "[1, ...], or a [1, ...] constant along another axis) take their batch from the "
            "Concat's other input (MindSpore writes broadcast_to, tile and zeros of the batch "
            "with static shapes; the logit gate compares batch 1 with the verification batch)"]


def _drop_if_unused(graph, name: str) -> None:
    """Remove the initializer or Constant node `name` when no node reads it any more (ONNX
    Runtime warns of each unused initializer)."""
    if any(name in node.input for node in graph.node):
        return
    for init in [i for i in graph.initializer if i.name == name]:
        graph.initializer.remove(init)
    for node in [n for n in graph.node if n.op_type == "Constant" and name in n.output]:
        graph.node.remove(node)


def stable_graph_name(path: Path) -> None:
    """MindSpore names the exported graph after its compile counters, which count every graph
    the process compiled before ('4622_2312_mindcv_models_res2net_Res2Net_construct_167'), so
    the same model exported by a warm worker after other jobs, or after another forward,
    would be another file. The counters are dropped: the name says the cell's construct."""
    import onnx  # after mindspore: see the import at the top

    model = onnx.load(str(path))
    found = re.fullmatch(r"\d+_\d+_(.+?)(_\d+)?", model.graph.name)
    if found and found.group(1) != model.graph.name:
        model.graph.name = found.group(1)
        onnx.save(model, str(path))


def declare_output_batch(path: Path) -> list[str]:
    """MindSpore's exporter ignores dynamic_axes on outputs and declares logits [1, K] even
    though the graph computes any batch. Declare the output's batch dimension symbolic, as the
    input's is; the logit gate then runs the model at two batch sizes to prove it."""
    import onnx  # after mindspore: see the import at the top

    model = onnx.load(str(path))
    notes = []
    for output in model.graph.output:
        dim = output.type.tensor_type.shape.dim[0]
        if not dim.dim_param:
            notes.append(f"output {output.name!r} batch dimension was declared {dim.dim_value}; "
                         "set to symbolic 'batch' (MindSpore exporter ignores output "
                         "dynamic_axes)")
            dim.dim_param = "batch"
    if notes:
        onnx.save(model, str(path))
    return notes


def handle(job: dict, workdir: Path) -> dict:
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only
    return worker_flow.run(MindCVAdapter(), job, workdir)


if __name__ == "__main__":
    worker_main(handle)
