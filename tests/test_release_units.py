"""release/ called in-process (publish, the index, provenance, the deployable files), each
result written out by hand here and compared whole, so that one changed field, string or
condition fails a test. The command-line behaviour is in test_signing_publish.py."""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
from importlib.metadata import version as installed
from pathlib import Path

import pytest

from release import provenance as prov
from release.store import LocalStore, StoreError
from release.publish import (publish, render_markdown, version_of,
                             write_index)
from conftest import REPO, child_env
from test_signing_publish import make_artifact, statement

SHA = {k: k * 64 for k in "abcdef0123456789"}


# --------------------------------------------------------------------------- provenance
def full_report(**over) -> dict:
    report = {
        "name": "r2n", "created": "2026-11-20T10:00:00+00:00", "run_id": "run-7",
        "entry": {"name": "r2n", "source": "mmpretrain", "model_id": "m"},
        "source": {"framework": "mmpretrain", "model_id": "m",
                   "versions": {"torch": "2.1.0", "mmpretrain": "1.2.0"},
                   "checkpoint": {"url": "https://h/r2n.pth", "sha256": SHA["c"],
                                  "pinned": True, "digest_check": "full", "bytes": 10,
                                  "layout": None, "demo": False, "note": None}},
        "pipeline": {"git_commit": "1234abcd+dirty"},
        "onnx": {"sha256": SHA["a"]},
        "variants": {"fp16": {"file": "model.fp16.onnx", "sha256": SHA["b"]},
                     "int8": {"file": None, "sha256": None}},
        "deploy": {"files": {"model.onnx": SHA["a"], "preprocess.json": SHA["d"],
                             "labels.txt": SHA["e"]}},
        "inputs": {"digest": SHA["f"], "parts": {
            "locks": {"paddle": SHA["1"], "orchestrator": SHA["2"]},
            "precisions": ["fp32", "fp16"], "dataset_sha256": SHA["3"],
            "options": {"batch": 8}}},
    }
    report.update(over)
    return report


def test_provenance_statement_is_the_documented_slsa_v1_document():
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    got = prov.build_provenance(full_report(), "k" * 64)
    after = dt.datetime.now(dt.timezone.utc)
    finished = got["predicate"]["runDetails"]["metadata"].pop("finishedOn")
    assert before <= dt.datetime.fromisoformat(finished) <= after
    versions = {"python": sys.version.split()[0], "platform": platform.platform(),
                **{p: installed(p) for p in ("onnx", "onnxruntime", "onnxsim",
                                             "onnxconverter-common", "numpy",
                                             "model-signing")},
                "source:torch": "2.1.0", "source:mmpretrain": "1.2.0"}
    assert got == {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "model.onnx", "digest": {"sha256": SHA["a"]}},
                    {"name": "model.fp16.onnx", "digest": {"sha256": SHA["b"]}},
                    {"name": "preprocess.json", "digest": {"sha256": SHA["d"]}},
                    {"name": "labels.txt", "digest": {"sha256": SHA["e"]}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": prov.BUILD_TYPE,
                "externalParameters": {
                    "manifest_entry": {"name": "r2n", "source": "mmpretrain", "model_id": "m"},
                    "precisions": ["fp32", "fp16"], "dataset_sha256": SHA["3"],
                    "options": {"batch": 8}},
                "internalParameters": {"inputs": full_report()["inputs"],
                                       "signer_public_key_sha256": "k" * 64},
                "resolvedDependencies": [
                    {"name": "checkpoint", "uri": "https://h/r2n.pth",
                     "digest": {"sha256": SHA["c"]},
                     "annotations": {"pinned": True, "digest_check": "full", "bytes": 10,
                                     "demo": False}},
                    {"name": "source", "uri": "git+file://model-convert",
                     "digest": {"gitCommit": "1234abcd"},
                     "annotations": {"uncommitted_changes": True}},
                    {"name": "envs/orchestrator.lock.txt", "digest": {"sha256": SHA["2"]}},
                    {"name": "envs/paddle.lock.txt", "digest": {"sha256": SHA["1"]}}]},
            "runDetails": {
                "builder": {"id": "https://github.com/model-convert/model-convert/pipeline.py",
                            "version": versions},
                "metadata": {"invocationId": "run-7",
                             "startedOn": "2026-11-20T10:00:00+00:00"}}}}
    got["predicate"]["runDetails"]["metadata"]["finishedOn"] = finished
    prov.check_statement(got)


