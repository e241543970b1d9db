"""The checkpoint lock (fetch/lock.py): full digests recorded by `lock-checkpoints` against a
loopback server, a prefix-matching file refused when its full digest differs from the lock,
and the nightly's --require-lock refusing an entry checked against 32 bits only."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import REPO, manifest_entries, random_bytes, run_pipeline, write_manifest
from fetch.lock import LockError, locked_spec, read_lock

BODY = random_bytes(200_000, seed=1)
SHA = hashlib.sha256(BODY).hexdigest()
NAME = "res2net50-w14-s8"


def _manifest(tmp_path, server, **digest):
    server.files[f"/ck/res2net-{SHA[:8]}.pth"] = BODY
    entry = {**manifest_entries()[NAME],
             "checkpoint": {"url": server.url(f"/ck/res2net-{SHA[:8]}.pth"),
                            **(digest or {"sha256_prefix": SHA[:8]})}}
    return write_manifest(tmp_path / "m.yaml", [entry])


def _run(manifest, tmp_path, *extra):
    return run_pipeline("--manifest", str(manifest), "--only", NAME, "--cache-dir",
                        str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra)


def test_lock_checkpoints_records_full_digests_and_checks_existing_lines(http_server, tmp_path):
    manifest = _manifest(tmp_path, http_server)
    lock = tmp_path / "checkpoints.lock"                      # beside the manifest: the default
    first = run_pipeline("lock-checkpoints", "--manifest", str(manifest), "--cache-dir",
                         str(tmp_path / "cache"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{NAME}: locked: sha256 {SHA}, {len(BODY)} bytes" in first.stdout
    assert read_lock(lock) == {NAME: {"sha256": SHA, "bytes": len(BODY)}}
    assert any(f"res2net-{SHA[:8]}.pth" in str(r) for r in http_server.requests)
    again = run_pipeline("lock-checkpoints", "--manifest", str(manifest), "--cache-dir",
                         str(tmp_path / "cache"))
    assert again.returncode == 0 and f"{NAME}: already locked" in again.stdout

    # A file that differs from an existing line is an error naming both digests; the line
    # stays. (A manifest without a published digest, so only the lock can tell.)
    unpublished = _manifest(tmp_path, http_server, digest_unpublished=True)
    other = tmp_path / "other.pth"
    other.write_bytes(b"not the locked file")
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    changed = run_pipeline("lock-checkpoints", "--manifest", str(unpublished), "--checkpoint",
                           f"{NAME}={other}")
    assert changed.returncode == 1
    assert f"the lock has sha256 {SHA} but {other} has {other_sha}" in changed.stdout
    assert read_lock(lock)[NAME]["sha256"] == SHA


def test_prefix_matching_file_is_refused_when_the_lock_says_otherwise(http_server, tmp_path):
    manifest = _manifest(tmp_path, http_server)
    locked = SHA[:8] + ("0" if SHA[8] != "0" else "1") + SHA[9:]   # same 32 bits, not the file
    (tmp_path / "checkpoints.lock").write_text(f"{NAME} {locked} {len(BODY)}\n")
    proc = _run(manifest, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out" / NAME / "report.json").read_text())
    assert report["error"]["stage"] == "fetch" and report["error"]["kind"] == "digest_mismatch"
    assert f"its sha256 is {SHA}, the lock pins sha256 {locked} (the checkpoint lock)" \
        in report["error"]["message"]
    assert not (tmp_path / "out" / NAME / "model.onnx").exists()
    # Without the lock the same file passes the 32-bit check (what the lock is for).
    spec = {"sha256_prefix": SHA[:8], "url": "u"}
    assert locked_spec(NAME, spec, {}) is spec


def test_require_lock_fails_an_unlocked_prefix_only_entry_naming_the_command(http_server,
                                                                             tmp_path):
    manifest = _manifest(tmp_path, http_server)
    proc = _run(manifest, tmp_path, "--require-lock")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ERROR     [fetch/unlocked] checked only against the 8 hex digits" in proc.stdout
    assert f"python pipeline.py lock-checkpoints --manifest {manifest} --only {NAME}" \
        in proc.stdout
    report = json.loads((tmp_path / "out" / NAME / "report.json").read_text())
    assert (report["error"]["stage"], report["error"]["kind"]) == ("fetch", "unlocked")
    assert http_server.requests == []                           # nothing was downloaded
    # The scheduled nightly asks for it.
    nightly = (REPO / "scripts" / "nightly.sh").read_text()
    assert '--skip-unchanged "$STORE" --require-lock' in nightly


def test_lock_file_errors_name_the_line_and_contradictions_name_both_digests(tmp_path):
    bad = tmp_path / "checkpoints.lock"
    bad.write_text("# comment\nres2net50-w14-s8 abc 12\n")
    with pytest.raises(LockError, match=r"checkpoints.lock, line 2: expected 'NAME SHA256 "
                                        r"BYTES'"):
        read_lock(bad)
    with pytest.raises(LockError, match=f"the checkpoint lock has sha256 {'f' * 64}, which "
                                        f"does not match the manifest's {SHA[:8]}"):
        locked_spec(NAME, {"sha256_prefix": SHA[:8]}, {NAME: {"sha256": "f" * 64, "bytes": 1}})


def test_cache_and_mirror_come_from_the_environment_in_every_command(http_server, tmp_path):
    """docs/usage.md: the cache is --cache-dir, else $MODEL_CONVERT_CACHE; MODEL_CONVERT_MIRROR
    serves every checkpoint by file name when the publisher's host cannot be reached. Here
    the entry's host is a closed port and only the mirror has the file."""
    entry = {**manifest_entries()[NAME],
             "checkpoint": {"url": f"http://127.0.0.1:9/gone/res2net-{SHA[:8]}.pth",
                            "sha256_prefix": SHA[:8]}}
    manifest = write_manifest(tmp_path / "m.yaml", [entry])
    http_server.files[f"/mirror/res2net-{SHA[:8]}.pth"] = BODY
    env = {"MODEL_CONVERT_CACHE": str(tmp_path / "env-cache"),
           "MODEL_CONVERT_MIRROR": http_server.url("/mirror/")}
    done = run_pipeline("lock-checkpoints", "--manifest", str(manifest), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "env-cache" / f"res2net-{SHA[:8]}.pth").read_bytes() == BODY
    assert [r["path"] for r in http_server.requests] == [f"/mirror/res2net-{SHA[:8]}.pth"]
    # (The conversion command's options: test_worker_limits_come_from_the_environment.)
    # An explicit --cache-dir wins over the environment.
    other = run_pipeline("lock-checkpoints", "--manifest", str(manifest), "--cache-dir",
                         str(tmp_path / "flag-cache"), env=env)
    assert other.returncode == 0, other.stdout + other.stderr
    assert (tmp_path / "flag-cache" / f"res2net-{SHA[:8]}.pth").exists()


