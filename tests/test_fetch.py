"""Download code against a loopback HTTP server: resume, retries, digests, offline cache."""
from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import struct
import subprocess
import sys
import termios
import urllib.error
from pathlib import Path

import pytest

from conftest import REPO, child_env, random_bytes
from fetch.download import FetchError, Fetched, fetch, local_checkpoint

BODY = random_bytes(3 * (1 << 20) + 12345, seed=1)  # several read chunks
SHA = hashlib.sha256(BODY).hexdigest()


def _spec(server, **digest):
    server.files["/ck/model-abcd.pth"] = BODY
    return {"url": server.url("/ck/model-abcd.pth"), **(digest or {"sha256": SHA})}


def test_download_verifies_and_caches(http_server, tmp_path):
    got = fetch(_spec(http_server), tmp_path, backoff=0)
    assert got.downloaded and got.pinned and got.sha256 == SHA
    assert got.path == tmp_path / "model-abcd.pth" and got.path.read_bytes() == BODY
    assert not list(tmp_path.glob("*.part"))


def test_resumes_with_range_after_a_cut_connection(http_server, tmp_path):
    spec = _spec(http_server)
    http_server.cut_after = 1_000_000
    got = fetch(spec, tmp_path, backoff=0)
    assert got.path.read_bytes() == BODY
    ranges = [r["range"] for r in http_server.requests]
    assert ranges[0] is None
    assert ranges[1] == "bytes=1000000-", "second request must resume where the cut left off"


def test_resumes_over_https_too(https_server, tmp_path):
    """Checkpoints are published over https: the resume must not be an http-only path."""
    spec = _spec(https_server)
    assert spec["url"].startswith("https://127.0.0.1:")
    https_server.cut_after = 1_000_000
    got = fetch(spec, tmp_path, backoff=0)
    assert got.path.read_bytes() == BODY
    assert [r["range"] for r in https_server.requests] == [None, "bytes=1000000-"]


def test_server_ignoring_range_restarts_cleanly(http_server, tmp_path):
    spec = _spec(http_server)
    http_server.cut_after, http_server.honour_range = 500_000, False
    got = fetch(spec, tmp_path, backoff=0)
    assert got.path.read_bytes() == BODY  # not 500 kB of duplicated prefix


def test_retries_transient_errors_with_backoff(http_server, tmp_path):
    spec = _spec(http_server)
    http_server.fail_next = 2
    got = fetch(spec, tmp_path, backoff=0.01)
    assert got.pinned and len(http_server.requests) == 3


def test_backoff_doubles_between_attempts(http_server, tmp_path, monkeypatch):
    import fetch.download as download

    slept = []
    monkeypatch.setattr(download.time, "sleep", slept.append)   # record, do not wait
    http_server.fail_next = 3
    fetch(_spec(http_server), tmp_path, attempts=5, backoff=0.5)
    assert slept == [0.5, 1.0, 2.0]                  # before attempts 2, 3 and 4
    assert len(http_server.requests) == 4


def test_gives_up_after_the_attempts(http_server, tmp_path):
    spec = _spec(http_server)
    http_server.fail_next = 10
    with pytest.raises(FetchError, match="HTTP 503"):
        fetch(spec, tmp_path, attempts=3, backoff=0)
    assert len(http_server.requests) == 3


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404") as info:
        fetch({"url": http_server.url("/missing.pth"), "sha256": SHA}, tmp_path, backoff=0)
    assert len(http_server.requests) == 1
    assert f"Put the file at {tmp_path / 'missing.pth'}" in info.value.message


def test_digest_mismatch_is_refused_and_nothing_is_cached(http_server, tmp_path):
    spec = _spec(http_server, sha256="0" * 64)
    with pytest.raises(FetchError) as info:
        fetch(spec, tmp_path, backoff=0)
    assert info.value.kind == "digest_mismatch"
    assert SHA in info.value.message and "0" * 64 in info.value.message
    assert not (tmp_path / "model-abcd.pth").exists()
    assert (tmp_path / "model-abcd.pth.bad-digest").exists()


def test_sha256_prefix_is_checked(http_server, tmp_path):
    assert fetch(_spec(http_server, sha256_prefix=SHA[:8]), tmp_path, backoff=0).pinned
    other = tmp_path / "other"
    with pytest.raises(FetchError, match="starting 00000000"):
        fetch(_spec(http_server, sha256_prefix="00000000"), other, backoff=0)


def test_unpublished_digest_is_recorded_not_pinned(http_server, tmp_path):
    got = fetch(_spec(http_server, digest_unpublished=True), tmp_path, backoff=0)
    assert got.sha256 == SHA and not got.pinned and got.digest_check == "unpublished"