def test_provenance_without_url_commit_or_run_id():
    checkpoint = {"path": "/cache/ck.pth", "sha256": SHA["c"]}
    report = full_report(source={"framework": "paddleclas", "model_id": "m",
                                 "checkpoint": checkpoint},
                         pipeline={"git_commit": "unknown"}, inputs=None, variants=None,
                         deploy=None)
    del report["run_id"]
    got = prov.build_provenance(report, None)
    build = got["predicate"]["buildDefinition"]
    assert got["subject"] == [{"name": "model.onnx", "digest": {"sha256": SHA["a"]}}]
    assert build["resolvedDependencies"] == [
        {"name": "checkpoint", "uri": "file:///cache/ck.pth", "digest": {"sha256": SHA["c"]},
         "annotations": {}}]
    assert build["externalParameters"] == {"manifest_entry": report["entry"], "precisions": None,
                                           "dataset_sha256": None, "options": None}
    assert build["internalParameters"] == {"inputs": {}, "signer_public_key_sha256": None}
    assert got["predicate"]["runDetails"]["metadata"]["invocationId"] == report["created"]
    assert not [k for k in got["predicate"]["runDetails"]["builder"]["version"]
                if k.startswith("source:")]
    # A clean commit: a source dependency without the uncommitted-changes annotation.
    clean = prov.build_provenance(full_report(pipeline={"git_commit": "beef"}), None)
    assert clean["predicate"]["buildDefinition"]["resolvedDependencies"][1] == {
        "name": "source", "uri": "git+file://model-convert", "digest": {"gitCommit": "beef"}}
    assert prov.checkpoint_dependency(clean)["uri"] == "https://h/r2n.pth"
    clean["predicate"]["buildDefinition"]["resolvedDependencies"].pop(0)
    assert prov.checkpoint_dependency(clean) is None


def _broken(path: str, value) -> dict:
    """The valid minimal statement with one field (dotted path) replaced or removed."""
    doc = statement(SHA["a"])
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("path,value,message", [
    ("_type", "https://in-toto.io/Statement/v0.1",
     "_type is not https://in-toto.io/Statement/v1"),
    ("_type", KeyError, "_type is not https://in-toto.io/Statement/v1"),
    ("predicateType", "https://slsa.dev/provenance/v0.2",
     "predicateType is not https://slsa.dev/provenance/v1"),
    ("subject", [], "subject must be a non-empty list"),
    ("subject", {"name": "model.onnx"}, "subject must be a non-empty list"),
    ("subject", [{"name": "model.onnx", "digest": {}}],
     "subject {'name': 'model.onnx', 'digest': {}} needs a name and a digest"),
    ("subject", [{"name": 3, "digest": {"sha256": "a"}}],
     "subject {'name': 3, 'digest': {'sha256': 'a'}} needs a name and a digest"),
    ("subject", [{"name": "m", "digest": "sha256:a"}],
     "subject {'name': 'm', 'digest': 'sha256:a'} needs a name and a digest"),
    ("subject", ["model.onnx"], "subject 'model.onnx' needs a name and a digest"),
    ("predicate.buildDefinition.buildType", "no-scheme",
     "predicate.buildDefinition.buildType must be a URI"),
    ("predicate.buildDefinition.buildType", KeyError,
     "predicate.buildDefinition.buildType must be a URI"),
    ("predicate.buildDefinition.externalParameters", [],
     "predicate.buildDefinition.externalParameters must be an object"),
    ("predicate.buildDefinition.resolvedDependencies", [{"name": "checkpoint"}],
     "resolvedDependency {'name': 'checkpoint'} needs a uri, digest or content"),
    ("predicate.buildDefinition.resolvedDependencies", ["x"],
     "resolvedDependency 'x' needs a uri, digest or content"),
    ("predicate.runDetails.builder", {"id": None},
     "predicate.runDetails.builder.id must be a URI"),
    ("predicate.runDetails.builder", KeyError, "predicate.runDetails.builder.id must be a URI"),
    ("predicate.runDetails.metadata.startedOn", "yesterday",
     "runDetails.metadata.startedOn 'yesterday' is not a timestamp"),
    ("predicate.runDetails.metadata.finishedOn", 5,
     "runDetails.metadata.finishedOn 5 is not a timestamp"),
])
def test_check_statement_names_what_differs(path, value, message):
    with pytest.raises(prov.ProvenanceError) as caught:
        prov.check_statement(_broken(path, value))
    assert str(caught.value) == f"provenance.json: {message}"


@pytest.mark.parametrize("path,value", [
    ("predicate.runDetails.metadata.startedOn", KeyError),     # optional
    ("predicate.runDetails.metadata", KeyError),
    ("predicate.buildDefinition.resolvedDependencies", KeyError),
    ("predicate.buildDefinition.resolvedDependencies", [{"content": "eA=="}]),
    ("predicate.buildDefinition.resolvedDependencies", [{"uri": "https://x"}]),
    ("predicate.buildDefinition.resolvedDependencies", [{"digest": {"sha1": "0"}}]),
])
def test_check_statement_accepts_what_slsa_leaves_optional(path, value):
    prov.check_statement(_broken(path, value))


def test_check_statement_refuses_a_non_object():
    with pytest.raises(prov.ProvenanceError, match=r"^provenance.json: not a JSON object$"):
        prov.check_statement(["_type"])


# --------------------------------------------------------------------------- publish
def _version(artifact: Path, created: str) -> str:
    """<creation time>-<first 12 hex of model.sig's sha256>, worked out here."""
    stamp = dt.datetime.fromisoformat(created).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256((artifact / 'model.sig').read_bytes()).hexdigest()[:12]}"


