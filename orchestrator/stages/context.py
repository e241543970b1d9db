"""What every stage of one entry works on: the run's options, the entry's context (its
report, timer, work directory and checkpoint) and what the entry task returns. A stage's
failure is a converters/protocol.py PipelineError, named for the stage it left (Timer.stage).
Imports no deep-learning framework."""
from __future__ import annotations

import datetime as dt
import functools
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from converters.protocol import Timer, in_stage
from converters.registry import REPO_ROOT
from converters.limits import WorkerLimits
from fetch.download import Fetched, fetch, local_checkpoint, materialize
from manifests.loader import Entry
from orchestrator.accuracy import Selection
from orchestrator.report import EntryReport
from verify.compare import Check


@dataclass
class RunOptions:
    out_dir: Path
    cache_dir: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    data: Selection | None = None     # --data (+ --limit): logit-check images and accuracy
    threads: int | None = None
    data_workers: int | None = None   # decode threads in the worker (default: all cores)
    keep_work: bool = False
    worker_timeout: float = 3600.0
    signing_key: Path | None = None   # EC private key (PEM); passed artifacts get model.sig
    signing_key_id: str | None = None
    precisions: tuple[str, ...] = ("fp32",)   # fp32 always; fp16 / int8 variants on request
    shard_size: int | None = None     # accuracy images per task (None: one shard per entry)
    mirror: str | None = None         # --mirror: checkpoints from an internal mirror
    skip_unchanged: str | None = None  # --skip-unchanged STORE: a folder or s3:// URL
    checkpoint_lock: dict = field(default_factory=dict)  # fetch/lock.py: name -> full digest
    require_lock: tuple | None = None   # --require-lock: (command that locks, lock file)
    limits: WorkerLimits = WorkerLimits()  # --worker-memory, --max-image-pixels
    localize: bool = False            # --localize: first diverging layer even when passing


@dataclass
class CheckpointRef:
    """Where a task finds the entry's checkpoint, on whichever node it runs: the manifest's
    URL (fetched, digest-checked, into that node's cache; from the mirror when set) or the
    driver's --checkpoint file (used in place when the node sees it with the same sha256,
    else written into the node's cache from the bytes the executor ships)."""
    spec: dict
    cache_dir: str
    local: str | None = None
    sha256: str | None = None
    mirror: str | None = None

    def resolve(self, blob: bytes | None) -> Fetched:
        with in_stage("fetch"):   # a shard's fetch too, outside any stage timer
            if self.local:
                path = materialize(Path(self.local), self.sha256, blob, Path(self.cache_dir))
                return local_checkpoint(path, self.spec)
            return fetch(self.spec, Path(self.cache_dir), mirror=self.mirror)


@dataclass
class EntryContext:
    """One entry's stages share this: the entry (its export settings may change for the
    fixed-batch retry: orchestrator/run.py), the run, and what the stages fill."""
    entry: Entry
    all_entries: list[Entry]
    opts: RunOptions
    report: EntryReport
    timer: Timer
    workdir: Path
    checkpoint: CheckpointRef
    blob: bytes | None
    say: Callable[[str], None]


@dataclass
class Prepared:
    """What an entry task returns: the report so far, its checks, its variants, and the
    files it made (bytes: they travel back from whichever node ran it; paths where the task
    ran in the driver's process: orchestrator/workdir.py hand_over)."""
    report: EntryReport
    checks: list[Check] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)
    files: dict[str, bytes | Path] = field(default_factory=dict)   # model.onnx, worker.log
    entry: dict | None = None      # the entry with its derived fields (orchestrator/derive.py)
    runnable: bool = False         # ONNX I/O fit for the accuracy gate
    seconds: float = 0.0

    @property
    def status(self) -> str | None:
        """Set when the task decided the entry already: "error" | "unsupported"."""
        return self.report.status


@dataclass
class EntryResult:
    name: str
    status: str            # passed | failed | error | unsupported | unavailable | unchanged
    decided_by: str        # the figure or cause that decided the status
    seconds: float
    runtimes: str = ""     # the runtime matrix in one line (orchestrator/runtimes.py)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit (+dirty), asked once per run."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 \
            else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def new_report(entry: Entry) -> EntryReport:
    return EntryReport(
        name=entry.name,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        run_id=uuid.uuid4().hex,   # provenance's invocationId
        pipeline={"git_commit": git_commit()},
        entry=entry.data,
        source={"framework": entry.source, "model_id": entry["model_id"]})


def fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
