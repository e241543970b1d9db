"""What bounds a framework worker (orchestrator side): its memory limit, measured on the
node that starts it, and the watch that kills it past that limit (docs/usage.md, "Limits").
converters/runner.py starts the workers."""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

from converters.data_loader import DEFAULT_MAX_PIXELS

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
    """Resident memory of a process and its descendants, in bytes (0 once it is gone).

    By hand on purpose, not psutil: the watch polls this every 50 ms for the worker's whole
    life, and psutil's `children(recursive=True)` reads /proc/*/stat of every process on the
    machine to find them, where the kernel's /proc/PID/task/TID/children lists them directly.
    Measured (2026-12-06, 75 processes on the machine, psutil 7.2.2): 0.14 ms per poll here,
    1.30 ms with psutil; the gap grows with a node's process count (docs/usage.md, "Limits")."""
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

    def __init__(self, worker, limit: int, interval: float = 0.05):
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
