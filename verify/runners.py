"""The inference runtimes a shipped model is checked on, by name (converters/registry.py
RUNTIMES, the one list of them): each a small runner with `infer(inputs, batch_size) ->
logits` and `version` (verify/ort_runner.py, verify/ov_runner.py). As mmdeploy's backend
managers: `unavailable` says why one cannot run here, `make_runner` starts it."""
from __future__ import annotations

import importlib
from pathlib import Path

from converters.registry import RUNTIMES as SPECS
from converters.registry import RuntimeSpec

RUNTIMES = tuple(SPECS)
# those that run on any node's CPU (the GPU ones only where their provider is installed)
CPU_RUNTIMES = tuple(name for name, spec in SPECS.items() if spec.device == "cpu")


def _spec(runtime: str) -> RuntimeSpec:
    try:
        return SPECS[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(SPECS)}") from None


def providers(runtime: str) -> list[str]:
    """ONNX Runtime's execution providers for a GPU runtime, in order: the GPU's, then the
    CPU's for any node the GPU's cannot take. A name ONNX Runtime does not know makes it
    print "EP Error" and fall back to CPU alone (measured with 1.31.1), which make_runner
    would then refuse: tests/test_deploy_gate_units.py checks every name against ORT's own
    list."""
    return [_spec(runtime).provider, "CPUExecutionProvider"]


def unavailable(runtime: str) -> str | None:
    """Why `runtime` cannot run here, or None."""
    spec = _spec(runtime)
    if spec.device == "cpu":
        return None
    import onnxruntime as ort

    if spec.provider not in ort.get_available_providers():
        return (f"{spec.provider} is not in this onnxruntime build ({ort.__version__}; "
                "install onnxruntime-gpu on a machine with an NVIDIA GPU)")
    return None


def make_runner(runtime: str, path: Path, threads: int | None = None, spinning: bool = False):
    """The runtime's runner on the model at `path`. A GPU runtime that ONNX Runtime put on
    the CPU instead (it falls back silently when the provider's libraries do not load) is a
    RuntimeError, never CPU figures under the GPU's name."""
    spec = _spec(runtime)
    module, _, name = spec.runner.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if spec.device == "cpu":
        return cls(path, threads, spinning)
    runner = cls(path, threads, providers=providers(runtime))
    used = runner.session.get_providers()[0]
    if used != spec.provider:
        raise RuntimeError(f"ONNX Runtime ran the model on {used}, not {spec.provider}")
    return runner