def test_cached_file_is_used_offline(http_server, tmp_path):
    spec = _spec(http_server)
    fetch(spec, tmp_path, backoff=0)
    http_server.files.clear()  # the server no longer has it: only the cache can answer
    before = len(http_server.requests)
    got = fetch(spec, tmp_path, backoff=0)
    assert not got.downloaded and got.pinned and len(http_server.requests) == before


def test_corrupt_cached_file_is_set_aside_and_fetched_again(http_server, tmp_path):
    spec = _spec(http_server)
    (tmp_path / "model-abcd.pth").write_bytes(BODY[:-1] + b"x")
    got = fetch(spec, tmp_path, backoff=0)
    assert got.downloaded and got.path.read_bytes() == BODY
    assert (tmp_path / "model-abcd.pth.bad-digest").exists()


def test_local_checkpoint_records_sha_and_pinning(tmp_path):
    path = tmp_path / "mine.pth"
    path.write_bytes(BODY)
    assert local_checkpoint(path, {"sha256": SHA}).pinned
    got = local_checkpoint(path, {"sha256_prefix": "ffffffff"})
    assert got.sha256 == SHA and not got.pinned and got.digest_check == "local file"
    with pytest.raises(FetchError, match="not found"):
        local_checkpoint(tmp_path / "nope.pth", {"sha256": SHA})


def test_mirror_serves_the_same_file_name_and_its_digest_is_checked(http_server, tmp_path):
    from fetch.download import mirrored

    # The publisher's host is unreachable (air-gapped site); the mirror has the file.
    spec = {"url": "http://127.0.0.1:9/publisher/ck/model-abcd.pth", "sha256": SHA}
    http_server.files["/mirror/model-abcd.pth"] = BODY
    mirror = http_server.url("/mirror/")
    assert mirrored(spec["url"], mirror) == http_server.url("/mirror/model-abcd.pth")
    got = fetch(spec, tmp_path / "a", backoff=0, mirror=mirror)
    assert got.downloaded and got.pinned and got.path.read_bytes() == BODY
    assert got.url == http_server.url("/mirror/model-abcd.pth")
    assert [r["path"] for r in http_server.requests] == ["/mirror/model-abcd.pth"]

    # A mirror serving other bytes under that name is refused, as the publisher would be.
    http_server.files["/mirror/model-abcd.pth"] = BODY[::-1]
    with pytest.raises(FetchError) as err:
        fetch(spec, tmp_path / "b", backoff=0, mirror=mirror)
    assert err.value.kind == "digest_mismatch" and SHA in err.value.message
    assert not (tmp_path / "b" / "model-abcd.pth").exists()


def test_materialize_writes_shipped_bytes_only_when_they_match(tmp_path):
    from fetch.download import materialize

    here = tmp_path / "here.pth"
    here.write_bytes(BODY)
    assert materialize(here, SHA, None, tmp_path / "cache") == here     # seen in place
    elsewhere = tmp_path / "not-on-this-node.pth"
    copy = materialize(elsewhere, SHA, BODY, tmp_path / "cache")
    assert copy.parent == tmp_path / "cache" / "by-sha256" and copy.read_bytes() == BODY
    with pytest.raises(FetchError) as err:
        materialize(tmp_path / "other.pth", SHA, BODY[:-1], tmp_path / "cache2")
    assert err.value.kind == "digest_mismatch"
    with pytest.raises(FetchError) as err:
        materialize(elsewhere, SHA, None, tmp_path / "cache3")
    assert err.value.kind == "checkpoint_missing"


@pytest.mark.parametrize("error, retried", [
    (urllib.error.HTTPError("u", 500, "server error", {}, None), True),
    (urllib.error.HTTPError("u", 501, "not implemented", {}, None), True),
    (urllib.error.HTTPError("u", 503, "unavailable", {}, None), True),
    (urllib.error.HTTPError("u", 408, "request timeout", {}, None), True),
    (urllib.error.HTTPError("u", 429, "too many requests", {}, None), True),
    (urllib.error.HTTPError("u", 499, "client closed", {}, None), False),
    (urllib.error.HTTPError("u", 404, "not found", {}, None), False),
    (urllib.error.HTTPError("u", 409, "conflict", {}, None), False),
    (urllib.error.HTTPError("u", 430, "unassigned", {}, None), False),
    (urllib.error.URLError("connection refused"), True),
    (ConnectionResetError(), True),
    (TimeoutError(), True),
    (ValueError("unknown url type"), False),
])
def test_which_errors_are_retried(error, retried):
    """Server errors (5xx), request timeout (408) and rate limiting (429) and network errors
    are worth another attempt; any other HTTP status is the answer and is not retried."""
    from fetch.download import _transient

    assert _transient(error) is retried


