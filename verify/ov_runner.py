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

from verify.ort_runner import fixed_batch, in_batches


class OpenVinoRunner:
    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, spinning: bool = False):
        import openvino as ov

        self._ov = ov
        core = ov.Core()
        self.compiled = core.compile_model(
            core.read_model(str(path)), "CPU",
            {"INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1),
             "INFERENCE_PRECISION_HINT": "f32"})
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        shape = self.compiled.input(0).get_partial_shape()
        self.fixed_batch = fixed_batch([shape[0].get_length() if shape[0].is_static else None])

    @property
    def version(self) -> str:
        return self._ov.__version__.split("-")[0]

    def infer(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        parts = in_batches(inputs, batch_size, self.fixed_batch,
                           lambda x: [np.array(self.request.infer({0: x})[self.output])])
        return np.concatenate([p[0] for p in parts])
