"""Start a framework worker in its own environment and collect its result (orchestrator side).

One process per job: the worker imports its framework, the orchestrator never does.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from converters.data_loader import DEFAULT_MAX_PIXELS
from converters.protocol import JOB_FILE, PROTOCOL_VERSION, RESULT_FILE
from converters.registry import REPO_ROOT, SourceSpec, env_python


class WorkerFailed(Exception):
    """The worker reported an error or died. `kind` and `details` go into the report."""

    def __init__(self, kind: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.kind, self.message, self.details = kind, message, details or {}


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_showing_progress(proc: subprocess.Popen, log_path: Path, timeout: float,
                           label: str) -> int:
    """Wait for the worker; on a terminal show elapsed time and its latest log line."""
    deadline = time.monotonic() + timeout
    with tqdm(total=None, desc=f"  {label}", bar_format="{desc}: {elapsed}{postfix}",
              disable=None, leave=False) as bar:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise
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


_PAGE = os.sysconf("SC_PAGE_SIZE")


def machine_memory() -> int:
    """Physical memory of this machine, in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * _PAGE


def default_worker_memory(parallel: int = 1) -> int:
    """A worker's memory limit when --worker-memory is not given: 80 % of this machine's
    memory shared by the workers it runs at once (1 with the local executor; with Ray,
    the node's cores / CPUs per task). Computed where the worker runs."""
    return int(machine_memory() * 0.8 / max(1, parallel))


@dataclass(frozen=True)
class WorkerLimits:
    """What bounds a framework worker, as the driver was told (--worker-memory,
    --max-image-pixels); resolved on the node that starts the worker."""
    memory: int | None = None          # bytes; None: default_worker_memory on that node
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    parallel_per_core: int | None = None   # Ray: CPUs per task (node cores / this = workers)

    def memory_limit(self) -> int:
        if self.memory:
            return self.memory
        if self.parallel_per_core:
            return default_worker_memory((os.cpu_count() or 1) // self.parallel_per_core)
        return default_worker_memory(1)


def _tree(pid: int) -> list[int]:
    """pid and its descendants (/proc/PID/task/TID/children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    todo += [int(c) for c in handle.read().split()]
        except OSError:
            continue
    return pids


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes (0 once it is gone)."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/statm") as handle:
                total += int(handle.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class _MemoryWatch(threading.Thread):
    """Polls the worker's resident memory (itself and its children) every 50 ms and kills
    its process group the moment it exceeds the limit. A poll, not a kernel limit: the
    frameworks reserve far more address space than they use, so RLIMIT_AS would refuse
    them, and cgroups need privileges a node may not grant (docs/usage.md, "Limits")."""

    def __init__(self, worker: "Worker", limit: int, interval: float = 0.05):
        super().__init__(daemon=True, name="worker-memory-watch")
        self.worker, self.limit, self.interval = worker, limit, interval
        self.peak, self.exceeded = 0, False
        self.done = threading.Event()

    def run(self) -> None:
        pid = self.worker.proc.pid
        while not self.done.wait(self.interval) and self.worker.proc.poll() is None:
            rss = tree_rss(pid)
            self.peak = max(self.peak, rss)
            if rss > self.limit:
                self.exceeded = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                return


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class Worker:
    """A started worker process: poll it, wait for it, read its result, stop it.

    With `memory_limit` (bytes) the worker is killed when it and its children hold more
    resident memory than that, and result() raises WorkerFailed of kind `resource_limit`."""

    def __init__(self, spec: SourceSpec, job: dict, workdir: Path,
                 memory_limit: int | None = None):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / JOB_FILE).write_text(json.dumps({"protocol": PROTOCOL_VERSION, **job},
                                                   indent=2, default=str))
        self.spec, self.workdir = spec, workdir
        self.log_path = workdir / "worker.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [str(env_python(spec)), "-m", spec.worker, str(workdir / JOB_FILE)]
        with open(self.log_path, "wb") as log:
            # Own process group, so a timeout or Ctrl-C ends the worker and its children only.
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)  # noqa: PLW1509
        self.task = job.get("task", "convert")
        self.watch = None
        if memory_limit:
            self.watch = _MemoryWatch(self, memory_limit)
            self.watch.start()

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float, progress: bool = True) -> int:
        """Wait for exit (raises WorkerFailed on timeout, after killing the worker)."""
        try:
            if progress:
                return _wait_showing_progress(self.proc, self.log_path, timeout,
                                              self.spec.framework)
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise WorkerFailed("timeout", f"{self.spec.framework} worker did not finish "
                                          f"within {timeout:.0f} s (log: {self.log_path})"
                               ) from None
        except BaseException:
            self.kill()
            raise

    def result(self) -> dict:
        """The worker's result.json (after exit); raises WorkerFailed for reported errors and
        for a crash without a result."""
        if self.watch is not None:
            self.watch.done.set()
            if self.watch.exceeded:
                raise WorkerFailed(
                    "resource_limit",
                    f"{self.spec.framework} worker ({self.task}) exceeded its memory limit of "
                    f"{_gib(self.watch.limit)} (held {_gib(self.watch.peak)}) and was stopped; "
                    f"raise it with --worker-memory (log: {self.log_path})",
                    {"memory_limit_bytes": self.watch.limit, "peak_bytes": self.watch.peak,
                     "task": self.task})
        result_path = self.workdir / RESULT_FILE
        if not result_path.exists():
            raise WorkerFailed(
                "worker_crashed",
                f"{self.spec.framework} worker exited with status {self.proc.returncode} "
                f"without a result (log: {self.log_path}). Last lines:\n"
                f"{_tail(self.log_path)}",
                {"exit_status": self.proc.returncode})
        result = json.loads(result_path.read_text())
        if not result.get("ok"):
            err = result.get("error", {})
            raise WorkerFailed(err.get("kind", "unknown"), err.get("message", "worker failed"),
                               err.get("details"))
        return result


def run_worker(spec: SourceSpec, job: dict, workdir: Path, timeout: float = 1800,
               memory_limit: int | None = None) -> dict:
    """Write job.json, run the worker to its end, return its result (raises WorkerFailed)."""
    worker = Worker(spec, job, workdir, memory_limit)
    worker.wait(timeout)
    return worker.result()
