"""The S3 store (release/store.py says what every store guarantees and how this one does it):
objects under s3://BUCKET/PREFIX through boto3, imported here only, so a folder store needs
no S3 client."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from manifests.bounded import limit, load_json
from release.store import INDEX_JSON, INDEX_MD, VERSION_RE, StoreError, _sha256, pause


MARKERS = ".published"
# Unmarked S3 objects older than this are a killed publisher's and are removed (seconds).
ORPHAN_AGE = 24 * 3600


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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