def test_publish_in_process_reports_each_artifact_and_says_why(keys, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    created = "2026-11-21T08:09:10+00:00"
    good = make_artifact(out, "good", keys["private"], created=created)
    make_artifact(out, "an-unsigned", None)    # before "good": each refusal goes on to the next
    make_artifact(out, "failed", keys["private"], passed=False)
    (out / "empty").mkdir()
    (out / "listy").mkdir()
    (out / "listy" / "report.json").write_text("[1, 2]")
    (out / "broken").mkdir()
    (out / "broken" / "report.json").write_text("{not json")
    (out / "deep").mkdir()
    (out / "deep" / "report.json").write_text("[" * 65 + "]" * 65)
    (out / "undecided").mkdir()
    (out / "undecided" / "report.json").write_text('{"passed": false}')
    (out / ".hidden").mkdir()
    (out / "a-file").write_text("not a directory")
    (store / ".staging-left-by-a-killed-publisher").mkdir(parents=True)
    said: list[str] = []
    result = publish(out, store, keys["public"], say=said.append)

    version = _version(good, created)
    assert version_of(good, {"created": created}) == version
    assert result.published == [f"good/{version}"] and result.unchanged == []
    assert result.rejected == [] and result.removed == []
    skipped = dict(s.split(": ", 1) for s in result.skipped)
    with pytest.raises(ValueError) as json_says:        # Python's own words for it
        json.loads("{not json")
    # A refusal names the file by artifact, not by this machine's path to it.
    assert skipped == {"broken": f"report.json unreadable: {json_says.value}",
                       "deep": "report.json unreadable: deep/report.json: refused before "
                               "loading: nested more than 64 levels deep (the limit is "
                               "MODEL_CONVERT_MAX_NESTING=64; docs/usage.md, 'Limits')",
                       "empty": "no report.json",
                       "failed": "did not pass (max_abs_diff 1.0 vs 0.0005)",
                       "listy": "report.json unreadable: a JSON list, not an object",
                       "undecided": "did not pass (see its report)",
                       "an-unsigned": "not signed (run with --signing-key)"}
    assert said == [f"  publish   good/{version}"]
    assert not list(store.glob(".staging-*"))
    assert sorted(p.name for p in (store / "good" / version).iterdir()) == [
        "model.onnx", "model.sig", "provenance.json", "report.json"]
    for name in ("model.onnx", "model.sig", "provenance.json", "report.json"):
        assert (store / "good" / version / name).read_bytes() == (good / name).read_bytes()

    said.clear()
    again = publish(out, store, keys["public"], say=said.append)
    assert again.published == [] and again.unchanged == [f"good/{version}"]
    assert said == [f"  same      good/{version} is already published"]

    with pytest.raises(FileNotFoundError, match=f"--from {tmp_path / 'nowhere'} is not a"):
        publish(tmp_path / "nowhere", store, keys["public"])


def test_publish_refuses_tampered_links_and_store_links(keys, tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    tampered = make_artifact(out, "tampered", keys["private"])
    (tampered / "report.json").write_text((tampered / "report.json").read_text() + " ")
    linked = make_artifact(out, "linked", keys["private"])
    (linked / "extra").symlink_to(tmp_path)
    many = make_artifact(out, "many", keys["private"])
    for index in range(6):
        (many / f"link{index}").symlink_to(tmp_path)
    through = make_artifact(out, "through", keys["private"])
    (tmp_path / "elsewhere").mkdir()
    store.mkdir()
    (store / "through").symlink_to(tmp_path / "elsewhere")
    # A staging name that is a link: clearing stale staging neither follows it nor fails.
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep.txt").write_text("kept")
    (store / ".staging-link").symlink_to(tmp_path / "outside")
    said: list[str] = []
    result = publish(out, store, keys["public"], say=said.append)
    assert result.published == [] and result.skipped == []
    # model_signing's own wording of the mismatch is cut to the file names; how it quotes
    # them is its business (under mutmut it came with a trailing backslash), so only the
    # start of that line is pinned.
    linked_msg, many_msg, tampered_msg, through_msg = result.rejected
    assert linked_msg == (f"linked: holds symbolic links, which are never followed or "
                          f"published: extra -> {tmp_path}")
    # The first five links, in the order the folder lists them, apart by ", ".
    head = "many: holds symbolic links, which are never followed or published: "
    assert many_msg.startswith(head)
    named = many_msg[len(head):].split(", ")
    assert len(named) == len(set(named)) == 5
    assert set(named) < {f"link{index} -> {tmp_path}" for index in range(6)}
    assert tampered_msg.startswith(
        "tampered: tampered: signature does not match the files: changed file(s): report.json")
    assert through_msg == (f"through: {store / 'through'} in the store is a symbolic link; "
                           "not followed, nothing published through it")
    assert said == [f"  reject    {linked_msg}", f"  reject    {many_msg}",
                    f"  reject    {tampered_msg[len('tampered: '):]}", f"  reject    {through_msg}"]
    assert not list((tmp_path / "elsewhere").iterdir()) and through.is_dir()
    assert (tmp_path / "outside" / "keep.txt").read_text() == "kept"


def test_retention_in_process_keeps_the_newest_per_model(keys, tmp_path):
    store = tmp_path / "store"
    published = {}
    for day in (1, 2, 3):
        out = tmp_path / f"out{day}"
        for name in ("m", "n"):
            art = make_artifact(out, name, keys["private"],
                                created=f"2026-11-0{day}T00:00:00+00:00")
            published[(name, day)] = _version(art, f"2026-11-0{day}T00:00:00+00:00")
        said: list[str] = []
        result = publish(out, store, keys["public"], keep=2, say=said.append)
    assert result.removed == [f"m/{published[('m', 1)]}", f"n/{published[('n', 1)]}"]
    assert said[-2:] == [f"  retire    m/{published[('m', 1)]} (keeping the newest 2)",
                         f"  retire    n/{published[('n', 1)]} (keeping the newest 2)"]
    for name in ("m", "n"):
        assert sorted(p.name for p in (store / name).iterdir()) == [
            published[(name, 2)], published[(name, 3)]]
    assert [(r["name"], r["version"]) for r in json.loads(
        (store / "index.json").read_text())["artifacts"]] == [
        ("m", published[("m", 2)]), ("m", published[("m", 3)]),
        ("n", published[("n", 2)]), ("n", published[("n", 3)])]
    # keep=1 the newest only; keep=0 retires every version; keep=None retires none.
    assert publish(tmp_path / "out3", store, keys["public"], keep=None).removed == []
    one = publish(tmp_path / "out3", store, keys["public"], keep=1)
    assert one.removed == [f"m/{published[('m', 2)]}", f"n/{published[('n', 2)]}"]
    assert publish(tmp_path / "out2", store, keys["public"]).published == [
        f"m/{published[('m', 2)]}", f"n/{published[('n', 2)]}"]
    gone = publish(tmp_path / "out3", store, keys["public"], keep=0)
    assert sorted(gone.removed) == sorted(f"{n}/{published[(n, d)]}" for n in "mn" for d in (2, 3))
    assert json.loads((store / "index.json").read_text())["artifacts"] == []
    assert not list(store.glob(".staging-*"))


def test_store_lock_is_exclusive_and_released(tmp_path):
    store = tmp_path / "store"
    with LocalStore(store).session():
        with open(store / ".lock", "a+") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A second publisher in a thread waits until the first lets go.
        entered = threading.Event()

        def second():
            with LocalStore(store).session():
                entered.set()

        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.3)
    assert entered.wait(5)
    waiter.join()


def _rich_report(art: Path) -> dict:
    report = json.loads((art / "report.json").read_text())
    report["source"]["checkpoint"] = {"pinned": True}
    report["checks"] = [
        {"name": "max_abs_diff", "measured": 2e-6, "limit": 1e-4, "scope": {"model": "raw"}},
        {"name": "max_abs_diff", "measured": 3e-6, "limit": 5e-4,
         "scope": {"model": "simplified"}},
        {"name": "cosine_min", "measured": 0.99999, "limit": 0.9999,
         "scope": {"model": "simplified"}},
        {"name": "cosine_min", "measured": 0.5, "limit": 0.9999, "scope": {}}]
    report["variants"] = {"fp16": {"file": "model.fp16.onnx"}, "int8": {"file": None}}
    report["accuracy"] = {
        "source": {"top1": 76.5, "top5": 93.25, "images": 50},
        "onnx": {"top1": 76.0, "top5": 93.0, "images": 50}, "disagree": 1, "unreadable": 2,
        "dataset": {"layout": "folders", "images": 50, "selected": 50, "extra": "x"},
        "published": {"top1": 78.2}}
    report["signature"] = {"public_key_sha256": "0123456789abcdef" * 4}
    report["inputs"] = {"fingerprint": "f" * 64, "parts": {}}
    return report


def test_index_rows_and_table_hold_every_figure(keys, tmp_path):
    store = tmp_path / "store"
    art = make_artifact(tmp_path / "out", "rich", keys["private"],
                        created="2026-11-21T08:00:00+00:00")
    version = store / "rich" / "v1"
    version.mkdir(parents=True)
    report = _rich_report(art)
    (version / "report.json").write_text(json.dumps(report))
    os.utime(version, (1_790_000_000, 1_790_000_000))
    plain = store / "plain" / "v0"
    plain.mkdir(parents=True)
    (plain / "report.json").write_text((art / "report.json").read_text().replace(
        '"max_abs_diff"', '"other"'))
    os.utime(plain, (1_790_000_000, 1_790_000_000))
    (store / "rich" / ".staging-x").mkdir()
    (store / "linked").symlink_to(store / "rich")
    (store / "nothing").mkdir()

    rows = write_index(store)
    when = "2026-09-21T14:13:20+00:00"
    assert rows[1] == {
        "name": "rich", "version": "v1", "source": "mmpretrain", "model_id": "m",
        "precision": "fp32+fp16", "model_sha256": report["onnx"]["sha256"],
        "signature": "rich/v1/model.sig", "public_key_sha256": "0123456789abcdef" * 4,
        "logits": {"max_abs_diff": 3e-6, "limit": 5e-4, "cosine_min": 0.99999},
        "accuracy": {"source": report["accuracy"]["source"],
                     "onnx": report["accuracy"]["onnx"], "disagree": 1, "unreadable": 2,
                     "dataset": {"layout": "folders", "images": 50, "selected": 50},
                     "published": {"top1": 78.2}},
        "checkpoint_pinned": True, "demo_checkpoint": False, "inputs_fingerprint": "f" * 64,
        "created": "2026-11-21T08:00:00+00:00", "published": when}
    assert rows[0]["name"] == "plain" and rows[0]["logits"] == {
        "max_abs_diff": None, "limit": None, "cosine_min": None}
    assert rows[0]["accuracy"] is None and rows[0]["public_key_sha256"] == "k" * 64
    text = (store / "index.json").read_text()
    on_disk = json.loads(text)
    assert on_disk["artifacts"] == rows
    assert text == json.dumps(on_disk, indent=2) + "\n"     # one field a line: diffs read well
    assert dt.datetime.fromisoformat(on_disk["generated"]).tzinfo is not None
    table = (store / "index.md").read_text()
    assert table == render_markdown(rows)
    assert table.splitlines() == [
        "# Published ONNX models", "",
        "| model | version | source | precision | top-1/top-5 source | top-1/top-5 ONNX "
        "| worst logit diff (limit) | signed | checkpoint | when |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| plain | v0 | mmpretrain | fp32 | not measured | not measured | n/a "
        f"| yes, key kkkkkkkkkkkk | demo (random init) | {when} |",
        f"| rich | v1 | mmpretrain | fp32+fp16 | 76.50 / 93.25 (50 images) "
        f"| 76.00 / 93.00 (50 images) | 3.00e-06 (5.00e-04) | yes, key 0123456789ab "
        f"| pinned | {when} |"]
    assert not list(store.glob(".index*.tmp"))


def test_an_index_row_of_a_report_from_before_the_unreadable_count_says_0(keys, tmp_path):
    """Reports written before accuracy counted unreadable images have no such field."""
    art = make_artifact(tmp_path / "out", "old", keys["private"])
    report = _rich_report(art)
    del report["accuracy"]["unreadable"]
    version = tmp_path / "store" / "old" / "v1"
    version.mkdir(parents=True)
    (version / "report.json").write_text(json.dumps(report))
    [row] = write_index(tmp_path / "store")
    assert row["accuracy"]["unreadable"] == 0 and row["accuracy"]["disagree"] == 1


def test_the_index_is_utf_8_whatever_the_locale(keys, tmp_path):
    """Text from the reports reaches index.md as UTF-8 even where Python's locale encoding is
    ASCII (C locale, UTF-8 mode off)."""
    art = make_artifact(tmp_path / "out", "x", keys["private"])
    report = json.loads((art / "report.json").read_text())
    report["source"]["framework"] = "mmprétrain"
    version = tmp_path / "store" / "x" / "v1"
    version.mkdir(parents=True)
    (version / "report.json").write_text(json.dumps(report))
    code = ("import sys; from pathlib import Path; from release.publish import write_index; "
            "write_index(Path(sys.argv[1]))")
    env = child_env(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "store" / "index.md").read_bytes().decode("utf-8")
    assert "| x | v1 | mmprétrain | fp32 |" in table


def test_table_names_an_unpinned_checkpoint_and_an_empty_store():
    row = {"name": "x", "version": "v", "source": "mindcv", "precision": "fp32",
           "accuracy": {"source": {"top1": 1, "top5": 2, "images": 3}},
           "logits": {"max_abs_diff": 1.5e-5, "limit": 1e-4}, "public_key_sha256": None,
           "demo_checkpoint": False, "checkpoint_pinned": False, "published": "t"}
    assert render_markdown([row]).splitlines()[-1] == (
        "| x | v | mindcv | fp32 | 1.00 / 2.00 (3 images) | not measured "
        "| 1.50e-05 (1.00e-04) | yes, key None | not the pinned file | t |")
    assert render_markdown([]).splitlines()[-1] == "| (nothing published yet) | | | | | | | | | |"


# --------------------------------------------------------------------------- deployable
def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph)
    model.metadata_props.add(key="kept", value="yes")
    onnx.save(model, str(path))
    return path


