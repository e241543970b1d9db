"""fetch/'s pieces without a server: the digest kind a report names, a user-given checkpoint,
a driver's file materialised on a node, and the checkpoint lock file's text."""
from __future__ import annotations

import hashlib

import pytest

from conftest import random_bytes
from fetch.download import FetchError, Fetched, _check_kind, local_checkpoint, materialize
from fetch.lock import HEADER, LockError, locked_spec, prefix_only, read_lock, write_lock

BODY = random_bytes(5000, seed=3)
SHA = hashlib.sha256(BODY).hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


@pytest.mark.parametrize("spec, kind", [
    ({"sha256": SHA, "locked": True}, "sha256 (checkpoint lock)"),
    ({"sha256_prefix": SHA[:8], "sha256": SHA, "locked": True}, "sha256 (checkpoint lock)"),
    ({"sha256_prefix": SHA[:8]}, "sha256_prefix (prefix only, 32 bits)"),
    ({"sha256_prefix": SHA[:8], "sha256": SHA}, "sha256"),
    ({"sha256": SHA}, "sha256"),
    ({"digest_unpublished": True}, "unpublished"),
])
def test_the_digest_check_a_report_names(spec, kind):
    assert _check_kind(spec) == kind


@pytest.mark.parametrize("spec, only", [
    ({"sha256_prefix": "abcdef12"}, True),
    ({"sha256_prefix": "abcdef12", "locked": True, "sha256": SHA}, False),   # locked
    ({"sha256_prefix": "abcdef12", "locked": True}, False),
    ({"sha256_prefix": "abcdef12", "sha256": SHA}, False),                   # full digest
    ({"sha256": SHA}, False),
    ({"digest_unpublished": True}, False),
    ({}, False),
])
def test_prefix_only_means_a_prefix_and_nothing_longer(spec, only):
    assert prefix_only(spec) is only


def test_a_local_checkpoint_is_described_whole(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(BODY)
    assert local_checkpoint(path, {"sha256": SHA}) == Fetched(
        path.resolve(), SHA, True, "local file", False, None, 5000)
    assert local_checkpoint(path, {"sha256": OTHER}) == Fetched(
        path.resolve(), SHA, False, "local file", False, None, 5000)
    with pytest.raises(FetchError) as caught:
        local_checkpoint(tmp_path / "gone.pth", {"sha256": SHA})
    assert (caught.value.kind, str(caught.value)) == (
        "checkpoint_missing", f"checkpoint file not found: {tmp_path / 'gone.pth'}")


def test_materialize_uses_the_file_here_or_writes_the_shipped_bytes_once(tmp_path):
    here = tmp_path / "model.pth"
    here.write_bytes(BODY)
    cache = tmp_path / "cache"
    assert materialize(here, SHA, None, cache) == here          # on this node already
    assert not cache.exists()

    away = tmp_path / "driver-only" / "model.pth"                # only the driver has it
    target = materialize(away, SHA, BODY, cache)
    assert target == cache / "by-sha256" / f"{SHA[:16]}-model.pth"
    assert target.read_bytes() == BODY
    inode = target.stat().st_ino
    assert materialize(away, SHA, BODY, cache) == target         # kept, not written again
    assert target.stat().st_ino == inode
    # A second file into the same cache folder.
    second = materialize(tmp_path / "x" / "b.pth", OTHER, b"other", cache)
    assert second == cache / "by-sha256" / f"{OTHER[:16]}-b.pth"
    assert sorted(p.name for p in (cache / "by-sha256").iterdir()) == sorted(
        [target.name, second.name])

    with pytest.raises(FetchError) as caught:
        materialize(tmp_path / "missing.pth", SHA, None, cache)
    assert (caught.value.kind, str(caught.value)) == (
        "checkpoint_missing", f"checkpoint file not found: {tmp_path / 'missing.pth'}")
    with pytest.raises(FetchError) as caught:
        materialize(tmp_path / "c.pth", SHA, b"not the bytes", cache)
    assert (caught.value.kind, str(caught.value)) == (
        "digest_mismatch", f"c.pth: the bytes shipped to this node do not have sha256 {SHA}")
    assert not (cache / "by-sha256" / f"{SHA[:16]}-c.pth").exists()
    assert sorted(p.name for p in (cache / "by-sha256").iterdir()) == sorted(
        [target.name, second.name])                              # no part file left


def test_the_lock_file_is_sorted_aligned_and_reads_back(tmp_path):
    path = tmp_path / "checkpoints.lock"
    write_lock(path, {})
    assert path.read_text() == HEADER and read_lock(path) == {}
    lock = {"res2net50-w14-s8": {"sha256": SHA, "bytes": 5000},
            "a": {"sha256": OTHER, "bytes": 5}}
    write_lock(path, lock)
    assert path.read_text() == HEADER + (
        f"a                 {OTHER}  5\n"
        f"res2net50-w14-s8  {SHA}  5000\n")
    assert read_lock(path) == lock
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints.lock"]


def test_lock_lines_take_comments_anywhere_and_refuse_a_name_twice_by_line(tmp_path):
    path = tmp_path / "checkpoints.lock"
    path.write_text(f"# header\nm  {SHA}  12  # fetched # 2026-11-23\n")
    assert read_lock(path) == {"m": {"sha256": SHA, "bytes": 12}}
    path.write_text(f"m {SHA} 12\nn {SHA} 5\n\nm {SHA} 12\n")
    with pytest.raises(LockError) as err:
        read_lock(path)
    assert str(err.value) == f"{path}, line 4: m is locked twice"
    path.write_bytes(b"m \xff 12\n")
    with pytest.raises(LockError) as err:
        read_lock(path)
    assert "can't decode byte 0xff in position 2" in str(err.value)


def test_a_locked_spec_carries_the_lock_s_digest_and_size_and_a_contradiction_is_refused():
    spec = {"url": "https://h/m.pth", "sha256_prefix": SHA[:8]}
    lock = {"m": {"sha256": SHA, "bytes": 12}}
    assert locked_spec("m", spec, lock) == {**spec, "sha256": SHA, "bytes": 12, "locked": True}
    assert locked_spec("other", spec, lock) is spec
    other = "0" * 64
    for published in ({"sha256": other}, {"sha256_prefix": other[:8]}):
        with pytest.raises(LockError) as err:
            locked_spec("m", {"url": spec["url"], **published}, lock)
        assert str(err.value) == (f"entry 'm': the checkpoint lock has sha256 {SHA}, which "
                                  f"does not match the manifest's {next(iter(published.values()))}")
