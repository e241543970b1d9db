"""Every per-source fact, in one place: which environment and worker module serve each
source, and what the manifest schema, `add`, the zoo sweep and the checkpoint makers need to
know of it; and every inference runtime a shipped model is checked on (RUNTIMES). Pure data,
no framework imports (manifests/, scripts/ and the orchestrator read it).

Adding a source = its folder `converters/<source>/` (worker.py speaking
converters/protocol.py, derive.py, make_checkpoint.py), a lock file `envs/<env>.lock.txt`,
and one line here (docs/architecture.md, "Adding a source"). Adding a runtime = its runner
in verify/ (`infer(inputs, batch_size)`, `version`) and one line in RUNTIMES.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SourceSpec:
    source: str
    env: str             # environment name under VENV_ROOT, lock file envs/<env>.lock.txt
    worker: str          # python module run as `python -m <worker> job.json`
    framework: str       # human name for messages
    checkpoint_suffix: str   # what its checkpoints are called (the zoo sweep's files)
    # `add` names an entry SOURCE-ID where short ids collide across zoos (PaddleClas
    # ResNet50, MindCV resnet50), as manifests/all.yaml names them
    prefixed_names: bool = True
    # over manifests/schema.py DEFAULTS, for every entry of the source
    defaults: dict = field(default_factory=dict)
    # make_checkpoint's option that names the model (the zoo sweep)
    model_option: str = "--model-id"
    model_arg_prefix: str = ""

    def maker_args(self, model_id: str) -> list[str]:
        """converters/<source>/make_checkpoint.py's arguments that name the model."""
        return [self.model_option, f"{self.model_arg_prefix}{model_id}"]


SOURCES: dict[str, SourceSpec] = {
    "mmpretrain": SourceSpec("mmpretrain", "mmpretrain", "converters.mmpretrain.worker",
                             "mmpretrain (PyTorch)", ".pth", prefixed_names=False,
                             model_option="--arch", model_arg_prefix="mmpretrain:"),
    "paddleclas": SourceSpec("paddleclas", "paddle", "converters.paddleclas.worker",
                             "PaddleClas (PaddlePaddle)", ".pdparams"),
    # MindSpore 2.7's ONNX exporter takes no opset and writes 11
    "mindcv": SourceSpec("mindcv", "mindspore", "converters.mindcv.worker",
                         "MindCV (MindSpore)", ".ckpt", defaults={"export": {"opset": 11}}),
}


@dataclass(frozen=True)
class RuntimeSpec:
    """An inference runtime the runtime matrix checks shipped models on (verify/runners.py
    makes its runner; the manifest's `deploy.runtimes` names it)."""
    name: str
    runner: str          # "module:Class" of its runner, built as Class(path, threads, spinning)
    # where it runs: "cpu" on any node (the accuracy shards run it too), "gpu" only where its
    # ONNX Runtime execution provider is in the installed build
    device: str = "cpu"
    provider: str | None = None   # ONNX Runtime's execution provider, for ONNX Runtime's


RUNTIMES: dict[str, RuntimeSpec] = {spec.name: spec for spec in (
    # the pipeline's own: the verify and variant stages run it
    RuntimeSpec("onnxruntime", "verify.ort_runner:OrtRunner"),
    RuntimeSpec("openvino", "verify.ov_runner:OpenVinoRunner"),
    RuntimeSpec("onnxruntime-cuda", "verify.ort_runner:OrtRunner", "gpu",
                "CUDAExecutionProvider"),
    RuntimeSpec("tensorrt", "verify.ort_runner:OrtRunner", "gpu", "TensorrtExecutionProvider"),
)}


def venv_root() -> Path:
    return Path(os.environ.get("VENV_ROOT", REPO_ROOT / ".venvs")).expanduser()


def env_python(spec: SourceSpec) -> Path:
    """Interpreter of the source's environment (override: <ENV>_PYTHON, e.g. MMPRETRAIN_PYTHON)."""
    override = os.environ.get(f"{spec.env.upper()}_PYTHON")
    return Path(override) if override else venv_root() / spec.env / "bin" / "python"


def worker_file(spec: SourceSpec) -> Path:
    return REPO_ROOT / (spec.worker.replace(".", "/") + ".py")


def unavailable_reason(spec: SourceSpec) -> str | None:
    """Why this source cannot run here, or None when it can."""
    if not worker_file(spec).is_file():
        return (f"source {spec.source!r} ({spec.framework}) has no converter in this version "
                f"of the pipeline ({worker_file(spec).relative_to(REPO_ROOT)} is missing)")
    python = env_python(spec)
    if not python.exists():
        return (f"source {spec.source!r} ({spec.framework}) is not installed: "
                f"{python} does not exist; run `make setup`")
    return None