def test_make_deployable_embeds_each_precisions_figures_and_writes_the_documents(tmp_path):
    from deploy.metadata import read
    from manifests.loader import Entry
    from release.contract_files import make_deployable

    fp32, fp16 = _tiny_onnx(tmp_path / "a.onnx"), _tiny_onnx(tmp_path / "b.onnx")
    contract = {"resize": 3, "crop": 3}
    entry = Entry({"name": "tiny", "source": "mindcv", "model_id": "t", "num_classes": 3,
                   "labels": ["cat", "dog", "eel"],
                   "published": {"top1": 70.0, "top5": 90.0, "reference": "paper"}}, "m.yaml")
    report = {"deploy": {"contract": contract}, "run_id": "r1", "created": "now",
              "pipeline": {"git_commit": "c0ffee"},
              "source": {"checkpoint": {"sha256": SHA["c"], "url": "https://h/t.ckpt"}},
              "onnx": {"sha256": "graph32", "bytes": 1},
              "variants": {"fp16": {"sha256": "graph16", "bytes": 1,
                                    "accuracy": {"top1": 60.0, "top5": 80.0, "images": 9}}},
              "accuracy": {"onnx": {"top1": 61.0, "top5": 81.0, "images": 9}},
              "inputs": {"parts": {"dataset_sha256": SHA["d"]}}}
    other = tmp_path / "notes.txt"
    other.write_text("kept as is")
    work = tmp_path / "work"
    work.mkdir()
    out = make_deployable(entry, report, {"model.onnx": fp32, "model.fp16.onnx": fp16,
                                          "notes.txt": other}, work)

    assert out == {"model.onnx": work / "shipped-model.onnx",
                   "model.fp16.onnx": work / "shipped-model.fp16.onnx", "notes.txt": other,
                   "preprocess.json": work / "preprocess.json", "labels.txt": work / "labels.txt"}
    assert json.loads((work / "preprocess.json").read_text()) == contract
    assert (work / "labels.txt").read_text() == "cat\ndog\neel\n"
    source = {"framework": "mindcv", "model_id": "t", "num_classes": 3,
              "checkpoint_sha256": SHA["c"], "checkpoint_url": "https://h/t.ckpt",
              "manifest_name": "tiny"}
    published = {"top1": 70.0, "top5": 90.0, "reference": "paper"}
    for name, precision, measured in (("model.onnx", "fp32", (61.0, 81.0)),
                                      ("model.fp16.onnx", "fp16", (60.0, 80.0))):
        meta = read(out[name])
        assert meta == {
            "preprocess": contract, "labels": ["cat", "dog", "eel"], "source": source,
            "accuracy": {"published": published, "measured": {
                "top1": measured[0], "top5": measured[1], "images": 9,
                "dataset": SHA["d"]}},
            "pipeline": {"git_commit": "c0ffee", "precision": precision, "run_id": "r1",
                         "created": "now"}}
        import onnx

        assert {p.key: p.value for p in onnx.load(str(out[name])).metadata_props}["kept"] \
            == "yes"
    digest = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in out.items()}
    assert report["onnx"] == {"sha256": digest["model.onnx"], "sha256_verified_graph": "graph32",
                              "bytes": out["model.onnx"].stat().st_size}
    assert report["variants"]["fp16"]["sha256"] == digest["model.fp16.onnx"]
    assert report["variants"]["fp16"]["sha256_verified_graph"] == "graph16"
    assert report["variants"]["fp16"]["bytes"] == out["model.fp16.onnx"].stat().st_size
    assert report["deploy"]["labels"] == {"count": 3, "source": "manifest"}
    assert report["deploy"]["files"] == {n: digest[n] for n in (
        "model.onnx", "model.fp16.onnx", "preprocess.json", "labels.txt")}


