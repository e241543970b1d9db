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
  overwrites them, and a publisher removes unmarked files older than ORPHAN_AGE.
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
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from manifests.bounded import limit, load_json, read_json

INDEX_JSON, INDEX_MD = "index.json", "index.md"
# A version name: report creation time + 12 hex of the signature's sha256 (release.publish).
VERSION_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}$")
MARKERS = ".published"
# Unmarked S3 objects older than this are a killed publisher's and are removed (seconds).
ORPHAN_AGE = 24 * 3600
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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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


# S3 error codes, as AWS, MinIO and moto return them, and what the user should do about each.
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"}
_NO_BUCKET = {"NoSuchBucket", "404"}
_INDEX_RETRIES = 50


class S3Store:
    """Objects under s3://BUCKET/PREFIX, through boto3 (imported here only: a folder store
    needs no S3 client)."""

    def __init__(self, bucket: str, prefix: str):
        self.bucket, self.prefix = bucket, prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._client = None

    # -- plumbing ------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            self._client = session.client(
                "s3", region_name=session.region_name or "us-east-1",
                # Standard retries (3 attempts unless AWS_MAX_ATTEMPTS says otherwise).
                config=Config(retries={"mode": "standard"}, connect_timeout=10,
                              read_timeout=120))
        return self._client

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def where(self, *parts: str) -> str:
        return "/".join((self.url, *parts))

    def _fail(self, exc, doing: str) -> StoreError:
        """One clear StoreError for whatever boto3 raised while DOING."""
        from botocore import exceptions as bx

        if isinstance(exc, bx.NoCredentialsError):
            return StoreError(f"store {self.url}: no S3 credentials while {doing}: set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError,
                            bx.ReadTimeoutError, bx.ConnectionClosedError)):
            return StoreError(f"store {self.url}: cannot reach the S3 endpoint "
                              f"{self.endpoint} while {doing} ({exc}); check AWS_ENDPOINT_URL "
                              "and the network")
        if isinstance(exc, bx.ClientError):
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _CREDENTIALS:
                return StoreError(
                    f"store {self.url}: the S3 endpoint {self.endpoint} refused the "
                    f"credentials while {doing} ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY and that they may read and write this bucket")
            if code in _NO_BUCKET:
                return StoreError(f"store {self.url}: bucket {self.bucket!r} does not exist at "
                                  f"{self.endpoint} ({code}); create it first "
                                  f"(aws s3 mb s3://{self.bucket})")
            return StoreError(f"store {self.url}: {doing} failed: {code}: "
                              f"{exc.response.get('Error', {}).get('Message', exc)}")
        if isinstance(exc, bx.BotoCoreError):
            return StoreError(f"store {self.url}: {doing} failed: {exc}")
        raise exc

    def _call(self, doing: str, method: str, **kwargs):
        from botocore import exceptions as bx
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kwargs)
        except (bx.ClientError, bx.BotoCoreError) as exc:
            raise self._fail(exc, doing) from exc

    @staticmethod
    def _code(exc) -> str:
        from botocore import exceptions as bx
        if isinstance(exc, bx.ClientError):
            return str(exc.response.get("Error", {}).get("Code"))
        return ""

    def _list(self, prefix: str):
        """(key relative to the store, LastModified) of every object under PREFIX."""
        paginator = self.client.get_paginator("list_objects_v2")
        base = self.key("")
        base = base + "/" if base else ""
        from botocore import exceptions as bx
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][len(base):], item["LastModified"]
        except (bx.ClientError, bx.BotoCoreError) as exc:
            raise self._fail(exc, f"listing {self.where(prefix)}") from exc

    def _get(self, *parts: str) -> tuple[bytes, str] | None:
        from botocore import exceptions as bx
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self.key(*parts))
            return reply["Body"].read(), reply["ETag"]
        except bx.ClientError as exc:
            if self._code(exc) == "NoSuchKey":
                return None
            raise self._fail(exc, f"reading {self.where(*parts)}") from exc
        except bx.BotoCoreError as exc:
            raise self._fail(exc, f"reading {self.where(*parts)}") from exc

    def _put(self, data: bytes, *parts: str, **conditions) -> str | None:
        """PUT; the new ETag, or None when a condition (If-Match / If-None-Match) failed."""
        from botocore import exceptions as bx
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key(*parts), Body=data,
                                          **conditions)["ETag"]
        except bx.ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise self._fail(exc, f"writing {self.where(*parts)}") from exc
        except bx.BotoCoreError as exc:
            raise self._fail(exc, f"writing {self.where(*parts)}") from exc

    def _delete(self, *parts: str) -> None:
        self._call(f"deleting {self.where(*parts)}", "delete_object", Key=self.key(*parts))

    # -- the store interface ---------------------------------------------------------------
    def check(self, writable: bool = False) -> None:
        """The bucket exists and these credentials may list it (one request)."""
        self._call(f"opening the bucket {self.bucket!r}", "list_objects_v2",
                   Prefix=self.key(""), MaxKeys=1)

    def _probe_conditional_writes(self) -> None:
        """A server that ignores If-None-Match would let two publishers overwrite each other's
        index; refuse it instead of trusting it."""
        probe = f".probe-{uuid.uuid4().hex}"
        try:
            self._put(b"1", probe)
            honoured = self._put(b"2", probe, IfNoneMatch="*") is None
        finally:
            self._delete(probe)
        if not honoured:
            raise StoreError(f"store {self.url}: the S3 server at {self.endpoint} ignores "
                             "conditional writes (If-None-Match), so concurrent publishers "
                             "could overwrite each other's index; use a server that supports "
                             "them (AWS S3, MinIO, moto)")

    @contextmanager
    def session(self, say=print):
        """Checks the bucket and the server's conditional writes; removes what killed
        publishers left (unmarked files older than ORPHAN_AGE)."""
        self.check(writable=True)
        self._probe_conditional_writes()
        marked = {(n, v) for n, vs in self.versions().items() for v in vs}
        cutoff = _now() - dt.timedelta(seconds=ORPHAN_AGE)
        for rel, modified in list(self._list("")):
            parts = rel.split("/")
            if (len(parts) == 3 and not parts[0].startswith(".")
                    and VERSION_RE.match(parts[1]) and (parts[0], parts[1]) not in marked
                    and modified < cutoff):
                self._delete(rel)
                say(f"  clean     {rel} (left by a publisher that did not finish)")
        yield

    def refuses(self, name: str) -> str | None:
        return None

    def versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rel, _ in self._list(MARKERS + "/"):
            parts = rel.split("/")
            if len(parts) == 3 and parts[2].endswith(".json"):
                version = parts[2][:-len(".json")]
                if VERSION_RE.match(version):
                    out.setdefault(parts[1], []).append(version)
        return {name: sorted(found) for name, found in sorted(out.items())}

    def _marker(self, name: str, version: str) -> dict | None:
        got = self._get(MARKERS, name, f"{version}.json")
        return json.loads(got[0]) if got else None

    def has(self, name: str, version: str) -> bool:
        return self._marker(name, version) is not None

    def read(self, name: str, version: str, file: str) -> bytes:
        got = self._get(name, version, file)
        if got is None:
            raise StoreError(f"store {self.url}: {name}/{version}/{file} is missing")
        return got[0]

    def read_json(self, name: str, version: str, file: str):
        """A JSON document of a version, within manifests.bounded's limits."""
        data = self.read(name, version, file)
        if len(data) > limit("MODEL_CONVERT_MAX_DOCUMENT_BYTES"):
            raise StoreError(f"{self.where(name, version, file)} is {len(data)} bytes, over "
                             "MODEL_CONVERT_MAX_DOCUMENT_BYTES")
        return load_json(data.decode("utf-8"), self.where(name, version, file))

    def published_at(self, name: str, version: str) -> dt.datetime:
        marker = self._marker(name, version) or {}
        return dt.datetime.fromisoformat(marker.get("published", "1970-01-01T00:00:00+00:00"))

    def put(self, name: str, version: str, artifact: Path, files: list[str]) -> None:
        from botocore import exceptions as bx
        digests = {}
        for file_name in files:
            digests[file_name] = _sha256(artifact / file_name)
            try:   # multipart for large models, with boto3's own retries
                self.client.upload_file(str(artifact / file_name), self.bucket,
                                        self.key(name, version, file_name))
            except (bx.ClientError, bx.BotoCoreError) as exc:
                raise self._fail(exc, f"uploading {self.where(name, version, file_name)}") \
                    from exc
            except Exception as exc:   # s3transfer wraps failures in its own types
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, (bx.ClientError, bx.BotoCoreError)):
                    raise self._fail(cause, f"uploading "
                                     f"{self.where(name, version, file_name)}") from exc
                raise
            pause()
        marker = json.dumps({"published": _now().isoformat(timespec="seconds"),
                             "files": digests}, indent=1).encode()
        # Written last, and only once: a concurrent publisher of the same version (same
        # signed files, so the same bytes) may have written it first.
        self._put(marker, MARKERS, name, f"{version}.json", IfNoneMatch="*")

    def retire(self, name: str, version: str) -> None:
        marker = self._marker(name, version) or {}
        self._delete(MARKERS, name, f"{version}.json")   # invisible at once
        for file_name in marker.get("files", {}):
            self._delete(name, version, file_name)

    def read_index(self) -> str | None:
        got = self._get(INDEX_JSON)
        return got[0].decode("utf-8") if got else None

    def write_index(self, build, render, say=print) -> list[dict]:
        """Compare-and-swap of index.json: read its ETag, list and build, write on that ETag;
        if another publisher wrote in between, build again from a fresh listing. index.md
        is then render(rows) of the index.json current after it is written."""
        for attempt in range(_INDEX_RETRIES):
            current = self._get(INDEX_JSON)
            rows, index_json = build()
            condition = {"IfMatch": current[1]} if current else {"IfNoneMatch": "*"}
            etag = self._put(index_json.encode(), INDEX_JSON, **condition)
            if etag is not None:
                break
            say("  index     another publisher wrote the index meanwhile; listing again")
            time.sleep(0.05 * (attempt + 1))
        else:
            raise StoreError(f"store {self.url}: index.json changed under every one of "
                             f"{_INDEX_RETRIES} attempts; nothing is lost, publish again")
        while True:
            data, tag = self._get(INDEX_JSON) or (b'{"artifacts": []}', None)
            self._put(render(json.loads(data)["artifacts"]).encode(), INDEX_MD)
            latest = self._get(INDEX_JSON)
            if latest is None or latest[1] == tag:
                return rows

    def download(self, name: str, version: str, dest: Path) -> Path:
        marker = self._marker(name, version)
        if marker is None:
            raise StoreError(f"store {self.url} has no version {name}/{version}")
        dest.mkdir(parents=True, exist_ok=True)
        for file_name, digest in marker["files"].items():
            if "/" in file_name or file_name.startswith("."):
                raise StoreError(f"store {self.url}: {name}/{version} lists a file name "
                                 f"{file_name!r} that is not a plain name")
            data = self.read(name, version, file_name)
            if hashlib.sha256(data).hexdigest() != digest:
                raise StoreError(f"store {self.url}: {name}/{version}/{file_name} does not "
                                 "have the sha256 its publisher recorded")
            (dest / file_name).write_bytes(data)
        return dest


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
