"""Where published artifacts live: a folder, or an S3 bucket (AWS or any S3-compatible server).

    open_store("store")                      a folder (also file:///abs/path)
    open_store("s3://bucket/some/prefix")    objects under that prefix

Both keep the same layout and the same guarantees, each with its own means:

    NAME/<version>/<the artifact's signed files>
    index.json, index.md

What each store guarantees, and how:
- A version is visible only whole. Folder: copied to .staging-*, then renamed. S3: files
  uploaded first, then the marker `.published/NAME/<version>.json` (written last, with its
  files' sha256); a version without a marker does not exist for any reader.
- Publishers never corrupt the index. Folder: an exclusive flock on STORE/.lock. S3:
  index.json is replaced only by a conditional write (If-Match the ETag read before listing;
  If-None-Match: * when there is none); a lost race re-lists and retries.
- A killed publisher. Folder: the kernel drops the lock; stale staging is removed by the next
  publisher. S3: its files stay invisible (no marker); the next publish of that version
  overwrites them, and a publisher removes unmarked files older than ORPHAN_AGE
  (release/s3_store.py).
- Retention. Folder: rename out of sight, then delete. S3: the marker is deleted first
  (invisible at once), then the files.
- Published time. Folder: the version directory's mtime. S3: the marker's `published`.

Credentials, region and endpoint come from the standard AWS variables and files, as every S3
tool reads them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
AWS_REGION, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 for MinIO, Ceph, R2, moto ...). The server
must support conditional writes (AWS S3 since 2024-11, MinIO, moto); one that ignores them is
refused at the first publish by a probe, never trusted silently.

Every failure of the store itself is a StoreError whose message names the store, what failed
and what to do; nothing in the run's output folder is touched by a failed publish.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from manifests.bounded import read_json

if TYPE_CHECKING:
    from release.s3_store import S3Store

INDEX_JSON, INDEX_MD = "index.json", "index.md"
# A version name: report creation time + 12 hex of the signature's sha256 (release.publish).
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}$")
# Crash tests set this to widen the window between steps (seconds); never set in normal use.
_STEP_DELAY = float(os.environ.get("MODEL_CONVERT_PUBLISH_STEP_DELAY", "0") or 0)


class StoreError(Exception):
    """The store cannot be read or written; the message says which store, what and why."""


def pause() -> None:
    if _STEP_DELAY:
        time.sleep(_STEP_DELAY)


def is_url(text: str) -> bool:
    return "://" in str(text)


def open_store(location) -> "LocalStore | S3Store":
    """A store from a path, a file:// URL or an s3:// URL (an opened store is returned as
    it is); other schemes are refused."""
    from release.s3_store import S3Store

    if isinstance(location, (LocalStore, S3Store)):
        return location
    text = str(location)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError(f"store {text}: no bucket in the URL (s3://BUCKET[/PREFIX])")
        return S3Store(bucket, prefix.strip("/"))
    if text.startswith("file://"):
        path = text[len("file://"):]
        if not path.startswith("/"):
            raise StoreError(f"store {text}: a file:// URL takes an absolute path "
                             "(file:///abs/path); or give the path itself")
        return LocalStore(Path(path))
    if is_url(text):
        scheme = text.split("://", 1)[0]
        raise StoreError(f"store {text}: scheme {scheme}:// is not supported; a store is a "
                         "folder (PATH or file:///PATH) or s3://BUCKET[/PREFIX]")
    return LocalStore(Path(text))


def split_artifact_url(url: str) -> tuple[str, str, str | None]:
    """STORE/NAME[/VERSION] -> (STORE, NAME, VERSION or None for the newest)."""
    parts = url.rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and VERSION_RE.match(parts[2]):
        return parts[0], parts[1], parts[2]
    store, _, name = url.rstrip("/").rpartition("/")
    if not name or store.endswith(":/") or store.endswith(":"):
        raise StoreError(f"{url}: give STORE/NAME or STORE/NAME/VERSION")
    return store, name, None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalStore:
    """A folder on this machine (or a shared file system with working flock)."""

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def where(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def check(self, writable: bool = False) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store {self.url} is a file, not a folder")
        if writable:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"store {self.url}: cannot create it: {exc}") from exc

    @contextmanager
    def session(self, say=print):
        """Exclusive STORE/.lock (says so when it waits); stale staging of a killed publisher
        is removed while it is held."""
        self.check(writable=True)
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"waiting: another publisher holds {self.root / '.lock'}")
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                for stale in self.root.glob(".staging-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def refuses(self, name: str) -> str | None:
        if (self.root / name).is_symlink():
            return (f"{self.root / name} in the store is a symbolic link; not followed, "
                    "nothing published through it")
        return None

    @staticmethod
    def _real_dirs(folder: Path) -> list[Path]:
        """Visible subdirectories, symbolic links left out (never followed: a link could
        point anywhere outside the store)."""
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir()
                      if not p.name.startswith(".") and not p.is_symlink() and p.is_dir())

    def versions(self) -> dict[str, list[str]]:
        """NAME -> its complete versions, oldest first. Versions appear only by rename from
        staging, so every visible one is whole."""
        out = {}
        for model in self._real_dirs(self.root):
            found = [v.name for v in self._real_dirs(model)]
            if found:
                out[model.name] = found
        return out

    def has(self, name: str, version: str) -> bool:
        return (self.root / name / version).is_dir()

    def read(self, name: str, version: str, file: str) -> bytes:
        try:
            return (self.root / name / version / file).read_bytes()
        except OSError as exc:
            raise StoreError(f"store {self.url}: cannot read {name}/{version}/{file}: "
                             f"{exc}") from exc

    def read_json(self, name: str, version: str, file: str):
        """A JSON document of a version, within manifests.bounded's limits."""
        try:
            return read_json(self.root / name / version / file, self.where(name, version, file))
        except OSError as exc:
            raise StoreError(f"store {self.url}: cannot read {name}/{version}/{file}: "
                             f"{exc}") from exc

    def published_at(self, name: str, version: str) -> dt.datetime:
        return dt.datetime.fromtimestamp((self.root / name / version).stat().st_mtime,
                                         dt.timezone.utc)

    def put(self, name: str, version: str, artifact: Path, files: list[str]) -> None:
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        for file_name in files:
            shutil.copyfile(artifact / file_name, staging / file_name)
            pause()
        _fsync_tree(staging)
        final = self.root / name / version
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(final)

    def retire(self, name: str, version: str) -> None:
        trash = self.root / f".staging-trash-{uuid.uuid4().hex}"
        (self.root / name / version).rename(trash)  # invisible at once
        shutil.rmtree(trash, ignore_errors=True)     # or by the next publisher

    def read_index(self) -> str | None:
        path = self.root / INDEX_JSON
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def write_index(self, build, render, say=print) -> list[dict]:
        """build() -> (rows, index.json text); index.json and render(rows) as index.md, each
        replaced atomically. The caller holds session()'s lock, so nobody writes between
        build and write."""
        rows, index_json = build()
        _write_atomic(self.root / INDEX_JSON, index_json)
        _write_atomic(self.root / INDEX_MD, render(rows))
        return rows

    def download(self, name: str, version: str, dest: Path) -> Path:
        source = self.root / name / version
        if not source.is_dir() or (self.root / name).is_symlink() or source.is_symlink():
            raise StoreError(f"store {self.url} has no version {name}/{version}")
        dest.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if item.is_file() and not item.is_symlink():
                shutil.copyfile(item, dest / item.name)
        return dest


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fetch_artifact(url: str, dest: Path) -> tuple[Path, str]:
    """Download STORE/NAME[/VERSION] (newest version when none is given) into DEST/VERSION;
    (its folder, 'NAME/VERSION')."""
    store_url, name, version = split_artifact_url(url)
    store = open_store(store_url)
    store.check()
    if version is None:
        found = store.versions().get(name)
        if not found:
            raise StoreError(f"store {store.url} has no published version of {name!r}")
        version = found[-1]
    return store.download(name, version, dest / version), f"{name}/{version}"
