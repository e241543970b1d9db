"""Stage 5: write OUT/NAME atomically.

Everything is written into a hidden staging directory beside the final one, flushed to disk,
and renamed into place only when complete: a reader of OUT/NAME sees the previous artifact,
or nothing, or the new one, never a half-written one. A failed entry gets a directory with
report.json only (no model.onnx), which replaces any earlier artifact of that name so a stale
model is never mistaken for this run's.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

STAGING_MARK = ".staging-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        # Signal 0 only asks whether the pid exists; a mutated number would signal a live
        # process (the test's own), so mutation testing leaves this line alone.
        os.kill(pid, 0)  # pragma: no mutate
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(out_dir: Path, name: str) -> None:
    """Remove staging directories left by runs of `name` that were killed."""
    for path in out_dir.glob(f".{name}{STAGING_MARK}*"):
        pid = path.name.rsplit("-", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def write_artifact(out_dir: Path, name: str, report: dict,
                   files: dict[str, Path] | None = None, documents: dict[str, dict] | None = None,
                   finalize: Callable[[Path], None] | None = None, move: bool = False) -> Path:
    """Create OUT/NAME holding `files` (artifact name -> source path), `documents` (name ->
    JSON) and report.json. `finalize(staging_dir)` runs on the complete directory just before
    it becomes visible (signing); if it raises, nothing becomes visible. `move`: the files
    are the caller's scratch, moved in (renamed where OUT is on the same file system), not
    copied."""
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(out_dir, name)
    staging = out_dir / f".{name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for target, source in (files or {}).items():
            if move:
                shutil.move(source, staging / target)
            else:
                shutil.copyfile(source, staging / target)
        for target, document in {**(documents or {}), "report.json": report}.items():
            (staging / target).write_text(
                json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
        if finalize is not None:
            finalize(staging)
        for child in staging.iterdir():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(staging)
        final = out_dir / name
        retired = None
        if final.exists():
            retired = out_dir / f".{name}.retired-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            final.rename(retired)
        staging.rename(final)
        _fsync_dir(out_dir)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
