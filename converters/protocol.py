"""The file protocol between the orchestrator and a framework worker.

The orchestrator writes `job.json` into a fresh work directory and starts
`<env>/bin/python -m converters.<source>.worker <workdir>/job.json`, or hands the path to a
warm worker of that source (`--serve`), which takes jobs one after another. The worker writes
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
from dataclasses import MISSING, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, ClassVar

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
PROTOCOL_VERSION = 1


class PipelineError(Exception):
    """The one shape of every expected failure in the pipeline, on both sides of the process
    boundary (it is what result.json's `error` carries): a cause a user can act on.

    kind: short machine-readable cause (checkpoint_format, checkpoint_mismatch, export,
    preprocess, timeout, ...); message: one paragraph for people; details: structured figures
    for the report; stage: the pipeline stage it stopped (fetch, derive, convert, ...), set
    by `in_stage` (every `Timer.stage` is one) as the error leaves the stage, so nobody wraps
    an error to say where it happened. Each part of the pipeline raises its own subclass
    (WorkerError, WorkerFailed, FetchError, DeriveFailed, OnnxCheckFailed, AccuracyFailed,
    LocalizeFailed), so a caller can catch one part's or all of them.
    """

    def __init__(self, kind: str, message: str, details: dict | None = None, *,
                 stage: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details or {}
        self.stage = stage

    def __reduce__(self):   # pickled whole (a Ray task's error), not as Exception(message)
        return type(self), (self.kind, self.message, self.details), {"stage": self.stage}


@contextmanager
def in_stage(name: str):
    """A PipelineError leaving this block that names no stage yet is `name`'s."""
    try:
        yield
    except PipelineError as exc:
        if exc.stage is None:
            exc.stage = name
        raise


class WorkerError(PipelineError):
    """A failure inside a framework worker, reported in its result.json."""


# --------------------------------------------------------------------------- the jobs
# One dataclass per worker task: what the orchestrator may ask and what each field means, in
# one place. job.json is `{"protocol": .., "task": .., **fields}`; the worker reads it back
# with parse_job, which refuses an unknown task, an unknown field or a missing one.
@dataclass(kw_only=True)
class Job:
    task: ClassVar[str] = ""
    threads: int | None = None   # the framework's and ONNX Runtime's threads (None: all cores)

    def to_json(self) -> dict:
        return {"task": self.task, **{f.name: getattr(self, f.name) for f in fields(self)}}


@dataclass(kw_only=True)
class _Images(Job):
    entry: dict                  # the manifest entry, defaults filled in (Entry.data)
    images: list[str]            # image paths, read by the source's own transforms
    data_workers: int | None = None       # decode threads (None: one per core)
    max_image_pixels: int | None = None   # the decoder's limit; 0 off, None the loader's own


@dataclass(kw_only=True)
class ConvertJob(_Images):
    """build, load, preprocess, the reference logits, export (worker_flow.convert)."""
    task: ClassVar[str] = "convert"
    checkpoint: str
    batch_size: int              # the source's forward batch for the reference logits
    candidates: list = field(default_factory=list)   # other entries, to name a misfit's owner
    calibration_images: list[str] = field(default_factory=list)   # int8, preprocessed too


@dataclass(kw_only=True)
class CaptureJob(_Images):
    """The source's layer outputs on the images as one batch, for the localiser."""
    task: ClassVar[str] = "capture"
    checkpoint: str


@dataclass(kw_only=True)
class EvaluateJob(_Images):
    """The accuracy pass: the source's logits on every image, streamed as batch files."""
    task: ClassVar[str] = "evaluate"
    checkpoint: str
    batch_size: int
    batch_dir: str = "batches"   # under the work dir; the orchestrator deletes each one read
    max_pending: int = 4         # batch files waiting on disk before the worker waits
    prefetch: int = 2            # batches the decoder works ahead


@dataclass(kw_only=True)
class BenchJob(_Images):
    """The data path's speed, the source's forward, and an ONNX to time ORT on the same
    batch (benchmarks/data_path.py)."""
    task: ClassVar[str] = "bench"
    batch_size: int
    data_workers_list: list[int] = field(default_factory=list)   # empty: data_workers
    inference_batches: int = 4


@dataclass(kw_only=True)
class LatencyJob(Job):
    """The source's eval forward at each batch size, random-init weights."""
    task: ClassVar[str] = "latency"
    entry: dict
    batch_sizes: list[int]
    warmup: int
    runs: int


@dataclass(kw_only=True)
class DescribeJob(Job):
    """What the source says about a model (or each of several: one error per model)."""
    task: ClassVar[str] = "describe"
    model_id: str | None = None
    model_ids: list[str] | None = None


@dataclass(kw_only=True)
class ListJob(Job):
    """The source's classifier ids matching a pattern."""
    task: ClassVar[str] = "list"
    pattern: str = ""


JOBS: dict[str, type[Job]] = {cls.task: cls for cls in (
    ConvertJob, CaptureJob, EvaluateJob, BenchJob, LatencyJob, DescribeJob, ListJob)}


def job_json(job: Job | dict) -> dict:
    """What job.json holds for `job` (a dict passes as it is: test workers' own jobs)."""
    return job.to_json() if isinstance(job, Job) else dict(job)


def parse_job(data: dict) -> Job:
    """job.json's fields as their task's Job; WorkerError `job` for an unknown task or field,
    or a missing one."""
    task = data.get("task", "convert")
    cls = JOBS.get(task)
    if cls is None:
        raise WorkerError("job", f"unknown task {task!r} (known: {', '.join(JOBS)})")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known) - {"task", "protocol"})
    missing = sorted(name for name, f in known.items() if name not in data
                     and f.default is MISSING and f.default_factory is MISSING)
    if unknown or missing:
        raise WorkerError("job", f"{task} job: " + "; ".join(
            part for part in (unknown and f"unknown field(s) {', '.join(unknown)}",
                              missing and f"missing field(s) {', '.join(missing)}") if part))
    return cls(**{name: data[name] for name in known if name in data})