def test_deployable_accuracy_without_published_or_measured_figures(tmp_path):
    from deploy.metadata import read
    from manifests.loader import Entry
    from release.contract_files import make_deployable

    entry = Entry({"name": "n", "source": "paddleclas", "model_id": "t", "num_classes": 2},
                  "m.yaml")
    report = {"deploy": {"contract": {}}, "run_id": "r", "created": "c",
              "pipeline": {"git_commit": "g"}, "source": {"checkpoint": {"sha256": "s"}},
              "onnx": {"sha256": "x"}}
    work = tmp_path / "w"
    work.mkdir()
    out = make_deployable(entry, report, {"model.onnx": _tiny_onnx(tmp_path / "m.onnx")}, work)
    meta = read(out["model.onnx"])
    assert meta["accuracy"] == {"published": None}
    assert meta["labels"] == ["class_0", "class_1"]
    assert meta["source"]["checkpoint_url"] is None
    assert report["deploy"]["labels"]["source"].startswith("none given: index names")


def test_checkpoint_annotations_carry_every_documented_field_that_is_set():
    checkpoint = {"url": "https://h/c.pth", "sha256": SHA["c"], "pinned": False,
                  "digest_check": "none", "bytes": 0, "layout": "state_dict", "demo": True,
                  "note": "made by tests", "path": "/ignored"}
    got = prov.build_provenance(full_report(source={
        "framework": "mmpretrain", "model_id": "m", "checkpoint": checkpoint}), None)
    assert got["predicate"]["buildDefinition"]["resolvedDependencies"][0]["annotations"] == {
        "pinned": False, "digest_check": "none", "bytes": 0, "layout": "state_dict",
        "demo": True, "note": "made by tests"}


