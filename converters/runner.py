"""Start a framework worker in its own environment and collect its result (orchestrator side).

One process per job: the worker imports its framework, the orchestrator never does.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tqdm import tqdm

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


class Worker:
    """A started worker process: poll it, wait for it, read its result, stop it."""

    def __init__(self, spec: SourceSpec, job: dict, workdir: Path):
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


def run_worker(spec: SourceSpec, job: dict, workdir: Path, timeout: float = 1800) -> dict:
    """Write job.json, run the worker to its end, return its result (raises WorkerFailed)."""
    worker = Worker(spec, job, workdir)
    worker.wait(timeout)
    return worker.result()