def test_a_cached_file_is_described_whole_and_the_cache_folder_is_made(http_server, tmp_path):
    cache = tmp_path / "a" / "b" / "cache"                 # folders that do not exist yet
    first = fetch(_spec(http_server), cache, backoff=0)
    assert first == Fetched(cache / "model-abcd.pth", SHA, True, "sha256", True,
                            http_server.url("/ck/model-abcd.pth"), len(BODY))
    again = fetch(_spec(http_server), cache, backoff=0)   # from the cache: not downloaded
    assert again == Fetched(cache / "model-abcd.pth", SHA, True, "sha256", False,
                            http_server.url("/ck/model-abcd.pth"), len(BODY))


def test_by_default_five_attempts_one_second_apart_doubling(http_server, tmp_path, monkeypatch):
    import fetch.download as download

    slept = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    http_server.fail_next = 10
    with pytest.raises(FetchError):
        fetch(_spec(http_server), tmp_path)
    assert len(http_server.requests) == 5 and slept == [1.0, 2.0, 4.0, 8.0]


def test_mirror_and_cache_names():
    from fetch.download import cache_path, mirrored

    url = "https://download.example/a/b/res2net50 w14.pth?x=1"
    assert mirrored(url, None) == url
    assert mirrored(url, "http://m.local/CACHEX/") == "http://m.local/CACHEX/res2net50%20w14.pth"
    assert mirrored(url, "http://m.local/c") == "http://m.local/c/res2net50%20w14.pth"
    assert cache_path(url, Path("/c")) == Path("/c/res2net50 w14.pth")
    assert cache_path("https://download.example/", Path("/c")) == Path("/c/checkpoint")


OFFLINE = (" (its digest is checked), pass --checkpoint NAME=PATH, or serve it from an internal "
           "mirror (--mirror URL).")


def test_an_http_refusal_is_named_with_its_status_and_the_offline_ways_out(http_server, tmp_path):
    url = http_server.url("/ck/missing.pth")
    with pytest.raises(FetchError) as err:
        fetch({"url": url, "sha256": SHA}, tmp_path, backoff=0)
    assert err.value.kind == "download"
    assert str(err.value) == err.value.message == (
        f"GET {url} failed: HTTP 404 no such file. Offline? Put the file at "
        f"{tmp_path / 'missing.pth'}" + OFFLINE)


def test_a_cut_download_keeps_its_part_file_says_so_and_the_next_run_resumes(http_server,
                                                                             tmp_path):
    import urllib.request

    spec = _spec(http_server)
    http_server.cut_after = 1_000_000
    part = tmp_path / "model-abcd.pth.part"
    with pytest.raises(FetchError) as err:
        fetch(spec, tmp_path, attempts=1, backoff=0)
    assert err.value.kind == "download"
    assert err.value.message == (
        f"GET {spec['url']} failed after 1 attempts: ConnectionError: connection closed after "
        f"1000000 of {len(BODY)} bytes (partial data kept in {part} for the next run to "
        f"resume). Offline? Put the file at {tmp_path / 'model-abcd.pth'}" + OFFLINE)
    assert part.read_bytes() == BODY[:1_000_000]
    assert fetch(spec, tmp_path, backoff=0).path.read_bytes() == BODY
    assert http_server.requests[-1]["range"] == "bytes=1000000-" and not part.exists()

    refused = "http://127.0.0.1:9/ck/model-abcd.pth"         # nothing listens on port 9
    with pytest.raises(OSError) as direct:                      # urllib's own words for it
        urllib.request.urlopen(refused, timeout=5)
    why = f"{type(direct.value).__name__}: {direct.value}"
    with pytest.raises(FetchError) as err:
        fetch({"url": refused, "sha256": SHA}, tmp_path / "b", attempts=2, backoff=0)
    assert err.value.message.startswith(
        f"GET {refused} failed after 2 attempts: {why} (partial data kept in "
        f"{tmp_path / 'b' / 'model-abcd.pth.part'} for the next run to resume)")


def test_a_digest_mismatch_says_who_pinned_the_digest(http_server, tmp_path):
    for spec, pins in (
            (_spec(http_server, sha256="0" * 64), f"the manifest pins sha256 {'0' * 64}"),
            (_spec(http_server, sha256="1" * 64, locked=True),
             f"the lock pins sha256 {'1' * 64} (the checkpoint lock)")):
        with pytest.raises(FetchError) as err:
            fetch(spec, tmp_path, backoff=0)
        assert err.value.message == (
            f"downloaded {spec['url']} but its sha256 is {SHA}, {pins}; the file was set aside "
            f"as {tmp_path / 'model-abcd.pth.bad-digest'} and not used")