class Timer:
    """Collects named stage durations in seconds."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.current: str | None = None  # the stage running now, for error reports

    @contextmanager
    def stage(self, name: str):
        """Times the block as `name`; a PipelineError leaving it is that stage's (in_stage)."""
        self.current = name
        start = time.perf_counter()
        try:
            with in_stage(name):
                yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def timed_runs(run: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Seconds of each of `runs` calls after `warmup` untimed ones (the worker's latency and
    the orchestrator's runtime benchmarks time the same way)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def package_version(package: str) -> str | None:
    """An installed distribution's version, None where it is not installed."""
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def log(message: str) -> None:
    """Progress line for the worker log (stderr); the orchestrator shows it on failure."""
    print(f"[worker {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


SERVE_FLAG = "--serve"


def _run_one(handle: Callable[[dict, Path], dict], job_path: Path, served: int = 1) -> None:
    """Run one job and write its result.json (success or a reported error). `process` says
    which process ran it and how many jobs that process had taken by then (1: a fresh one)."""
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
    result["process"] = {"pid": os.getpid(), "job": served}
    write_json_atomic(workdir / RESULT_FILE, result)


def _serve(handle: Callable[[dict, Path], dict], reply_fd: int) -> None:
    """A warm worker (converters/runner.py WarmPool): the framework is imported once, by the
    first job, and each job after it reuses it. Reads one job.json path per line on stdin,
    runs it with its stdout and stderr going to the job's own worker.log, writes its
    result.json, then answers the path on REPLY_FD. Ends at end of input."""
    replies = os.fdopen(reply_fd, "w", buffering=1, encoding="utf-8")
    saved = os.dup(1), os.dup(2)
    for served, line in enumerate(sys.stdin, start=1):
        job_path = Path(line.strip())
        log_fd = os.open(job_path.parent / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        log(f"warm worker {os.getpid()}, job {served} (its framework imported "
            f"{'now' if served == 1 else 'for job 1'})")
        try:
            _run_one(handle, job_path, served)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        replies.write(f"{job_path}\n")
    os._exit(0)  # as below: framework destructors at exit are slow or noisy


def worker_main(handle: Callable[[dict, Path], dict]) -> None:
    """Entry point of every worker: run `handle(job, workdir)` and write result.json.
    `--serve FD` instead takes many jobs, one after another (_serve).

    Exit status is 0 whenever result.json was written (success or a reported error), so the
    orchestrator can tell a reported failure from a crash (no result.json, non-zero exit).
    """
    if len(sys.argv) == 3 and sys.argv[1] == SERVE_FLAG:
        _serve(handle, int(sys.argv[2]))
    if len(sys.argv) != 2:
        print(f"usage: python -m {sys.modules['__main__'].__spec__.name} WORKDIR/{JOB_FILE}"
              f" | {SERVE_FLAG} REPLY_FD", file=sys.stderr)
        raise SystemExit(2)
    _run_one(handle, Path(sys.argv[1]))
    # Skip interpreter teardown: the result is on disk, and framework destructors at exit are
    # slow or noisy (MindSpore 2.7 prints ~277 Cell.__del__ tracebacks).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
