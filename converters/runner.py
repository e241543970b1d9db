"""Start a framework worker in its own environment and collect its result (orchestrator side).

The worker imports its framework, the orchestrator never does. A job runs in a process of
its own, or, where the driver allows (WarmPool), on a warm worker of its source that
imported the framework for an earlier job.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from tqdm import tqdm

from converters.protocol import (JOB_FILE, PROTOCOL_VERSION, RESULT_FILE, SERVE_FLAG, Job,
                                 PipelineError, job_json)
from converters.limits import _gib, _MemoryWatch, tree_rss
from converters.registry import REPO_ROOT, SourceSpec, env_python


class WorkerFailed(PipelineError):
    """The worker reported an error or died. `kind` and `details` go into the report."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_showing_progress(finished, log_path: Path, timeout: float, label: str) -> None:
    """Wait until finished() is true (raises subprocess.TimeoutExpired after TIMEOUT s); on a
    terminal show elapsed time and the worker's latest log line."""
    deadline = time.monotonic() + timeout
    with tqdm(total=None, desc=f"  {label}", bar_format="{desc}: {elapsed}{postfix}",
              disable=None, leave=False) as bar:
        while not finished(0.5):
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(label, timeout)
            if not bar.disable:
                last = _tail(log_path, 1).strip()
                bar.set_postfix_str(last.split("] ", 1)[-1][:70])


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGKILL when the process that started it
    dies (a killed run, a cluster task whose node is removed), so no worker outlives it and
    none has to poll for its parent. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Idle OpenMP threads sleep instead of spinning: a worker shares the cores with ONNX
    # Runtime, onnxsim and other entries' workers. Two mmpretrain Res2Net-50 conversions side
    # by side on 2 cores took 44-55 s spinning and 39-45 s without; one alone, the same
    # (docs/environments.md).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _start(cmd: list[str], **kwargs) -> subprocess.Popen:
    # Own process group, so a timeout or Ctrl-C ends the worker and its children only.
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=_worker_env(), start_new_session=True,
                            preexec_fn=_die_with_parent, **kwargs)  # noqa: PLW1509


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


