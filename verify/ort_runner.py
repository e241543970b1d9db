"""ONNX Runtime runner: the one backend the orchestrator runs itself."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort


class OrtRunner:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = False,
                 providers: list[str] | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # Idle threads sleep unless asked to spin (ONNX Runtime's own default): the pipeline's
        # runs share the cores with a framework worker, another entry or a Ray node's tasks.
        # Two conversions side by side ran about a tenth faster, one alone the same
        # (docs/environments.md). The latency benchmark builds its own spinning sessions.
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.fixed_batch = fixed_batch(self.session.get_inputs()[0].shape)

    @property
    def version(self) -> str:
        return ort.__version__

    def infer(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """Logits for `inputs`, fed in batches of `batch_size` (the last one may be smaller;
        a fixed-batch graph's own batch instead: `in_batches`)."""
        return self.outputs([self.output_name], inputs, batch_size)[0]

    def outputs(self, names: list[str], inputs: np.ndarray, batch_size: int | None = None
                ) -> list[np.ndarray]:
        """The graph's tensors `names` for `inputs` (all at once, or `batch_size` at a time),
        concatenated along the batch."""
        parts = in_batches(inputs, batch_size or len(inputs), self.fixed_batch,
                           lambda x: self.session.run(names, {self.input_name: x}))
        # Copies, never ONNX Runtime's own arrays: those keep the session's memory arena alive
        # after the runner is gone (mindcv coat_lite_tiny: 5 GiB per session at batch 16, and
        # the logit gate's second model then ran out of memory).
        if len(parts) == 1:
            return [np.array(o, copy=True) for o in parts[0]]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(names))]


def fixed_batch(shape) -> int | None:
    """The batch a graph's input holds (an int dimension), None where it takes any."""
    return shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def in_batches(inputs: np.ndarray, batch_size: int, fixed: int | None, run) -> list:
    """run(x) on `inputs` in batches of `batch_size`, or of `fixed` for a graph that holds
    its batch (a model exported at a fixed batch, report['onnx']['batch']); a last short
    batch is padded with copies of its last image and its outputs cut back: `run` returns a
    list of arrays whose first axis is the batch."""
    step = fixed or batch_size
    parts = []
    for start in range(0, len(inputs), step):
        x = inputs[start:start + step]
        short = step - len(x) if fixed else 0
        if short:
            x = np.concatenate([x, np.repeat(x[-1:], short, axis=0)])
        outs = run(x)
        parts.append([o[:len(o) - short] for o in outs] if short else list(outs))
    return parts
