"""Signing, verify-artifact and publishing, on small artifacts made by the pipeline's own
writer and signed with keys the tests make. No framework is needed for these."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import zlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, manifest_entries, random_bytes, run_pipeline, write_manifest
from release.artifact import write_artifact
from release.provenance import BUILD_TYPE, BUILDER_ID, PREDICATE_TYPE, STATEMENT_TYPE
from release.signing import sign_directory

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")  # the upstream CLI


def make_artifact(out: Path, name: str, private_key: Path | None, passed: bool = True,
                  payload: bytes | None = None, created: str | None = None,
                  extra: dict[str, bytes] | None = None, inputs: str | None = None) -> Path:
    """A signed artifact as the pipeline writes one: model.onnx (PAYLOAD or random bytes),
    report.json, provenance.json (its subjects: every model file, preprocess.json and
    labels.txt of EXTRA), model.sig; INPUTS is the report's inputs fingerprint."""
    model = out.parent / f"{name}-model.bin"
    model.parent.mkdir(parents=True, exist_ok=True)
    created = created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # Different bytes per artifact (as real models differ), reproducible from name and time.
    seed = zlib.crc32(f"{name}{created}".encode())
    model.write_bytes(payload or random_bytes(64 * 1024, seed=seed))
    report = {
        "name": name, "passed": passed, "created": created,
        "decided_by": "max|diff| 1e-05 <= 0.0005" if passed else "max_abs_diff 1.0 vs 0.0005",
        "source": {"framework": "mmpretrain", "model_id": "m",
                   "checkpoint": {"pinned": False, "demo": True}},
        "onnx": {"sha256": hashlib.sha256(model.read_bytes()).hexdigest()},
        "checks": [{"name": "max_abs_diff", "passed": passed, "measured": 1e-5,
                    "limit": 5e-4, "scope": {"model": "simplified"}}],
        "signature": {"public_key_sha256": "k" * 64} if private_key else None,
    }
    if inputs is not None:
        report["inputs"] = {"fingerprint": inputs, "parts": {}}
    files = {"model.onnx": model}
    for file_name, data in (extra or {}).items():
        files[file_name] = out.parent / f"{name}-{file_name}"
        files[file_name].write_bytes(data)
    subjects = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()
                if n.endswith(".onnx") or n in ("preprocess.json", "labels.txt")}
    finalize = (lambda staging: sign_directory(staging, private_key)) if private_key else None
    return write_artifact(out, name, report, files,
                          documents={"provenance.json": statement(report["onnx"]["sha256"],
                                                                  subjects=subjects)},
                          finalize=finalize)


def statement(model_sha: str, checkpoint_sha: str = "c" * 64,
              subjects: dict[str, str] | None = None) -> dict:
    """A minimal SLSA v1 provenance for an artifact holding one model.onnx (or SUBJECTS:
    name -> sha256)."""
    subjects = subjects or {"model.onnx": model_sha}
    return {"_type": STATEMENT_TYPE, "predicateType": PREDICATE_TYPE,
            "subject": [{"name": n, "digest": {"sha256": d}} for n, d in subjects.items()],
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": {"manifest_entry": {"source": "mmpretrain",
                                                              "model_id": "m"}},
                    "resolvedDependencies": [{"name": "checkpoint", "uri": "https://h/ck.pth",
                                              "digest": {"sha256": checkpoint_sha}}]},
                "runDetails": {"builder": {"id": BUILDER_ID},
                               "metadata": {"startedOn": "2026-11-22T00:00:00+00:00",
                                            "finishedOn": "2026-11-22T00:01:00+00:00"}}}}


def verify_cli(artifact: Path, public_key: Path) -> subprocess.CompletedProcess:
    return run_pipeline("verify-artifact", str(artifact), "--public-key", str(public_key))


def upstream_verify(artifact: Path, public_key: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(MODEL_SIGNING), "verify", "key", str(artifact), "--signature",
                           str(artifact / "model.sig"), "--public_key", str(public_key)],
                          capture_output=True, text=True)


