"""Which environment and worker module serve each source. Pure data, no framework imports.

Adding a source = a worker module `converters/<source>/worker.py` speaking
converters/protocol.py, a lock file `envs/<env>.lock.txt`, and one line here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SourceSpec:
    source: str
    env: str             # environment name under VENV_ROOT, lock file envs/<env>.lock.txt
    worker: str          # python module run as `python -m <worker> job.json`
    framework: str       # human name for messages


SOURCES: dict[str, SourceSpec] = {
    "mmpretrain": SourceSpec("mmpretrain", "mmpretrain", "converters.mmpretrain.worker",
                             "mmpretrain (PyTorch)"),
    "paddleclas": SourceSpec("paddleclas", "paddle", "converters.paddleclas.worker",
                             "PaddleClas (PaddlePaddle)"),
    "mindcv": SourceSpec("mindcv", "mindspore", "converters.mindcv.worker",
                         "MindCV (MindSpore)"),
}


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
