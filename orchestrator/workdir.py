"""Work directories: one per run (or per cluster task), swept when their owner is gone.

Every run keeps its scratch files (worker job/result files, exported ONNX, shards) under
`WORK_ROOT/run-<id>/`, where WORK_ROOT is `$MODEL_CONVERT_WORK` or `<tmp>/model-convert-work`.
The owner holds an exclusive flock on `run-<id>/.lock` for as long as it lives; the kernel
drops the lock when the owner dies, however it dies (SIGKILL included). Whoever starts next on
that machine (a run, or a cluster task) removes every run directory whose lock it can take.
A lock, unlike a pid, is not fooled by pid reuse and needs no knowledge of other machines.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK = ".lock"


def work_root() -> Path:
    root = os.environ.get("MODEL_CONVERT_WORK")
    return Path(root) if root else Path(tempfile.gettempdir()) / "model-convert-work"


def sweep_stale(root: Path | None = None) -> list[Path]:
    """Remove run directories whose owner is gone; returns what was removed."""
    root = root or work_root()
    removed = []
    if not root.is_dir():
        return removed
    for path in root.glob("run-*"):
        try:
            handle = open(path / LOCK, "r")  # noqa: SIM115 - closed just below
        except (FileNotFoundError, NotADirectoryError):
            continue  # no lock file: kept with --keep-work, or being removed
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def run_dir(label: str = "run", keep: bool = False) -> Iterator[Path]:
    """A fresh locked directory under work_root(), removed on exit unless `keep`.

    Stale directories of dead owners are swept first, so a killed run's files last only
    until the next start on the same machine.
    """
    root = work_root()
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root)
    name = f"run-{label}-{uuid.uuid4().hex[:12]}"
    # Made under a name the sweep ignores and renamed once locked: a sweeper never sees an
    # unlocked run directory of a live owner.
    creating = root / f".creating-{name}"
    creating.mkdir()
    path = root / name
    with open(creating / LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        creating.rename(path)
        try:
            yield path
        finally:
            if keep:  # no lock file: the sweep leaves it for the user
                (path / LOCK).unlink(missing_ok=True)
            else:
                shutil.rmtree(path, ignore_errors=True)


def hand_over(path: Path, handoff: Path | None) -> bytes | Path:
    """A file an entry task made, for the driver: moved into `handoff` (same name) when the
    driver gave one, else its bytes."""
    if handoff is None:
        return path.read_bytes()
    handoff.mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(path, handoff / path.name))


def placed(data: bytes | Path, target: Path) -> Path:
    """A handed-over file (hand_over) at a path on the driver: where it lies already, or its
    bytes written to `target`."""
    if isinstance(data, Path):
        return data
    target.write_bytes(data)
    return target
