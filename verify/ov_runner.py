"""OpenVINO runner: the same interface as verify/ort_runner.py (`infer(inputs, batch_size)`,
`version`), for the runtime matrix and `pipeline.py predict --runtime openvino`.

OpenVINO reads the project's fp32, fp16 and QDQ int8 ONNX files directly; on CPU it runs f32
where the model is f32 (INFERENCE_PRECISION_HINT f32: no silent bf16 on CPUs that have it)
and executes the int8 model's quantized operations with its own kernels, which is why its int8
logits differ from ONNX Runtime's (docs/artifact.md, "Runtime matrix").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class OpenVinoRunner:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = True):
        import openvino as ov

        self._ov = ov
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(path)), "CPU",
            {"INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
             "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    @property
    def version(self) -> str:
        return self._ov.__version__.split("-")[0]

    def infer(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        outs = [np.array(self.request.infer({0: inputs[i:i + batch_size]})[self.output])
                for i in range(0, len(inputs), batch_size)]
        return np.concatenate(outs)
