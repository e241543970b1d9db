"""Stores that are not a local folder: s3:// against a real S3-compatible server (moto's
server mode, started on loopback by conftest.s3_server, signatures checked), and file:// URLs.

The same guarantees as the folder store (test_signing_publish.py): idempotent versions, a
version visible only whole, publishers that never corrupt the index, a killed publisher that
leaves nothing half-visible, retention, --skip-unchanged from the store's index, and clear
errors for wrong credentials or a missing bucket with nothing lost."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import REPO, child_env, random_bytes, run_pipeline
from test_signing_publish import WHOLE, make_artifact

pytestmark = pytest.mark.xdist_group("s3")   # one moto server per worker is enough


def publish(s3, out: Path, url: str, public_key: Path, *extra: str, **env: str):
    return run_pipeline("publish", "--from", str(out), "--to", url, "--public-key",
                        str(public_key), *extra, env=s3.env(**env), timeout=600)


def index(s3, bucket: str, prefix: str = "nightly") -> list[dict]:
    body = s3.client().get_object(Bucket=bucket, Key=f"{prefix}/index.json")["Body"].read()
    return json.loads(body)["artifacts"]


def tree(folder: Path) -> dict[str, str]:
    """Every file under FOLDER (hidden ones too) and its sha256: 'nothing lost' made exact."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_to_s3_is_whole_and_idempotent_and_verifies_from_the_store(
        s3_server, keys, tmp_path):
    s3, bucket = s3_server, s3_server.bucket()
    url = f"s3://{bucket}/nightly"
    out = tmp_path / "out"
    make_artifact(out, "a", keys["private"], extra=WHOLE)
    make_artifact(out, "b", keys["private"])
    make_artifact(out, "unsigned", None)
    proc = publish(s3, out, url, keys["public"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "published 2, already there 0, skipped 1, refused 0" in proc.stdout
    assert f"index: {url}/index.md" in proc.stdout
    rows = index(s3, bucket)
    assert [row["name"] for row in rows] == ["a", "b"]
    objects = s3.objects(bucket)
    version = rows[0]["version"]
    # The version holds every signed file, with the marker that makes it visible beside it.
    assert sorted(k for k in objects if k.startswith(f"nightly/a/{version}/")) == sorted(
        f"nightly/a/{version}/{p.name}" for p in (out / "a").iterdir())
    marker = json.loads(s3.client().get_object(
        Bucket=bucket, Key=f"nightly/.published/a/{version}.json")["Body"].read())
    assert marker["files"]["labels.txt"] == hashlib.sha256(WHOLE["labels.txt"]).hexdigest()
    assert rows[0]["published"] == marker["published"]
    md = s3.client().get_object(Bucket=bucket, Key="nightly/index.md")["Body"].read().decode()
    assert "| a |" in md and "| b |" in md

    again = publish(s3, out, url, keys["public"])
    assert again.returncode == 0 and "published 0, already there 2" in again.stdout
    after = s3.objects(bucket)
    assert {k: v for k, v in after.items() if not k.startswith("nightly/index.")} == \
        {k: v for k, v in objects.items() if not k.startswith("nightly/index.")}

    # verify-artifact reads a version from the store: the newest by NAME, or a given one.
    for ref in (f"{url}/a", f"{url}/a/{version}"):
        proc = run_pipeline("verify-artifact", ref, "--public-key", str(keys["public"]),
                            env=s3.env())
        assert proc.returncode == 0 and f"OK: {version}" in proc.stdout, proc.stderr
        assert f"fetched a/{version} from {ref}" in proc.stderr
    wrong_key = run_pipeline("verify-artifact", f"{url}/a", "--public-key",
                             str(keys["other_public"]), env=s3.env())
    assert wrong_key.returncode == 1 and "FAILED" in wrong_key.stderr
    # A changed byte in the store is caught like a changed byte in a folder.
    s3.client().put_object(Bucket=bucket, Key=f"nightly/b/{rows[1]['version']}/model.onnx",
                           Body=b"tampered")
    tampered = run_pipeline("verify-artifact", f"{url}/b", "--public-key",
                            str(keys["public"]), env=s3.env())
    assert tampered.returncode == 2 and "does not have the sha256 its publisher recorded" \
        in tampered.stderr, tampered.stderr
    missing = run_pipeline("verify-artifact", f"{url}/nobody", "--public-key",
                           str(keys["public"]), env=s3.env())
    assert missing.returncode == 2 and "has no published version of 'nobody'" in missing.stderr


def test_predict_reads_an_artifact_from_the_store(s3_server, keys, tmp_path):
    """predict on s3://.../NAME gives what it gives on the artifact folder it came from."""
    from conftest import manifest_entries
    from deploy.metadata import embed
    from deploy.preprocess import contract
    from verify.images import generate_images

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                               helper.make_node("Flatten", ["pooled"], ["logits"])],
                              "g", [x], [y])
    bare, model = tmp_path / "bare.onnx", tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=9), str(bare))
    spec = contract(manifest_entries()["res2net50-w14-s8"]["preprocess"], [3, 224, 224])
    embed(bare, model, {"preprocess": spec, "labels": ["red", "green", "blue"]})
    out = tmp_path / "out"
    art = make_artifact(out, "tiny", keys["private"], payload=model.read_bytes())
    [image] = generate_images(tmp_path / "img", 1, seed=5)
    s3, bucket = s3_server, s3_server.bucket()
    assert publish(s3, out, f"s3://{bucket}/nightly", keys["public"]).returncode == 0

    local = run_pipeline("predict", str(art), str(image), "--json")
    remote = run_pipeline("predict", f"s3://{bucket}/nightly/tiny", str(image), "--json",
                          "--public-key", str(keys["public"]), env=s3.env())
    assert local.returncode == 0 and remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)[0]["top"] == json.loads(local.stdout)[0]["top"]