def test_figure_of_a_report_without_checks_or_scopes():
    from release.publish import _figure

    assert _figure({}, "max_abs_diff") is None
    unscoped = {"name": "max_abs_diff", "measured": 1.0}
    assert _figure({"checks": [unscoped]}, "max_abs_diff") is None
    assert _figure({"checks": [unscoped]}, "max_abs_diff", model=None) is unscoped


# --------------------------------------------------------------------------- signing keys
def test_signing_key_errors_name_the_file_and_the_need(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from release.signing import SigningError, check_signing_key

    missing = tmp_path / "missing.pem"
    with pytest.raises(SigningError) as err:
        check_signing_key(missing)
    assert str(err.value) == f"signing key not found: {missing}"
    ed = tmp_path / "ed.pem"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(SigningError) as err:
        check_signing_key(ed)
    assert str(err.value) == (
        f"signing key {ed} is a Ed25519PrivateKey; model-signing's key signer needs an "
        "elliptic-curve key (P-256 or P-384)")


def test_signing_and_verifying_errors_in_full(keys, tmp_path):
    """model_signing's own failure is passed on with its type and words; a directory of
    links is refused naming its first five links, apart by ', '."""
    from release.signing import SigningError, sign_directory, verify_directory

    art = tmp_path / "art"
    art.mkdir()
    (art / "model.onnx").write_bytes(b"model")
    (tmp_path / "not-a-key.pem").write_text("not a key")
    with pytest.raises(SigningError) as err:
        sign_directory(art, tmp_path / "not-a-key.pem")
    cause = err.value.__cause__
    assert cause is not None and str(err.value) == (
        f"model-signing could not sign art: {type(cause).__name__}: {cause}")
    for index in range(6):
        (art / f"link{index}").symlink_to(tmp_path)
    with pytest.raises(SigningError) as err:
        verify_directory(art, keys["public"])
    head = "art: holds symbolic links, which are never followed: "
    assert str(err.value).startswith(head)
    named = str(err.value)[len(head):].split(", ")
    assert len(named) == len(set(named)) == 5
    assert set(named) < {f"link{index} -> {tmp_path}" for index in range(6)}


def test_generate_key_makes_missing_folders(tmp_path):
    from release.signing import check_signing_key, generate_key, key_id

    private = tmp_path / "a" / "b" / "key.pem"
    public = generate_key(private)
    assert private.is_file() and public.parent == private.parent
    assert check_signing_key(private) == key_id(public.read_bytes())


def test_short_mismatch_names_every_changed_file_and_cuts_other_text():
    from release.signing import _short

    text = ("Signature verification failed: Hash mismatch for 'model.onnx': "
            "expected deadbeef, got 00ff. Hash mismatch for 'labels.txt': expected 1, got 2")
    assert _short(text) == "changed file(s): model.onnx, labels.txt"
    long = "".join(chr(ord("a") + i % 26) for i in range(400))
    assert _short(long) == long[:300] and len(_short(long)) == 300


# --------------------------------------------------------------------------- staging
def test_a_staging_folder_of_a_process_we_may_not_signal_is_kept(tmp_path, monkeypatch):
    """os.kill(pid, 0) raising PermissionError means the process exists (another user's)."""
    from release import artifact

    def denied(pid, sig):
        assert sig == 0
        raise PermissionError(1, "Operation not permitted")

    def gone(pid, sig):
        raise ProcessLookupError(3, "No such process")

    staging = tmp_path / f".m{artifact.STAGING_MARK}123-abc"
    staging.mkdir()
    monkeypatch.setattr(artifact.os, "kill", denied)
    artifact.clean_stale_staging(tmp_path, "m")
    assert staging.is_dir()
    monkeypatch.setattr(artifact.os, "kill", gone)
    artifact.clean_stale_staging(tmp_path, "m")
    assert not staging.exists()


def test_deployable_after_another_file_without_a_dataset_digest(tmp_path, monkeypatch):
    """A model after a non-model file still gets its metadata; measured figures without the
    dataset's digest say None; nothing is read from or written to the working folder."""
    from deploy.metadata import read
    from manifests.loader import Entry
    from release.contract_files import make_deployable

    entry = Entry({"name": "n", "source": "paddleclas", "model_id": "t", "num_classes": 2},
                  "m.yaml")
    report = {"deploy": {"contract": {}}, "run_id": "r", "created": "c",
              "pipeline": {"git_commit": "g"}, "source": {"checkpoint": {"sha256": "s"}},
              "onnx": {"sha256": "x"}, "inputs": {},
              "accuracy": {"onnx": {"top1": 1.0, "top5": 2.0, "images": 3}}}
    notes = tmp_path / "notes.txt"
    notes.write_text("n")
    model = _tiny_onnx(tmp_path / "m.onnx")
    work, cwd = tmp_path / "w", tmp_path / "cwd"
    work.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = make_deployable(entry, report, {"notes.txt": notes, "model.onnx": model}, work)
    assert read(out["model.onnx"])["accuracy"] == {
        "published": None, "measured": {"top1": 1.0, "top5": 2.0, "images": 3, "dataset": None}}
    assert list(cwd.iterdir()) == []


# Python writes text in the locale's encoding unless told otherwise; PEP 538/540 coerce only
# the C locale, and not when PYTHONCOERCECLOCALE=0 (or under another non-UTF-8 locale).
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}


