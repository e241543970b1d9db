"""Make many checkpoints of one source in one framework process (converters/checkpoint_batch.py
runs them there), each model still under its own time limit: a model that runs past it, or
takes the process down (a crash, the kernel's OOM killer), is reported as that model's
failure, and the models after it go on in a new process. Orchestrator side: no framework
import. Used by scripts/zoo_sweep.py."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Made:
    """One checkpoint's outcome: status "done" (path written), "cannot_build" (the source's
    own code cannot build or run the model here), "error" or "timeout"."""
    status: str
    seconds: float
    message: str = ""


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # its own session: the maker and its children
    except ProcessLookupError:
        pass
    proc.wait()


def _pump(stream, lines: queue.Queue) -> None:
    """Every line of STREAM into LINES, then None (the process closed it)."""
    for line in stream:
        lines.put(line)
    lines.put(None)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def make_checkpoints(python: Path, module: str, jobs: dict[str, tuple[list[str], Path]],
                     timeout: float, on_result=None) -> dict[str, Made]:
    """jobs: key -> (the maker's argv, the file it writes). Returns key -> Made, calling
    on_result(key, made) as each one ends."""
    results: dict[str, Made] = {}

    def record(key: str, made: Made) -> None:
        if made.status == "done" and not jobs[key][1].is_file():
            made = Made("error", made.seconds, f"the maker wrote no {jobs[key][1].name}")
        results[key] = made
        if on_result:
            on_result(key, made)

    pending = list(jobs)
    while pending:
        with tempfile.TemporaryDirectory(prefix="checkpoint-jobs-") as tmp:
            jobs_file, log = Path(tmp) / "jobs.json", Path(tmp) / "stderr.log"
            jobs_file.write_text(json.dumps([jobs[key][0] for key in pending]))
            with log.open("w") as sink:
                proc = subprocess.Popen(
                    [str(python), "-m", "converters.checkpoint_batch", module, str(jobs_file)],
                    cwd=REPO, stdout=subprocess.PIPE, stderr=sink, text=True,
                    start_new_session=True)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
            current, started, stalled = None, time.monotonic(), ""
            try:
                while True:
                    try:
                        line = lines.get(timeout=max(0.0, started + timeout - time.monotonic()))
                    except queue.Empty:   # the current job (or the imports) ran past the limit
                        _kill(proc)
                        if current is not None:
                            record(current, Made("timeout", timeout,
                                                 f"still running after {timeout:g} s"))
                            current = None
                        else:
                            stalled = f"no job started within {timeout:g} s; "
                        break
                    if line is None:
                        break
                    event = json.loads(line)
                    key = pending[event["job"]]
                    if event["event"] == "start":
                        current, started = key, time.monotonic()
                        continue
                    record(key, Made(event["event"], time.monotonic() - started,
                                     event.get("message", "")))
                    current = None
            finally:
                if proc.poll() is None:
                    _kill(proc)
            status = proc.wait()
            if current is not None:   # the process ended inside a job: that job's failure
                record(current, Made("error", time.monotonic() - started,
                                     f"the maker's process ended with status {status}"
                                     f"{' (killed: out of memory?)' if status == -9 else ''}: "
                                     f"{_last_line(log)}"))
            left = [key for key in pending if key not in results]
            if len(left) == len(pending):   # no job even started: every one fails the same way
                for key in left:
                    record(key, Made("error", 0.0, f"{stalled}the maker's process ended with "
                                                   f"status {status} before any job: "
                                                   f"{_last_line(log)}"))
                left = []
            pending = left
    return results
