"""The checkpoint lock: the full sha256 and size of each entry's published checkpoint.

Publishers often give only the first 8 hex digits of a checkpoint's sha256 (in its file name):
32 bits, which a host or mirror serving a crafted file can match with about 4e9 trials. The
lock, `checkpoints.lock` beside the manifest, records the full digest and size the first time
the file is fetched (`pipeline.py lock-checkpoints`: trust on first use, reviewed in the commit
that adds the line). From then on every fetch checks the full digest; a file that matches the
prefix but not the lock is refused, naming both digests.

Format, one entry per line (`#` starts a comment), sorted by name:

    res2net50-w14-s8  6b3f...e1c2  102945671
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from manifests.bounded import DocumentTooLarge, read_bounded

LOCK_NAME = "checkpoints.lock"
_SHA = re.compile(r"^[0-9a-f]{64}$")
HEADER = ("# Full sha256 and size of each entry's published checkpoint, recorded by\n"
          "# `python pipeline.py lock-checkpoints` (trust on first use: review each new line).\n"
          "# Every fetch of a locked entry checks the full digest. fetch/lock.py\n")


class LockError(ValueError):
    """The lock file is malformed or disagrees with a file or the manifest."""


def lock_path_for(manifest: Path) -> Path:
    return Path(manifest).resolve().parent / LOCK_NAME


def read_lock(path: Path) -> dict[str, dict]:
    """{name: {"sha256", "bytes"}}; {} when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        text = read_bounded(path)
    except (DocumentTooLarge, UnicodeDecodeError) as exc:
        raise LockError(str(exc)) from None
    lock: dict[str, dict] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not _SHA.match(parts[1]) or not parts[2].isdigit():
            raise LockError(f"{path}, line {number}: expected 'NAME SHA256 BYTES' (64 lowercase "
                            f"hex digits, a size in bytes), got {raw.strip()!r}")
        if parts[0] in lock:
            raise LockError(f"{path}, line {number}: {parts[0]} is locked twice")
        lock[parts[0]] = {"sha256": parts[1], "bytes": int(parts[2])}
    return lock


def write_lock(path: Path, lock: dict[str, dict]) -> None:
    """Atomically, sorted by name."""
    width = max((len(name) for name in lock), default=0)
    body = "".join(f"{name:<{width}}  {line['sha256']}  {line['bytes']}\n"
                   for name, line in sorted(lock.items()))
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
    tmp.write_text(HEADER + body)
    tmp.replace(path)


def locked_spec(name: str, spec: dict, lock: dict[str, dict]) -> dict:
    """The manifest's checkpoint block with the lock's full digest when the entry is locked
    (fetch then checks all 256 bits). A lock line that contradicts the manifest's own digest
    is an error naming both."""
    line = lock.get(name)
    if line is None:
        return spec
    published = spec.get("sha256") or spec.get("sha256_prefix")
    if published and not line["sha256"].startswith(published):
        raise LockError(f"entry {name!r}: the checkpoint lock has sha256 {line['sha256']}, "
                        f"which does not match the manifest's {published}")
    return {**spec, "sha256": line["sha256"], "bytes": line["bytes"], "locked": True}


def prefix_only(spec: dict) -> bool:
    """Checked against 32 bits only: a published prefix and no lock line."""
    return "sha256_prefix" in spec and not spec.get("locked") and "sha256" not in spec