def test_wrong_credentials_and_a_missing_bucket_are_named_and_nothing_is_lost(
        s3_server, keys, tmp_path):
    s3, bucket = s3_server, s3_server.bucket()
    out = tmp_path / "out"
    make_artifact(out, "a", keys["private"])
    before = tree(out)
    cases = {
        "wrong secret": (f"s3://{bucket}/nightly", {"AWS_SECRET_ACCESS_KEY": "wrong"},
                         "refused the credentials", "SignatureDoesNotMatch"),
        "unknown key": (f"s3://{bucket}/nightly", {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY"},
                        "refused the credentials", "InvalidAccessKeyId"),
        "no bucket": ("s3://no-such-bucket/nightly", {},
                      "bucket 'no-such-bucket' does not exist", "aws s3 mb"),
    }
    for case, (url, env, says, detail) in cases.items():
        proc = publish(s3, out, url, keys["public"], **env)
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert says in proc.stderr and detail in proc.stderr, (case, proc.stderr)
        assert "Traceback" not in proc.stderr, case
        assert tree(out) == before, case   # the run's artifacts are untouched
    assert s3.objects(bucket) == {}        # and nothing reached the store
    # --skip-unchanged says so before any work, naming the option.
    proc = run_pipeline("--only", "res2net50-w14-s8", "--skip-unchanged",
                        f"s3://{bucket}/nightly", "--out", str(tmp_path / "run"),
                        env=s3.env(AWS_SECRET_ACCESS_KEY="wrong"))
    assert proc.returncode == 2 and "--skip-unchanged: store s3://" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()
    # An unreachable endpoint, and stores that are not stores.
    closed = publish(s3, out, f"s3://{bucket}/x", keys["public"],
                     AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_MAX_ATTEMPTS="1")
    assert closed.returncode == 2 and "cannot reach the S3 endpoint" in closed.stderr
    for url, says in (("ftp://host/store", "scheme ftp:// is not supported"),
                      ("s3://", "no bucket in the URL"),
                      ("file://relative/store", "takes an absolute path")):
        proc = publish(s3, out, url, keys["public"])
        assert proc.returncode == 2 and says in proc.stderr, (url, proc.stderr)
    assert tree(out) == before
    assert not (REPO / "ftp:").exists() and not (REPO / "s3:").exists()


def test_no_credentials_at_all_are_named_with_the_variables_to_set(s3_server, tmp_path,
                                                                    monkeypatch):
    """No key in the environment, no credentials file, no instance metadata: the store says
    which variables to set (in-process: boto3's NoCredentialsError, not a traceback)."""
    from release.store import StoreError, open_store

    s3, bucket = s3_server, s3_server.bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    url = f"s3://{bucket}/nightly"
    with pytest.raises(StoreError) as caught:
        open_store(url).read_index()
    message = str(caught.value)
    assert message.startswith(f"store {url}: no S3 credentials while ")
    assert message.endswith(": set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                            "AWS_PROFILE)")


def test_a_file_url_is_the_folder_it_names(keys, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    make_artifact(out, "a", keys["private"])
    proc = run_pipeline("publish", "--from", str(out), "--to", f"file://{store}",
                        "--public-key", str(keys["public"]))
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads((store / "index.json").read_text())["artifacts"]
    assert (store / "a" / row["version"] / "model.sig").is_file()
    proc = run_pipeline("verify-artifact", f"file://{store}/a", "--public-key",
                        str(keys["public"]))
    assert proc.returncode == 0 and "OK:" in proc.stdout, proc.stderr


def _publisher(s3, out: Path, url: str, public_key: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "pipeline.py"), "publish", "--from",
                             str(out), "--to", url, "--public-key", str(public_key)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_env(**s3.env(),
                                                     MODEL_CONVERT_PUBLISH_STEP_DELAY=str(delay)))


def test_two_publishers_at_once_on_s3_do_not_lose_a_version(s3_server, keys, tmp_path):
    s3, bucket = s3_server, s3_server.bucket()
    url = f"s3://{bucket}/nightly"
    outs = [tmp_path / "out1", tmp_path / "out2"]
    for i, out in enumerate(outs):
        for j in range(3):
            make_artifact(out, f"p{i}-{j}", keys["private"])
    procs = [_publisher(s3, out, url, keys["public"], delay=0.05) for out in outs]
    for proc in procs:
        stdout, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout + err
    names = sorted(f"p{i}-{j}" for i in range(2) for j in range(3))
    assert sorted(row["name"] for row in index(s3, bucket)) == names
    md = s3.client().get_object(Bucket=bucket, Key="nightly/index.md")["Body"].read().decode()
    assert all(f"| {name} |" in md for name in names)


def test_the_index_is_replaced_only_on_the_etag_it_was_built_from(s3_server, keys, tmp_path,
                                                                   monkeypatch):
    """The compare-and-swap itself, deterministically: another publisher writes index.json
    while this one is building its rows; the write on the stale ETag is refused, and the
    index is built again from a fresh listing that includes the other's version."""
    from release.publish import write_index
    from release.store import open_store

    s3, bucket = s3_server, s3_server.bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/nightly"
    first, second = tmp_path / "first", tmp_path / "second"
    make_artifact(first, "mine", keys["private"])
    make_artifact(second, "theirs", keys["private"])
    assert publish(s3, first, url, keys["public"]).returncode == 0

    store = open_store(url)
    real_versions, builds, said = store.versions, [], []

    def versions():
        found = real_versions()
        if not builds:   # the first build: the other publisher lands meanwhile
            assert publish(s3, second, url, keys["public"]).returncode == 0
        builds.append(sorted(found))
        return found

    monkeypatch.setattr(store, "versions", versions)
    rows = write_index(store, say=said.append)
    assert builds == [["mine"], ["mine", "theirs"]]
    assert said == ["  index     another publisher wrote the index meanwhile; listing again"]
    assert [row["name"] for row in rows] == ["mine", "theirs"]
    assert [row["name"] for row in index(s3, bucket)] == ["mine", "theirs"]


def test_a_publisher_killed_mid_upload_leaves_nothing_half_visible(s3_server, keys, tmp_path):
    s3, bucket = s3_server, s3_server.bucket()
    url = f"s3://{bucket}/nightly"
    out = tmp_path / "out"
    names = [f"m{i}" for i in range(3)]
    for name in names:
        make_artifact(out, name, keys["private"], payload=random_bytes(1 << 20, seed=3))
    proc = _publisher(s3, out, url, keys["public"], delay=0.3)
    deadline = time.monotonic() + 120
    # Killed once some of a version's files are uploaded and its marker is not written.
    while not any(k.startswith("nightly/m0/") for k in s3.objects(bucket)):
        assert proc.poll() is None and time.monotonic() < deadline, "no upload started"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = s3.objects(bucket)
    assert not any(k.startswith("nightly/.published/m0/") for k in partial), \
        "killed too late to mean anything"
    # Nobody sees the half-uploaded version: not the index, not a reader, not --skip-unchanged.
    assert "nightly/index.json" not in partial
    proc = run_pipeline("verify-artifact", f"{url}/m0", "--public-key", str(keys["public"]),
                        env=s3.env())
    assert proc.returncode == 2 and "has no published version of 'm0'" in proc.stderr

    done = publish(s3, out, url, keys["public"])
    assert done.returncode == 0, done.stdout + done.stderr
    rows = index(s3, bucket)
    assert sorted(row["name"] for row in rows) == names   # each exactly once
    for row in rows:
        proc = run_pipeline("verify-artifact", f"{url}/{row['name']}", "--public-key",
                            str(keys["public"]), env=s3.env())
        assert proc.returncode == 0, proc.stderr


def test_leftovers_of_a_killed_publisher_are_removed_once_old(s3_server, keys, tmp_path,
                                                               monkeypatch):
    """Unmarked files of a version are a killed publisher's; a later publisher removes them
    once they are older than ORPHAN_AGE (younger ones may be a live publisher's upload)."""
    from release import s3_store

    s3, bucket = s3_server, s3_server.bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    orphan = "nightly/gone/20260101T000000Z-0123456789ab/model.onnx"
    s3.client().put_object(Bucket=bucket, Key=orphan, Body=b"half")
    out = tmp_path / "out"
    make_artifact(out, "a", keys["private"])
    said = []
    from release.publish import publish as publish_store

    publish_store(out, f"s3://{bucket}/nightly", keys["public"], say=said.append)
    assert orphan in s3.objects(bucket)                   # young: left alone
    monkeypatch.setattr(s3_store, "ORPHAN_AGE", -60)
    publish_store(out, f"s3://{bucket}/nightly", keys["public"], say=said.append)
    assert orphan not in s3.objects(bucket)
    assert any("gone/20260101T000000Z-0123456789ab/model.onnx (left by a publisher" in line
               for line in said)
    assert [row["name"] for row in index(s3, bucket)] == ["a"]


def test_retention_keeps_the_newest_on_s3(s3_server, keys, tmp_path):
    s3, bucket = s3_server, s3_server.bucket()
    url = f"s3://{bucket}/nightly"
    for day in (1, 2, 3):
        out = tmp_path / f"out{day}"
        make_artifact(out, "m", keys["private"], created=f"2026-11-0{day}T00:00:00+00:00",
                      extra=WHOLE)
        proc = publish(s3, out, url, keys["public"], "--keep", "2")
        assert proc.returncode == 0, proc.stderr
    versions = [row["version"] for row in index(s3, bucket)]
    assert [v[:8] for v in versions] == ["20261102", "20261103"]
    # The retired version is gone entirely: its marker and every file.
    assert {k.split("/")[2] for k in s3.objects(bucket) if k.startswith("nightly/m/")} == \
        set(versions)
    assert sorted(k for k in s3.objects(bucket) if k.startswith("nightly/.published/")) == \
        [f"nightly/.published/m/{v}.json" for v in versions]


def test_retiring_a_version_another_publisher_retired_already_is_a_no_op(
        s3_server, keys, tmp_path, monkeypatch):
    """Two publishers' retention can pick the same old version: the second finds its marker
    gone, deletes nothing and does not fail. (And a download into new folders, or of a
    version that is not there.)"""
    from release.store import StoreError, open_store

    s3, bucket = s3_server, s3_server.bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/nightly"
    make_artifact(tmp_path / "out", "m", keys["private"])
    assert publish(s3, tmp_path / "out", url, keys["public"]).returncode == 0
    before = sorted(s3.objects(bucket))
    store = open_store(url)
    [version] = [row["version"] for row in index(s3, bucket)]
    got = store.download("m", version, tmp_path / "deep" / "er")    # its folders made
    assert got == tmp_path / "deep" / "er" and (got / "report.json").is_file()
    store.retire("m", "20000101T000000Z-gone")
    assert sorted(s3.objects(bucket)) == before
    with pytest.raises(StoreError) as missing:     # download of a version never published
        store.download("m", "20000101T000000Z-gone", tmp_path / "d")
    assert str(missing.value) == f"store {url} has no version m/20000101T000000Z-gone"
    store.retire("m", version)
    store.retire("m", version)                     # the second publisher, too late
    assert not [k for k in s3.objects(bucket) if f"/{version}" in k]


def test_skip_unchanged_reads_the_remote_index(s3_server, keys, tmp_path, monkeypatch):
    """--skip-unchanged compares this run's inputs fingerprint with the one the store's
    index records for the newest version (one GET), and finds nothing in an empty store."""
    from orchestrator.fingerprint import unchanged_since

    s3, bucket = s3_server, s3_server.bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/nightly"
    assert unchanged_since(url, "m", "a" * 64) is None
    out = tmp_path / "out"
    make_artifact(out, "m", keys["private"], inputs="a" * 64)
    assert publish(s3, out, url, keys["public"]).returncode == 0
    [row] = index(s3, bucket)
    assert row["inputs_fingerprint"] == "a" * 64
    assert unchanged_since(url, "m", "a" * 64) == row["version"]
    assert unchanged_since(url, "m", "b" * 64) is None
    assert unchanged_since(url, "other", "a" * 64) is None
    # The index, not the report, is what is read: a different fingerprint in the index
    # changes the answer although report.json is as it was.
    edited = json.loads(s3.client().get_object(Bucket=bucket, Key="nightly/index.json")
                        ["Body"].read())
    edited["artifacts"][0]["inputs_fingerprint"] = "c" * 64
    s3.client().put_object(Bucket=bucket, Key="nightly/index.json",
                           Body=json.dumps(edited).encode())
    assert unchanged_since(url, "m", "a" * 64) is None
    assert unchanged_since(url, "m", "c" * 64) == row["version"]


def test_a_server_that_ignores_conditional_writes_is_refused(s3_server, keys, tmp_path,
                                                              monkeypatch):
    """docs/publishing.md: a server that does not honour If-None-Match / If-Match would let
    publishers overwrite each other's index, so the first publish of a session probes it and
    refuses. Such a server is stood for by dropping the conditions from every write (moto
    honours them); the probe leaves nothing behind and nothing is published."""
    from release import s3_store
    from release import store as store_module
    from release.publish import publish as publish_store

    s3, bucket = s3_server, s3_server.bucket()
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    make_artifact(out, "a", keys["private"])
    real_put = s3_store.S3Store._put
    monkeypatch.setattr(s3_store.S3Store, "_put",
                        lambda self, data, *parts, **conditions: real_put(self, data, *parts))
    with pytest.raises(store_module.StoreError, match="ignores conditional writes"):
        publish_store(out, f"s3://{bucket}/nightly", keys["public"], say=lambda _: None)
    assert s3.objects(bucket) == {}