class _Warm:
    """A long-lived worker process of one source (`--serve`, converters/protocol.py): it
    imports its framework with its first job and takes the next jobs without starting again.
    One job at a time; the pool hands it to one Worker until that Worker is done with it."""

    def __init__(self, spec: SourceSpec):
        read_fd, write_fd = os.pipe()
        try:
            self.proc = _start([str(env_python(spec)), "-m", spec.worker, SERVE_FLAG,
                                str(write_fd)], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        self.replies = os.fdopen(read_fd, "r", encoding="utf-8")

    def send(self, job_path: Path) -> None:
        try:
            self.proc.stdin.write(f"{job_path}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:   # it died since: the job ends without a result (a crash)
            pass

    def answered(self, timeout: float) -> bool:
        """True once the worker answered the job it was sent (or it has died)."""
        ready, _, _ = select.select([self.replies], [], [], timeout)
        if ready:
            self.replies.readline()   # the job's path, or '' when the worker is gone
            return True
        return self.proc.poll() is not None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        _kill_group(self.proc)
        self.replies.close()


class WarmPool:
    """Warm workers, at most one idle per source and thread count, for a driver that runs
    many jobs (a local run of a manifest, the zoo sweep): each source's framework is
    imported once, not once per job. Used only from the main thread: the kernel ends a
    worker when the thread that started it ends (PR_SET_PDEATHSIG), so one started from a
    passing thread could die in another's job. A worker whose job failed, or that holds more
    than half of a job's memory limit afterwards, is stopped, not reused: the next job gets
    a fresh process."""

    def __init__(self):
        self.idle: dict[tuple, _Warm] = {}
        self.busy: set[_Warm] = set()
        self.enabled = False

    def usable(self) -> bool:
        return self.enabled and threading.current_thread() is threading.main_thread()

    @staticmethod
    def key(spec: SourceSpec, threads) -> tuple:
        # The job's thread count is part of the key: frameworks size their thread pools from
        # OMP_NUM_THREADS when they are imported (worker_flow.run), so a worker imported for
        # a 1-thread job (`pipeline.py add`'s describe) does not run a job that asked for all
        # cores. A run's own describe asks for the run's threads, and shares its worker.
        return str(env_python(spec)), spec.worker, threads

    def take(self, spec: SourceSpec, key: tuple) -> _Warm:
        warm = self.idle.pop(key, None)
        if warm is None or not warm.alive():
            warm = _Warm(spec)
        self.busy.add(warm)
        return warm

    def give_back(self, key: tuple, warm: _Warm, reusable: bool) -> None:
        self.busy.discard(warm)
        if reusable and warm.alive() and key not in self.idle:
            self.idle[key] = warm
        else:
            warm.stop()

    def close(self) -> None:
        """Stop every warm worker (at exit, or when a caller wants its memory back)."""
        for warm in [*self.idle.values(), *self.busy]:
            warm.stop()
        self.idle.clear()
        self.busy.clear()


WARM = WarmPool()
atexit.register(WARM.close)


def use_warm_workers(enabled: bool = True) -> None:
    """Let this process's jobs run on warm workers (Ray tasks start a worker per job, so an
    idle one never holds a node's memory)."""
    WARM.enabled = enabled


@contextlib.contextmanager
def warm_workers(enabled: bool = True):
    """Warm workers for the jobs inside the block (pipeline.py's run with the local executor);
    after it every warm worker is stopped and the previous setting is back, so a caller
    that runs the CLI in-process (a test, a notebook) keeps neither processes nor the mode."""
    before = WARM.enabled
    use_warm_workers(enabled)
    try:
        yield
    finally:
        WARM.close()
        use_warm_workers(before)


class Worker:
    """A started worker job: poll it, wait for it, read its result, stop it.

    The job runs in a fresh process, or on a warm one of its source (WarmPool) when this
    process allows them. With `memory_limit` (bytes) the worker is killed when it and its
    children hold more resident memory than that, and result() raises WorkerFailed of kind
    `resource_limit`."""

    def __init__(self, spec: SourceSpec, job: Job | dict, workdir: Path,
                 memory_limit: int | None = None):
        job = job_json(job)
        workdir.mkdir(parents=True, exist_ok=True)
        # A result an earlier job left here must never read as this job's: a worker that
        # dies without writing its own would otherwise "return" the earlier one (the
        # fixed-batch export after a failed dynamic one shares the entry's work dir).
        (workdir / RESULT_FILE).unlink(missing_ok=True)
        job_path = workdir / JOB_FILE
        job_path.write_text(json.dumps({"protocol": PROTOCOL_VERSION, **job}, indent=2,
                                       default=str))
        self.spec, self.workdir = spec, workdir
        self.log_path = workdir / "worker.log"
        self.task = job.get("task", "convert")
        self.warm, self.answered = None, False
        if WARM.usable():
            self.log_path.write_bytes(b"")
            self.key = WARM.key(spec, job.get("threads"))
            self.warm = WARM.take(spec, self.key)
            self.proc = self.warm.proc
            self.warm.send(job_path)
        else:
            with open(self.log_path, "wb") as log:
                self.proc = _start([str(env_python(spec)), "-m", spec.worker, str(job_path)],
                                   stdout=log, stderr=subprocess.STDOUT)
        self.watch = None
        if memory_limit:
            self.watch = _MemoryWatch(self, memory_limit)
            self.watch.start()

    def _finished(self, timeout: float = 0.0) -> bool:
        if self.answered:   # a warm worker's job that has ended (the process lives on)
            return True
        if self.warm is not None:
            self.answered = self.warm.answered(timeout)
            return self.answered
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def running(self) -> bool:
        return not self._finished()

    def kill(self) -> None:
        """Stop the job if it is still running (a no-op once it has finished)."""
        if self.answered:
            return
        if self.warm is not None:
            self._release(reusable=False)
            return
        _kill_group(self.proc)

    def _release(self, reusable: bool) -> None:
        if self.warm is not None:
            if self.watch is not None:
                self.watch.done.set()
            limit = self.watch.limit if self.watch is not None else None
            if limit and tree_rss(self.proc.pid) > limit / 2:
                reusable = False
            WARM.give_back(self.key, self.warm, reusable)
            self.warm = None
            self.answered = True

    def wait(self, timeout: float, progress: bool = True) -> int:
        """Wait for the job to end; its exit status (0 for a warm worker's answered job, whose
        process lives on). Raises WorkerFailed on timeout, after stopping it."""
        try:
            if progress:
                _wait_showing_progress(self._finished, self.log_path, timeout,
                                       self.spec.framework)
            elif not self._finished(timeout):
                raise subprocess.TimeoutExpired(self.spec.framework, timeout)
            status = self.proc.poll()
            return 0 if status is None else status
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkerFailed("timeout", f"{self.spec.framework} worker did not finish "
                                          f"within {timeout:.0f} s (log: {self.log_path})"
                               ) from None
        except BaseException:
            self.kill()
            raise

    def result(self) -> dict:
        """The worker's result.json (after the job ended); raises WorkerFailed for reported
        errors and for a crash without a result."""
        if self.watch is not None:
            self.watch.done.set()
        result_path = self.workdir / RESULT_FILE
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        self._release(reusable=bool(result and result.get("ok")))
        if self.watch is not None and self.watch.exceeded:
            raise WorkerFailed(
                "resource_limit",
                f"{self.spec.framework} worker ({self.task}) exceeded its memory limit of "
                f"{_gib(self.watch.limit)} (held {_gib(self.watch.peak)}) and was stopped; "
                f"raise it with --worker-memory (log: {self.log_path})",
                {"memory_limit_bytes": self.watch.limit, "peak_bytes": self.watch.peak,
                 "task": self.task})
        if result is None:
            raise WorkerFailed(
                "worker_crashed",
                f"{self.spec.framework} worker exited with status {self.proc.returncode} "
                f"without a result (log: {self.log_path}). Last lines:\n"
                f"{_tail(self.log_path)}",
                {"exit_status": self.proc.returncode})
        if not result.get("ok"):
            err = result.get("error", {})
            raise WorkerFailed(err.get("kind", "unknown"), err.get("message", "worker failed"),
                               err.get("details"))
        return result


def run_worker(spec: SourceSpec, job: Job | dict, workdir: Path, timeout: float = 1800,
               memory_limit: int | None = None) -> dict:
    """Write job.json, run the worker to its end, return its result (raises WorkerFailed)."""
    worker = Worker(spec, job, workdir, memory_limit)
    worker.wait(timeout)
    return worker.result()