def test_a_silent_server_times_out_and_waits_are_capped_at_30_s(http_server, tmp_path,
                                                                monkeypatch):
    import fetch.download as download

    http_server.stall = 2.0
    with pytest.raises(FetchError, match="TimeoutError: timed out"):
        fetch(_spec(http_server), tmp_path, attempts=1, timeout=0.2)
    http_server.stall = 0
    slept = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    http_server.fail_next = 3
    fetch(_spec(http_server), tmp_path / "b", attempts=4, backoff=20)
    assert slept == [20, 30.0, 30.0]
    with pytest.raises(ValueError) as err:
        fetch(_spec(http_server), tmp_path / "c", attempts=0)
    assert str(err.value) == "attempts must be at least 1, not 0"


def test_requests_name_the_tool_and_progress_shows_only_when_asked(http_server, tmp_path, capfd):
    """The bar follows --progress; without it tqdm decides by the terminal (here: none)."""
    fetch(_spec(http_server), tmp_path / "a", backoff=0, progress=True)
    assert "model-abcd" in capfd.readouterr().err
    fetch(_spec(http_server), tmp_path / "b", backoff=0)
    assert capfd.readouterr().err == ""
    assert {r["agent"] for r in http_server.requests} == {"model-convert/1"}


def test_without_the_option_a_terminal_gets_the_bar(http_server, tmp_path):
    """progress=None leaves it to tqdm: stderr on a terminal shows the bar (on a pipe it does
    not, above). The fetch runs in a child process whose stderr is a pseudo-terminal."""
    master, terminal = pty.openpty()
    # 24 x 80: a new pseudo-terminal is 0 columns wide, and tqdm would draw its bar in none.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    code = ("from pathlib import Path; from fetch.download import fetch; "
            f"fetch({_spec(http_server)!r}, Path({str(tmp_path)!r}), backoff=0)")
    child = subprocess.Popen([sys.executable, "-c", code], stderr=terminal, cwd=REPO,
                             env=child_env())
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:                  # EIO: the child has closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert child.wait(timeout=60) == 0, shown.decode(errors="replace")
    size = f"/{len(BODY) / 1024 ** 2:.2f}M".encode()
    assert shown.startswith(b"\rmodel-abcd.pth: ") and size in shown, shown


def test_the_progress_bar_names_the_file_and_counts_from_what_was_kept(http_server, tmp_path,
                                                                      capfd):
    """A resumed download's bar starts at the bytes already held, in binary units, names the
    file (its first 40 characters) and is cleared when done."""
    name = "res2net50-w14-s8_3rdparty_8xb32_in1k_20210927-bc967bf1.pth"
    http_server.files[f"/{name}"] = BODY
    spec = {"url": http_server.url(f"/{name}"), "sha256": SHA}
    http_server.cut_after = 1_000_000
    with pytest.raises(FetchError):
        fetch(spec, tmp_path, attempts=1, progress=False)
    capfd.readouterr()
    fetch(spec, tmp_path, progress=True)
    err = capfd.readouterr().err
    shown = err.split("\r")      # "", each render (more if the download is slow), clear, ""
    start = (f"{name[:-4][:40]}: {100 * 1_000_000 / len(BODY):3.0f}%|")
    end = f"| {1_000_000 / 1024:.0f}k/{len(BODY) / 1024 ** 2:.2f}M [00:00<?, ?B/s]"
    assert shown[0] == shown[-1] == "" and len(shown) >= 4, err
    assert shown[1].startswith(start) and shown[1].endswith(end), shown[1]
    assert all(r.startswith(f"{name[:-4][:40]}: ") for r in shown[1:-2]), err
    assert shown[-2] == " " * len(shown[-3])                       # cleared, not left


def test_a_part_file_that_is_already_whole_is_checked_not_fetched_again(http_server, tmp_path):
    spec = _spec(http_server)
    (tmp_path / "model-abcd.pth.part").write_bytes(BODY)     # a run stopped before the rename
    got = fetch(spec, tmp_path, backoff=0)
    assert got.path.read_bytes() == BODY and got.downloaded
    assert [r["range"] for r in http_server.requests] == [f"bytes={len(BODY)}-"]   # -> 416
    (tmp_path / "other.pth.part").write_bytes(BODY[:10])     # a 416 only counts with a part
    with pytest.raises(FetchError, match="HTTP 404 no such file"):
        fetch({"url": http_server.url("/other.pth"), "sha256": SHA}, tmp_path, backoff=0)


def test_a_body_without_a_length_is_read_to_the_end(http_server, tmp_path):
    http_server.send_length = False
    assert fetch(_spec(http_server), tmp_path, backoff=0).path.read_bytes() == BODY