def test_worker_limits_come_from_the_environment(tmp_path, monkeypatch):
    """MODEL_CONVERT_WORKER_MEMORY and MODEL_CONVERT_MAX_IMAGE_PIXELS (0 = off) reach the
    options the run is given, and flags win over them; read at the CLI, where the run starts
    (orchestrator.driver.run_all replaced by a recorder: no conversion is the point here)."""
    from click.testing import CliRunner

    import commands.convert
    import pipeline

    seen = []
    monkeypatch.setattr(commands.convert, "run_all", lambda chosen, entries, opts, runner, reporter:
                        seen.append(opts) or [])
    args = ["--only", NAME, "--out", str(tmp_path / "out")]
    env = {"MODEL_CONVERT_WORKER_MEMORY": "3G", "MODEL_CONVERT_MAX_IMAGE_PIXELS": "0",
           "MODEL_CONVERT_CACHE": str(tmp_path / "c"), "MODEL_CONVERT_MIRROR": "http://m/"}
    CliRunner().invoke(pipeline.cli, args, env=env, catch_exceptions=False)
    CliRunner().invoke(pipeline.cli, [*args, "--worker-memory", "800M", "--max-image-pixels",
                                      "7"], env=env, catch_exceptions=False)
    CliRunner().invoke(pipeline.cli, args, env={k: None for k in env},
                       catch_exceptions=False)
    env_run, flag_run, default_run = seen
    assert (env_run.limits.memory, env_run.limits.max_image_pixels) == (3 * 2**30, 0)
    assert (env_run.cache_dir, env_run.mirror) == (tmp_path / "c", "http://m/")
    assert (flag_run.limits.memory, flag_run.limits.max_image_pixels) == (800 * 2**20, 7)
    assert (default_run.limits.memory, default_run.limits.max_image_pixels) == (None,
                                                                                50_000_000)
    assert default_run.mirror is None