def test_signed_artifact_verifies_with_pipeline_and_upstream_tool(keys, tmp_path):
    artifact = make_artifact(tmp_path / "out", "res", keys["private"])
    assert sorted(p.name for p in artifact.iterdir()) == [
        "model.onnx", "model.sig", "provenance.json", "report.json"]
    bundle = json.loads((artifact / "model.sig").read_text())
    assert "dsseEnvelope" in bundle and bundle["mediaType"].startswith(
        "application/vnd.dev.sigstore.bundle")
    proc = verify_cli(artifact, keys["public"])
    assert proc.returncode == 0 and "OK: res" in proc.stdout, proc.stderr
    upstream = upstream_verify(artifact, keys["public"])
    assert upstream.returncode == 0, upstream.stdout + upstream.stderr
    assert "Verification succeeded" in upstream.stdout + upstream.stderr


@pytest.mark.parametrize("victim", ["model.onnx", "report.json", "provenance.json",
                                    "model.sig"])
def test_one_changed_byte_in_any_file_fails(keys, tmp_path, victim):
    artifact = make_artifact(tmp_path / "out", "res", keys["private"])
    path = artifact / victim
    data = bytearray(path.read_bytes())
    if victim == "model.sig":  # one base64 character of the signature value itself
        index = data.index(b'"sig":"') + 12
        data[index] = ord("A") if data[index] != ord("A") else ord("B")
    else:
        data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = verify_cli(artifact, keys["public"])
    assert proc.returncode == 1
    if victim != "model.sig":
        assert victim in proc.stderr, proc.stderr  # the message names the file
    assert upstream_verify(artifact, keys["public"]).returncode != 0


def test_wrong_key_is_named(keys, tmp_path):
    artifact = make_artifact(tmp_path / "out", "res", keys["private"])
    proc = verify_cli(artifact, keys["other_public"])
    assert proc.returncode == 1
    assert str(keys["other_public"]) in proc.stderr and "another key" in proc.stderr


def test_verify_artifact_refuses_unsigned_and_failed(keys, tmp_path):
    unsigned = make_artifact(tmp_path / "out", "unsigned", None)
    proc = verify_cli(unsigned, keys["public"])
    assert proc.returncode == 1 and "not signed" in proc.stderr
    failed = make_artifact(tmp_path / "out", "failed", keys["private"], passed=False)
    proc = verify_cli(failed, keys["public"])
    assert proc.returncode == 1 and "did not pass" in proc.stderr


def test_failed_entry_is_never_signed_and_bad_keys_stop_before_work(keys, tmp_path):
    entry = manifest_entries()["res2net50-w14-s8"]
    manifest = write_manifest(tmp_path / "m.yaml", [entry])
    out = tmp_path / "out"
    proc = run_pipeline("--manifest", str(manifest), "--out", str(out), "--signing-key",
                        str(keys["private"]), "--checkpoint",
                        f"res2net50-w14-s8={tmp_path / 'missing.pth'}")
    assert proc.returncode == 1
    assert sorted(p.name for p in (out / "res2net50-w14-s8").iterdir()) == ["report.json"]

    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    proc = run_pipeline("--manifest", str(manifest), "--out", str(tmp_path / "out2"),
                        "--signing-key", str(not_a_key))
    assert proc.returncode == 2 and "not an unencrypted PEM private key" in proc.stderr
    assert not (tmp_path / "out2").exists()


def publish(source: Path, store: Path, public_key: Path, *extra: str):
    return run_pipeline("publish", "--from", str(source), "--to", str(store),
                        "--public-key", str(public_key), *extra)


def store_listing(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")
                  if not p.name.startswith(".") and ".staging" not in str(p))


def index(store: Path) -> list[dict]:
    return json.loads((store / "index.json").read_text())["artifacts"]


