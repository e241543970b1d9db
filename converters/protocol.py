"""The file protocol between the orchestrator and a framework worker.

The orchestrator writes `job.json` into a fresh work directory and starts
`<env>/bin/python -m converters.<source>.worker <workdir>/job.json`. The worker writes
`result.json` beside it and the files it names (ONNX, preprocessed inputs, reference logits).
Nothing else crosses the process boundary, so the orchestrator never imports a framework.

This module is imported by both sides, so it may only use the standard library.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
PROTOCOL_VERSION = 1


class WorkerError(Exception):
    """An expected failure with a cause a user can act on.

    kind: short machine-readable cause (checkpoint_format, checkpoint_unsafe,
    checkpoint_mismatch, export, preprocess, ...); message: one paragraph for people;
    details: structured figures for the report.
    """

    def __init__(self, kind: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}


class Timer:
    """Collects named stage durations in seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.current: str | None = None  # the stage running now, for error reports

    @contextmanager
    def stage(self, name: str):
        self.current = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def log(message: str) -> None:
    """Progress line for the worker log (stderr); the orchestrator shows it on failure."""
    print(f"[worker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def worker_main(handle: Callable[[dict, Path], dict]) -> None:
    """Entry point of every worker: run `handle(job, workdir)` and write result.json.

    Exit status is 0 whenever result.json was written (success or a reported error), so the
    orchestrator can tell a reported failure from a crash (no result.json, non-zero exit).
    """
    if len(sys.argv) != 2:
        print(f"usage: python -m {sys.modules['__main__'].__spec__.name} WORKDIR/{JOB_FILE}",
              file=sys.stderr)
        raise SystemExit(2)
    job_path = Path(sys.argv[1])
    workdir = job_path.parent
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if job.get("protocol") != PROTOCOL_VERSION:
        raise SystemExit(f"protocol mismatch: job has {job.get('protocol')}, "
                         f"worker speaks {PROTOCOL_VERSION}")
    try:
        result = {"ok": True, **handle(job, workdir)}
    except WorkerError as exc:
        result = {"ok": False, "error": {"kind": exc.kind, "message": exc.message,
                                         "details": exc.details}}
    except Exception as exc:  # noqa: BLE001 - reported to the user with its traceback
        result = {"ok": False, "error": {
            "kind": "internal",
            "message": f"{type(exc).__name__}: {exc}",
            "details": {"traceback": traceback.format_exc(limit=20)}}}
    write_json_atomic(workdir / RESULT_FILE, result)
    # Skip interpreter teardown: the result is on disk, and framework destructors at exit are
    # slow or noisy (MindSpore 2.7 prints ~277 Cell.__del__ tracebacks).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
