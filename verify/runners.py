"""The inference runtimes a shipped model is checked on, by name: each a small runner with
`infer(inputs, batch_size) -> logits` and `version` (verify/ort_runner.py,
verify/ov_runner.py)."""
from __future__ import annotations

from pathlib import Path

from verify.ort_runner import OrtRunner
from verify.ov_runner import OpenVinoRunner

RUNNERS = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner}
RUNTIMES = tuple(RUNNERS)
CPU_RUNTIMES = RUNTIMES   # both run on any node's CPU (the GPU ones: orchestrator/runtimes.py)


def make_runner(runtime: str, path: Path, threads: int | None = None, spinning: bool = True):
    try:
        cls = RUNNERS[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}") from None
    return cls(path, threads, spinning)