def test_publish_is_idempotent_skips_unsigned_and_failed_refuses_tampered(keys, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    for name in ("a", "b"):
        make_artifact(out, name, keys["private"])
    make_artifact(out, "unsigned", None)
    make_artifact(out, "failed", keys["private"], passed=False)
    proc = publish(out, store, keys["public"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "published 2, already there 0, skipped 2, refused 0" in proc.stdout
    assert [row["name"] for row in index(store)] == ["a", "b"]
    first = store_listing(store)

    proc = publish(out, store, keys["public"])
    assert "published 0, already there 2" in proc.stdout
    assert store_listing(store) == first

    for row in index(store):  # the published copies verify with the upstream tool
        version = store / row["name"] / row["version"]
        assert upstream_verify(version, keys["public"]).returncode == 0
        assert row["signature"] == f"{row['name']}/{row['version']}/model.sig"
        assert row["logits"]["max_abs_diff"] == 1e-5
    table = (store / "index.md").read_text()
    assert "| a |" in table and "demo (random init)" in table and "unsigned" not in table

    tampered = make_artifact(tmp_path / "out2", "d", keys["private"])
    model = bytearray((tampered / "model.onnx").read_bytes())
    model[100] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(model))
    make_artifact(tmp_path / "out2", "c", keys["private"])
    proc = publish(tmp_path / "out2", store, keys["public"])
    assert proc.returncode == 1 and "refused 1" in proc.stdout, proc.stdout
    assert "d: signature does not match the files: changed file(s): model.onnx" in proc.stdout
    assert sorted(row["name"] for row in index(store)) == ["a", "b", "c"]


WHOLE = {"model.fp16.onnx": b"half", "preprocess.json": b'{"format": "x"}\n',
         "labels.txt": "tench\ngoldfish\nÅland\n".encode()}


def test_a_published_version_holds_every_signed_file_and_verifies(keys, tmp_path):
    """A version holds the whole artifact (the contract, the labels and every precision's
    model, not only model.onnx and the documents), so the published copy verifies as the
    artifact does. Before, labels.txt and preprocess.json were left behind and
    verify-artifact refused every published version."""
    out, store = tmp_path / "out", tmp_path / "store"
    art = make_artifact(out, "whole", keys["private"], extra=WHOLE)
    assert verify_cli(art, keys["public"]).returncode == 0
    assert publish(out, store, keys["public"]).returncode == 0
    [row] = index(store)
    version = store / "whole" / row["version"]
    assert sorted(p.name for p in version.iterdir()) == sorted(p.name for p in art.iterdir())
    proc = verify_cli(version, keys["public"])
    assert proc.returncode == 0 and f"OK: {row['version']}" in proc.stdout, proc.stderr
    assert upstream_verify(version, keys["public"]).returncode == 0


def test_symbolic_links_in_an_artifact_or_the_store_are_never_followed(keys, tmp_path):
    out, store, outside = tmp_path / "out", tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for the store\n")
    # A signed artifact, then one of its files swapped for a link to a file outside it.
    linked = make_artifact(out, "linked", keys["private"])
    (linked / "provenance.json").unlink()
    (linked / "provenance.json").symlink_to(outside / "secret.txt")
    # An artifact folder that is itself a link to a signed artifact elsewhere.
    elsewhere = make_artifact(tmp_path / "elsewhere", "real", keys["private"])
    (out / "aliased").symlink_to(elsewhere, target_is_directory=True)
    # A good artifact whose store folder is a link pointing outside the store.
    make_artifact(out, "good", keys["private"])
    store.mkdir()
    (store / "good").symlink_to(outside, target_is_directory=True)

    proc = publish(out, store, keys["public"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "linked: holds symbolic links, which are never followed or published: " \
           f"provenance.json -> {outside / 'secret.txt'}" in proc.stdout
    assert "aliased: holds symbolic links" in proc.stdout
    assert f"good: {store / 'good'} in the store is a symbolic link" in proc.stdout
    assert "published 0" in proc.stdout and "refused 3" in proc.stdout
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]   # nothing written there
    assert not [p for p in store.rglob("*") if p.name == "model.onnx"]
    assert index(store) == []

    verify = verify_cli(linked, keys["public"])
    assert verify.returncode == 1
    assert "holds symbolic links, which are never followed: provenance.json ->" in verify.stderr


def _signed_with(out: Path, name: str, keys, provenance: dict) -> Path:
    """make_artifact, then provenance.json replaced and the directory signed again."""
    art = make_artifact(out, name, keys["private"])
    (art / "provenance.json").write_text(json.dumps(provenance))
    (art / "model.sig").unlink()
    sign_directory(art, keys["private"])
    return art


def test_verify_artifact_checks_provenance_subjects_and_the_checkpoint_lock(keys, tmp_path):
    out = tmp_path / "out"
    art = make_artifact(out, "good", keys["private"])
    model_sha = hashlib.sha256((art / "model.onnx").read_bytes()).hexdigest()
    lock = tmp_path / "checkpoints.lock"
    lock.write_text(f"good {'c' * 64} 10\n")
    ok = run_pipeline("verify-artifact", str(art), "--public-key", str(keys["public"]),
                      "--checkpoint-lock", str(lock))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"checkpoint  https://h/ck.pth sha256 {'c' * 64} (matches the lock)" in ok.stdout
    assert f"subjects    model.onnx {model_sha[:12]}" in ok.stdout
    assert "source      mmpretrain m" in ok.stdout

    # Built from another checkpoint than the lock's: signed and valid, still refused.
    lock.write_text(f"good {'d' * 64} 10\n")
    other = run_pipeline("verify-artifact", str(art), "--public-key", str(keys["public"]),
                         "--checkpoint-lock", str(lock))
    assert other.returncode == 1
    assert f"built from checkpoint sha256 {'c' * 64}, the lock ({lock}) has {'d' * 64}" \
        in other.stderr

    # A signed provenance whose subject digest is not the file's, or that is not SLSA.
    wrong = _signed_with(out, "wrong", keys, statement("0" * 64))
    proc = verify_cli(wrong, keys["public"])
    assert proc.returncode == 1
    assert f"provenance gives model.onnx sha256 {'0' * 64}, the file has" in proc.stderr
    legacy = _signed_with(out, "legacy", keys, {"name": "legacy"})
    proc = verify_cli(legacy, keys["public"])
    assert proc.returncode == 1 and "_type is not https://in-toto.io/Statement/v1" in proc.stderr


def test_retention_keeps_the_newest(keys, tmp_path):
    store = tmp_path / "store"
    for day in (1, 2, 3):
        out = tmp_path / f"out{day}"
        make_artifact(out, "m", keys["private"], created=f"2026-11-0{day}T00:00:00+00:00")
        assert publish(out, store, keys["public"], "--keep", "2").returncode == 0
    versions = [row["version"] for row in index(store)]
    assert len(versions) == 2 and versions[0].startswith("20261102") \
        and versions[1].startswith("20261103")
    assert sorted(p.name for p in (store / "m").iterdir()) == versions


def assert_store_consistent(store: Path, public_key: Path) -> None:
    """Index is whole JSON, every indexed version exists, every visible version verifies."""
    rows = index(store) if (store / "index.json").exists() else []
    for row in rows:
        assert (store / row["name"] / row["version"]).is_dir(), row
    for model in (p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in (v for v in model.iterdir() if not v.name.startswith(".")):
            assert upstream_verify(version, public_key).returncode == 0, version


def publisher(source: Path, store: Path, public_key: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "MODEL_CONVERT_PUBLISH_STEP_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, str(REPO / "pipeline.py"), "publish", "--from",
                             str(source), "--to", str(store), "--public-key", str(public_key)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "publisher never reached the kill point"
        time.sleep(0.01)


@pytest.mark.parametrize("kill_point", ["mid-copy", "after-first-version"])
def test_publisher_killed_midway_leaves_a_consistent_store(keys, tmp_path, kill_point):
    out, store = tmp_path / "out", tmp_path / "store"
    names = [f"m{i}" for i in range(4)]
    for name in names:
        make_artifact(out, name, keys["private"], payload=random_bytes(2 << 20, seed=2))
    proc = publisher(out, store, keys["public"], delay=0.2)
    if kill_point == "mid-copy":  # a staging copy exists: files half copied
        _wait_for(lambda: any(store.glob(".staging-*/model.onnx")))
    else:  # a version is in place, the index not yet rebuilt
        _wait_for(lambda: any(p.is_dir() for p in store.glob("m*/*")))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(list(store.glob("m*/*"))) < len(names), "killed too late to mean anything"
    assert_store_consistent(store, keys["public"])

    done = publish(out, store, keys["public"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(row["name"] for row in index(store)) == names  # each exactly once
    assert not list(store.glob(".staging-*"))
    assert_store_consistent(store, keys["public"])


def test_a_publisher_waits_while_another_holds_the_store_lock(keys, tmp_path):
    """The serialisation itself, deterministically: while this test holds STORE/.lock, a
    publisher writes nothing; released, it publishes."""
    import fcntl

    store, out = tmp_path / "store", tmp_path / "out"
    make_artifact(out, "waiter", keys["private"])
    store.mkdir()
    with open(store / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = publisher(out, store, keys["public"], delay=0)
        # The publisher says it waits once it has found the lock taken: an event, not a
        # guess at how long a process takes to start on a loaded machine.
        waiting = proc.stdout.readline()
        assert waiting.startswith("waiting: another publisher holds"), (
            waiting + proc.stdout.read() + proc.stderr.read())
        assert proc.poll() is None                     # still blocked on the lock
        assert not (store / "waiter").exists() and not (store / "index.json").exists()
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out_text + err
    assert [row["name"] for row in index(store)] == ["waiter"]


def test_two_publishers_at_once_do_not_corrupt_the_index(keys, tmp_path):
    store = tmp_path / "store"
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for i, out in enumerate(outs):
        for j in range(3):
            make_artifact(out, f"p{i}-{j}", keys["private"])
    procs = [publisher(out, store, keys["public"], delay=0.05) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert sorted(row["name"] for row in index(store)) == sorted(
        f"p{i}-{j}" for i in range(2) for j in range(3))
    assert_store_consistent(store, keys["public"])


@pytest.mark.parametrize("ray_address, sample_var, sample", [
    ("", "", "40"),                 # a hosted runner alone: a seeded sample, said so
    ("head:6379", "", ""),          # a Ray cluster: the whole zoo
    ("", "all", ""), ("head:6379", "12", "12")])
def test_nightly_sweeps_each_zoo_and_its_peer_list(tmp_path, ray_address, sample_var, sample):
    """The nightly's zoo-sweep job: one per source, each with its peer list
    (scripts/peer_lists.py), the whole zoo on a Ray cluster and a sample of 40 on a runner
    alone. Its step's script runs here under bash with `make` recording its arguments."""
    import yaml

    sys.path.insert(0, str(REPO / "scripts"))
    from peer_lists import PEER_LISTS

    job = yaml.safe_load((REPO / ".github" / "workflows" / "nightly.yml").read_text())[
        "jobs"]["zoo-sweep"]
    pairs = {(m["source"], m["list"]) for m in job["strategy"]["matrix"]["include"]}
    assert pairs == {(peer.source, name) for name, peer in PEER_LISTS.items()}
    step = next(s for s in job["steps"] if "make zoo-sweep" in s.get("run", ""))
    assert step["env"]["EXECUTOR"] == "${{ vars.RAY_ADDRESS != '' && 'ray' || 'local' }}"
    assert any("zoo-sweep/*.md" in (s.get("with") or {}).get("path", "")
               for s in job["steps"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text('#!/bin/sh\nprintf "%s|" "$@" >> "$CALLS"; echo >> "$CALLS"\n'
                                  'mkdir -p zoo-sweep; touch zoo-sweep/mindcv.md '
                                  'zoo-sweep/mindcv-popular.md\n')
    (bin_dir / "make").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "SOURCE": "mindcv",
           "LIST": "mindcv-popular", "ZOO_SWEEP_SAMPLE": sample_var, "ZOO_SWEEP_SEED": "",
           "EXECUTOR": "ray" if ray_address else "local", "RAY_ADDRESS": ray_address}
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith(f"zoo-sweep|SOURCE=mindcv|SAMPLE={sample}|"), calls
    assert calls[1] == f"zoo-sweep|LIST=mindcv-popular|EXECUTOR={env['EXECUTOR']}|" \
        "ZOO_OUT=zoo-sweep|", calls
    assert ("A sample, not the whole zoo" in done.stdout) is (sample == "40")
    # ... and the make target passes them on: a list alone, an empty SAMPLE as no --sample.
    for args, has, lacks in ((["LIST=mindcv-popular"], "--list mindcv-popular", "--source"),
                             (["SOURCE=mindcv", "SAMPLE="], "--source mindcv", "--sample"),
                             (["SOURCE=mindcv", "SAMPLE=12"], "--sample 12", "--list")):
        dry = subprocess.run(["make", "-n", "zoo-sweep", *args], cwd=REPO,
                             capture_output=True, text=True).stdout
        command = dry.split("scripts/zoo_sweep.py", 1)[1]   # its arguments, continued lines
        assert has in command and lacks not in command, dry


def test_nightly_workflow_is_valid_and_calls_the_make_targets():
    import yaml

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "nightly.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1: on == True
    assert triggers["schedule"][0]["cron"]
    steps = workflow["jobs"]["nightly"]["steps"]
    runs = " ".join(step.get("run", "") for step in steps)
    assert "make setup" in runs and "make nightly ONLINE=1" in runs
    # No cache holds the store or the environments (caches are evicted; the store must not
    # be); uv's download cache is keyed by the lock files.
    caches = {step["with"]["path"]: step["with"]["key"] for step in steps
              if step.get("uses", "").startswith("actions/cache")}
    assert ".uv-cache" in caches and "hashFiles('envs/*.lock.txt')" in caches[".uv-cache"]
    assert not {"store", "store/", ".venvs"} & set(caches), caches
    assert workflow["jobs"]["nightly"]["env"]["UV_CACHE_DIR"].endswith("/.uv-cache")
    # ... and pruned for CI before the cache is saved (the full one is 9.8 GB, README).
    assert "uv\" cache prune --ci" in steps[-1]["run"] and steps[-1]["if"] == "always()"
    publish_step = next(s for s in steps if "make nightly ONLINE=1" in s.get("run", ""))
    assert publish_step["env"]["STORE_URL"] == "${{ vars.STORE_URL }}"
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert publish_step["env"][secret] == "${{ secrets.%s }}" % secret
    assert "::warning" in publish_step["run"] and "will not persist" in publish_step["run"]
    uploads = {step["with"]["path"]: step.get("if", "") for step in steps
               if step.get("uses", "").startswith("actions/upload-artifact")}
    assert "vars.STORE_URL == ''" in uploads["store/"]   # the folder only when no STORE_URL
    assert any("report.json" in path for path in uploads)
    makefile = (REPO / "Makefile").read_text()
    for target in ("setup", "nightly", "publish", "verify-artifact"):
        assert f"\n{target}:" in makefile, target
    dry = subprocess.run(["make", "-n", "nightly", "ONLINE=1", "SIGNING_KEY=k",
                          "PUBLIC_KEY=p"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and "scripts/nightly.sh" in dry.stdout
    # `make clean` removes a folder store, never a path made from a store URL.
    for store, removed in (("my-store", True), ("s3://models/nightly", False)):
        clean = subprocess.run(["make", "--no-print-directory", "-n", "clean",
                                f"STORE={store}"], cwd=REPO, capture_output=True,
                               text=True).stdout   # (under `make test` too: no directory lines)
        [rm] = [line for line in clean.splitlines() if line.startswith("rm -rf ")]
        assert (store in rm) is removed, clean
    for script in (REPO / "scripts").glob("*.sh"):  # make -n does not parse them
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, (script.name, syntax.stderr)
