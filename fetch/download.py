"""Stage 1: put a checkpoint in the cache and prove it is the file the manifest pins.

- A cached file whose digest matches is used with no network access at all.
- Downloads go to `<name>.part` and resume with an HTTP Range request after a cut
  connection; transient failures (connection errors, 5xx, 408, 429) are retried with
  exponential backoff; other HTTP errors fail at once with the status.
- The digest (sha256, or the published sha256 prefix) is checked before the file is moved to
  its final name, so a file in the cache under its final name has always passed its check.
- Air-gapped sites: `mirror` (--mirror / MODEL_CONVERT_MIRROR) replaces the publisher's host:
  the same file name is fetched from MIRROR/<name>, and its digest is checked all the same.
"""
from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from converters.protocol import PipelineError

CHUNK = 1 << 20
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
    "model-convert" / "checkpoints"


class FetchError(PipelineError):
    """The checkpoint could not be fetched or failed its digest."""


@dataclass
class Fetched:
    path: Path
    sha256: str
    pinned: bool          # the file is the one the manifest's digest names
    # "sha256", "sha256 (checkpoint lock)", "sha256_prefix (prefix only, 32 bits)",
    # "unpublished" or "local file"
    digest_check: str
    downloaded: bool
    url: str | None
    bytes: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_matches(sha: str, spec: dict) -> bool | None:
    """True/False against the manifest's digest; None when no digest is published."""
    if "sha256" in spec:
        return sha == spec["sha256"]
    if "sha256_prefix" in spec:
        return sha.startswith(spec["sha256_prefix"])
    return None


def _expected(spec: dict) -> str:
    if spec.get("locked"):
        return f"sha256 {spec['sha256']} (the checkpoint lock)"
    if "sha256" in spec:
        return f"sha256 {spec['sha256']}"
    return f"sha256 starting {spec['sha256_prefix']}"


def _check_kind(spec: dict) -> str:
    if spec.get("locked"):
        return "sha256 (checkpoint lock)"
    if "sha256_prefix" in spec and "sha256" not in spec:
        return "sha256_prefix (prefix only, 32 bits)"
    return next((k for k in ("sha256",) if k in spec), "unpublished")


def cache_path(url: str, cache_dir: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    return cache_dir / name


def mirrored(url: str, mirror: str | None) -> str:
    """The URL to fetch: MIRROR/<file name of url> when a mirror is set, else url."""
    if not mirror:
        return url
    name = Path(urllib.parse.urlparse(url).path).name
    return mirror.rstrip("/") + "/" + urllib.parse.quote(name)


def local_checkpoint(path: Path, spec: dict) -> Fetched:
    """A user-given file: record its sha256 and whether it happens to be the pinned one."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FetchError("checkpoint_missing", f"checkpoint file not found: {path}")
    sha = sha256_file(path)
    return Fetched(path.resolve(), sha, bool(digest_matches(sha, spec)), "local file",
                   False, None, path.stat().st_size)


def fetch(spec: dict, cache_dir: Path, *, attempts: int = 5, backoff: float = 1.0,
          timeout: float = 60.0, progress: bool | None = None,
          mirror: str | None = None) -> Fetched:
    """Return the cached checkpoint for manifest `checkpoint` block `spec` (from `mirror`
    instead of the publisher's host when given)."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    url = mirrored(spec["url"], mirror)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_path(url, cache_dir)
    if final.is_file():
        sha = sha256_file(final)
        if digest_matches(sha, spec) in (True, None):
            return Fetched(final, sha, digest_matches(sha, spec) is True, _check_kind(spec),
                           False, url, final.stat().st_size)
        # A cached file that fails its check is set aside, never used.
        final.replace(final.with_name(final.name + ".bad-digest"))

    part = final.with_name(final.name + ".part")
    try:
        _download(url, part, attempts=attempts, backoff=backoff, timeout=timeout,
                  progress=progress)
    except FetchError as exc:
        exc.message += (f". Offline? Put the file at {final} (its digest is checked), "
                        "pass --checkpoint NAME=PATH, or serve it from an internal mirror "
                        "(--mirror URL).")
        exc.args = (exc.message,)
        raise
    sha = sha256_file(part)
    if digest_matches(sha, spec) is False:
        rejected = final.with_name(final.name + ".bad-digest")
        part.replace(rejected)
        raise FetchError("digest_mismatch",
                         f"downloaded {url} but its sha256 is {sha}, the "
                         f"{'lock' if spec.get('locked') else 'manifest'} pins "
                         f"{_expected(spec)}; the file was set aside as {rejected} and not used")
    part.replace(final)
    return Fetched(final, sha, digest_matches(sha, spec) is True, _check_kind(spec), True,
                   url, final.stat().st_size)


def _transient(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    return isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, OSError))


def _download(url: str, part: Path, *, attempts: int, backoff: float, timeout: float,
              progress: bool | None) -> None:
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, part, timeout, progress)
            return
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified just below
            last = exc
            if not _transient(exc) or attempt == attempts:
                break
            time.sleep(min(backoff * 2 ** (attempt - 1), 30.0))
    if isinstance(last, urllib.error.HTTPError):
        raise FetchError("download", f"GET {url} failed: HTTP {last.code} {last.reason}")
    raise FetchError("download", f"GET {url} failed after {attempts} attempts: "
                                 f"{type(last).__name__}: {last} (partial data kept in "
                                 f"{part} for the next run to resume)")


def _download_once(url: str, part: Path, timeout: float, progress: bool | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "model-convert/1"})
    if have and urllib.parse.urlparse(url).scheme in ("http", "https"):
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s)/file
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # we already hold the whole file
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            have = 0  # server ignored the Range header: start again
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=Path(part.name).stem[:40], disable=None if progress is None else
                not progress, leave=False) as bar:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                out.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got} of {total} bytes")


def materialize(path: Path, sha256: str, data: bytes | None, cache_dir: Path) -> Path:
    """A driver-side file (a --checkpoint) on this machine: `path` itself when it is here with
    that sha256, else `data` (its bytes, shipped by the executor) written into the cache under
    its digest and checked. Lets a cluster node use a file only the driver has."""
    path = Path(path)
    if path.is_file() and sha256_file(path) == sha256:
        return path
    if data is None:
        raise FetchError("checkpoint_missing", f"checkpoint file not found: {path}")
    target = cache_dir / "by-sha256" / f"{sha256[:16]}-{path.name}"
    if target.is_file() and sha256_file(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    if sha256_file(tmp) != sha256:
        tmp.unlink()
        raise FetchError("digest_mismatch", f"{path.name}: the bytes shipped to this node do "
                                            f"not have sha256 {sha256}")
    tmp.replace(target)
    return target
