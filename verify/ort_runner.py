"""ONNX Runtime runner: the one backend the orchestrator runs itself."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort


class OrtRunner:
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = True,
                 providers: list[str] | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        if not spinning:  # sharing the cores with another process: idle threads must sleep
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def version(self) -> str:
        return ort.__version__

    def infer(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """Logits for `inputs`, fed in batches of `batch_size` (the last one may be smaller)."""
        outs = [self.session.run([self.output_name],
                                 {self.input_name: inputs[i:i + batch_size]})[0]
                for i in range(0, len(inputs), batch_size)]
        return np.concatenate(outs)