def test_labels_preprocess_and_store_index_are_utf8_under_an_ascii_locale(tmp_path):
    """A non-ASCII class name and a non-ASCII artifact name, written by a process whose
    locale encoding is ASCII: labels.txt and index.md hold them in UTF-8 (before the
    encodings were pinned, this raised UnicodeEncodeError)."""
    import textwrap

    from conftest import REPO, child_env

    code = textwrap.dedent(f"""
        import locale, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / "tests")!r})
        assert locale.getpreferredencoding(False) == "ANSI_X3.4-1968", locale.getpreferredencoding()
        from test_release_units import _tiny_onnx
        from manifests.loader import Entry
        from release.contract_files import make_deployable
        from release.publish import render_markdown; from release.store import _write_atomic
        tmp = Path({str(tmp_path)!r})
        entry = Entry({{"name": "n", "source": "paddleclas", "model_id": "t", "num_classes": 2,
                        "labels": ["caf\\u00e9", "\\u732b"]}}, "m.yaml")
        report = {{"deploy": {{"contract": {{}}}}, "run_id": "r", "created": "c",
                   "pipeline": {{"git_commit": "g"}}, "source": {{"checkpoint": {{"sha256": "s"}}}},
                   "onnx": {{"sha256": "x"}}}}
        (tmp / "w").mkdir()
        make_deployable(entry, report, {{"model.onnx": _tiny_onnx(tmp / "m.onnx")}}, tmp / "w")
        _write_atomic(tmp / "index.md", "| r\\u00e9snet |")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=child_env(**ASCII_LOCALE), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "w" / "labels.txt").read_bytes() == "café\n猫\n".encode()
    assert (tmp_path / "index.md").read_bytes() == "| résnet |".encode()


def test_a_local_store_gives_a_versions_regular_files_and_nothing_through_a_link(tmp_path):
    """LocalStore.download (verify-artifact and predict from a store): the version's regular
    files into a new folder, however deep; a folder that is there already is fine; a link
    among the files, a sub-folder, a version or model folder that is a link, and a missing
    version are not followed: the last three refused, naming the store and the version."""
    store = tmp_path / "store"
    version = store / "m" / "v1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"graph")
    (version / "report.json").write_text("{}")
    (version / "sub").mkdir()
    (version / "sub" / "x").write_text("x")
    outside = tmp_path / "secret"
    outside.write_text("secret")
    (version / "linked").symlink_to(outside)
    local = LocalStore(store)
    dest = local.download("m", "v1", tmp_path / "a" / "b" / "c")
    assert dest == tmp_path / "a" / "b" / "c"
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx", "report.json"]
    assert (dest / "model.onnx").read_bytes() == b"graph"
    assert local.download("m", "v1", dest) == dest            # into an existing folder
    (store / "real").mkdir()
    (store / "real" / "v2").mkdir()
    (store / "linked-model").symlink_to(store / "real")
    (store / "m" / "v3").symlink_to(version)
    for name, ver in (("m", "v9"), ("linked-model", "v2"), ("m", "v3")):
        with pytest.raises(StoreError) as refused:
            local.download(name, ver, tmp_path / "out")
        assert str(refused.value) == f"store {local.url} has no version {name}/{ver}"
    assert not (tmp_path / "out").exists()


def test_each_s3_failure_becomes_one_store_error_that_says_what_to_do(monkeypatch):
    """release/s3_store.py S3Store._fail on the exceptions botocore raises (its own classes):
    missing credentials, an unreachable endpoint, refused credentials, a missing bucket,
    any other S3 error code with its message, any other botocore error; anything else is
    not the store's to explain and is raised as it is."""
    from botocore import exceptions as bx

    from release.s3_store import S3Store

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = S3Store("bkt", "nightly")
    url, at = "s3://bkt/nightly", "http://127.0.0.1:9"

    def said(exc):
        return str(store._fail(exc, "reading x"))

    assert said(bx.NoCredentialsError()) == (
        f"store {url}: no S3 credentials while reading x: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    closed = bx.EndpointConnectionError(endpoint_url=at)
    assert said(closed) == (f"store {url}: cannot reach the S3 endpoint {at} while reading x "
                            f"({closed}); check AWS_ENDPOINT_URL and the network")
    for timeout in (bx.ConnectTimeoutError(endpoint_url=at),
                    bx.ReadTimeoutError(endpoint_url=at),
                    bx.ConnectionClosedError(endpoint_url=at)):
        assert said(timeout).startswith(f"store {url}: cannot reach the S3 endpoint "), timeout

    def client_error(code, message="the server's words"):
        error = {"Code": code, "Message": message} if message else {"Code": code}
        return bx.ClientError({"Error": error}, "GetObject")

    for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                 "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed"):
        assert said(client_error(code)) == (
            f"store {url}: the S3 endpoint {at} refused the credentials while reading x "
            f"({code}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that they may "
            "read and write this bucket")
    for code in ("NoSuchBucket", "404"):
        assert said(client_error(code)) == (
            f"store {url}: bucket 'bkt' does not exist at {at} ({code}); create it first "
            "(aws s3 mb s3://bkt)")
    assert said(client_error("SlowDown")) == (
        f"store {url}: reading x failed: SlowDown: the server's words")
    bare = client_error("SlowDown", message=None)
    assert said(bare) == f"store {url}: reading x failed: SlowDown: {bare}"
    empty = bx.ClientError({}, "GetObject")         # a response without an Error at all
    assert said(empty) == f"store {url}: reading x failed: None: {empty}"
    assert said(bx.ParamValidationError(report="bad key")) == (
        f"store {url}: reading x failed: Parameter validation failed:\nbad key")
    with pytest.raises(KeyError):
        store._fail(KeyError("not botocore's"), "reading x")


def test_a_local_stores_reads_say_what_they_could_not_read(tmp_path):
    """LocalStore.read and read_index (used by publish and --skip-unchanged in their own
    processes): a file's bytes, or a StoreError naming the store and the file; the index's
    text (UTF-8 whatever the locale), or None where none was written yet."""
    store = tmp_path / "store"
    (store / "m" / "v1").mkdir(parents=True)
    (store / "m" / "v1" / "model.onnx").write_bytes(b"graph")
    local = LocalStore(store)
    assert local.read("m", "v1", "model.onnx") == b"graph"
    with pytest.raises(StoreError) as caught:
        local.read("m", "v1", "gone.onnx")
    assert str(caught.value).startswith(f"store {local.url}: cannot read m/v1/gone.onnx: "
                                        "[Errno 2] No such file or directory")
    assert local.read_index() is None
    (store / "index.json").write_bytes('{"name": "résumé"}'.encode())
    assert local.read_index() == '{"name": "résumé"}'
    code = ("import sys; from pathlib import Path; from release.store import LocalStore; "
            "sys.stdout.buffer.write(LocalStore(Path(sys.argv[1])).read_index().encode())")
    child = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True,
                           env=child_env(**ASCII_LOCALE), timeout=60)
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert child.stdout.decode() == '{"name": "résumé"}'       # under an ASCII locale too
