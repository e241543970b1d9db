"""README's first command and the nightly job, offline: `make nightly` runs `make demo` (each
source's demo checkpoint, signed with the demo key) and publishes what passed to a store."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from conftest import manifest_entries, read_report, run_make, run_pipeline, write_manifest
from deploy.labels import IMAGENET1K_FILE
from deploy.metadata import read
from release.provenance import check_statement, checkpoint_dependency
from verify.images import imagenet_like

pytestmark = pytest.mark.slow
DEMO_ENTRIES = ("res2net50-w14-s8", "paddleclas-res2net50-14w-8s", "mindcv-res2net50")


def test_make_nightly_offline_runs_the_demo_signs_and_publishes(tmp_path, s3_server):
    """In a fresh DEMO_DIR, so the demo checkpoints and key are made by this run (each
    source's make_checkpoint, --mark-demo), not reused from an earlier `make demo`."""
    out, store, demo = tmp_path / "out", tmp_path / "store", tmp_path / "demo"
    proc = run_make("nightly", f"NIGHTLY_OUT={out}", f"STORE={store}", f"DEMO_DIR={demo}")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "nightly (offline)" in proc.stdout and "DEMO checkpoints" in proc.stdout
    assert "demo checkpoint" in proc.stdout and "3/3 passed" in proc.stdout
    assert proc.stdout.count("demo: making a seeded random-init checkpoint") == 3
    assert sorted(p.name for p in demo.iterdir()) == [
        "mindcv-res2net50.ckpt", "paddleclas-res2net50-14w-8s.pdparams",
        "res2net50-w14-s8.pth", "signing-key.pem", "signing-key.pub"]

    for name in DEMO_ENTRIES:
        report = read_report(out, name)
        assert report["passed"] and report["source"]["checkpoint"]["demo"] is True, name
        assert "DEMO" in report["source"]["checkpoint"]["note"]
        # Gate power: the same logit check catches a fault in each of two mid layers and
        # in the classifier, a 1e-3 fault at the latest (the demo models behave like
        # trained ones), and lets nothing through that moves the class probabilities.
        canary = report["verification"]["canary"]
        assert canary["status"] == "caught" and len(canary["layers"]) == 3, (name, canary)
        assert all(layer["smallest_caught"] for layer in canary["layers"]), (name, canary)
        assert canary["resolution"] <= 1e-3, (name, canary)
        assert canary["largest_let_through"] < canary["matters"], (name, canary)
        assert any(c["name"] == "canary_caught" and c["passed"] for c in report["checks"])
        # SLSA v1 provenance: the model file as its subject, the checkpoint as a dependency.
        statement = json.loads((out / name / "provenance.json").read_text())
        check_statement(statement)
        assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
        art = out / name
        assert statement["subject"] == [
            {"name": n, "digest": {"sha256": hashlib.sha256((art / n).read_bytes()).hexdigest()}}
            for n in ("model.onnx", "preprocess.json", "labels.txt")]
        assert statement["subject"][0]["digest"]["sha256"] == report["onnx"]["sha256"]
        assert checkpoint_dependency(statement)["digest"]["sha256"] == \
            report["source"]["checkpoint"]["sha256"]
        assert sorted(p.name for p in art.iterdir()) == [
            "labels.txt", "model.onnx", "model.sig", "preprocess.json", "provenance.json",
            "report.json"]
        verified = run_make("verify-artifact", f"ARTIFACT={art}",
                            f"PUBLIC_KEY={demo / 'signing-key.pub'}")
        assert verified.returncode == 0 and f"OK: {name}" in verified.stdout
        _deployable(art, report, demo / "signing-key.pub", tmp_path / name,
                    cli=name == DEMO_ENTRIES[0])

    rows = json.loads((store / "index.json").read_text())["artifacts"]
    assert sorted(row["name"] for row in rows) == sorted(DEMO_ENTRIES)  # each exactly once
    table = (store / "index.md").read_text()
    for name in DEMO_ENTRIES:
        assert f"| {name} |" in table
    assert not any(p.suffix == ".pem" for p in out.rglob("*")), "a private key in an artifact"
    assert not any(p.suffix == ".pem" for p in store.rglob("*"))

    # A second nightly with nothing changed skips every entry: each is unchanged since the
    # version just published, and the store does not grow.
    before = sorted(str(p.relative_to(store)) for p in store.glob("*/*"))
    again = run_make("nightly", f"NIGHTLY_OUT={out}", f"STORE={store}", f"DEMO_DIR={demo}")
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-3000:]
    for name in DEMO_ENTRIES:
        version = next(v.name for v in (store / name).iterdir())
        assert f"unchanged since {version}" in again.stdout, name
    assert "0/3 passed, 3 unchanged (skipped)" in again.stdout
    assert "convert   " not in again.stdout                    # no worker ran
    assert sorted(str(p.relative_to(store)) for p in store.glob("*/*")) == before

    # The same against a remote store: this run published to S3, the next nightly with
    # STORE=s3://... reads the remote index, skips every entry and adds nothing there.
    url = f"s3://{s3_server.bucket()}/nightly"
    first = run_pipeline("publish", "--from", str(out), "--to", url, "--public-key",
                         str(demo / "signing-key.pub"), env=s3_server.env())
    assert first.returncode == 0 and "published 3, already there 0" in first.stdout, (
        first.stdout + first.stderr)
    bucket = url.split("/")[2]
    published = {k: v for k, v in s3_server.objects(bucket).items()
                 if not k.startswith("nightly/index.")}
    remote = run_make("nightly", f"NIGHTLY_OUT={out}", f"STORE={url}", f"DEMO_DIR={demo}",
                      env=s3_server.env())
    assert remote.returncode == 0, remote.stdout[-5000:] + remote.stderr[-3000:]
    assert "0/3 passed, 3 unchanged (skipped)" in remote.stdout
    assert "published 0, already there 3" in remote.stdout and "convert   " not in remote.stdout
    assert {k: v for k, v in s3_server.objects(bucket).items()
            if not k.startswith("nightly/index.")} == published

    # Any input that changes makes the entry run again: here the manifest entry.
    name = DEMO_ENTRIES[0]
    entry = manifest_entries()[name]
    changed = write_manifest(tmp_path / "changed.yaml", [
        {**entry, "tolerances": {**entry.get("tolerances", {}), "atol": 6.0e-4}}])
    same = write_manifest(tmp_path / "same.yaml", [entry])
    common = ("--only", name, "--checkpoint", f"{name}={demo / f'{name}.pth'}",
              "--signing-key", str(demo / "signing-key.pem"),
              "--skip-unchanged", str(store), "--out", str(tmp_path / "out2"))
    skipped = run_pipeline("--manifest", str(same), *common)
    assert skipped.returncode == 0 and "unchanged since" in skipped.stdout, skipped.stdout
    rerun = run_pipeline("--manifest", str(changed), *common)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert "unchanged since" not in rerun.stdout and "1/1 passed" in rerun.stdout
    fresh = read_report(tmp_path / "out2", name)
    assert fresh["inputs"]["parts"]["manifest_entry_sha256"] != json.loads(
        next((store / name).iterdir()).joinpath("report.json").read_text()
    )["inputs"]["parts"]["manifest_entry_sha256"]


def _deployable(art, report, public_key, tmp, cli: bool):
    """The artifact alone: its model's metadata equals preprocess.json and labels.txt, the
    signature covers them, and `predict` classifies images from it (ORT and OpenVINO agree).
    With `cli` (one source: the command is the same for all), predict's text output and its
    refusal of a tampered artifact too."""
    meta = read(art / "model.onnx")
    assert meta["preprocess"] == json.loads((art / "preprocess.json").read_text()) == \
        report["deploy"]["contract"]
    assert meta["labels"] == (art / "labels.txt").read_text().splitlines() == \
        IMAGENET1K_FILE.read_text().splitlines()
    assert meta["source"]["checkpoint_sha256"] == report["source"]["checkpoint"]["sha256"]
    assert meta["source"]["framework"] == report["source"]["framework"]
    assert meta["accuracy"]["published"]["top1"] > 70 and "measured" not in meta["accuracy"]
    assert meta["pipeline"]["precision"] == "fp32"
    assert report["deploy"]["files"]["model.onnx"] == report["onnx"]["sha256"]

    images = imagenet_like(tmp / "images", 3, seed=9, odd_every=2)
    runs = {}
    for runtime in ("onnxruntime", "openvino"):
        proc = run_pipeline("predict", str(art), *map(str, images), "--top", "3", "--json",
                            "--runtime", runtime, "--public-key", str(public_key))
        assert proc.returncode == 0, proc.stderr
        runs[runtime] = json.loads(proc.stdout)
    names = meta["labels"]
    for ort_row, ov_row in zip(runs["onnxruntime"], runs["openvino"]):
        assert [t["index"] for t in ort_row["top"]] == [t["index"] for t in ov_row["top"]]
        assert all(names[t["index"]] == t["label"] for t in ort_row["top"])
        probs = [t["probability"] for t in ort_row["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    if not cli:
        return
    text = run_pipeline("predict", str(art), str(images[0]), "--top", "2")
    assert text.returncode == 0 and runs["onnxruntime"][0]["top"][0]["label"] in text.stdout

    # A changed labels.txt breaks the signature; predict refuses to run with the key.
    copy = tmp / "tampered"
    shutil.copytree(art, copy)
    (copy / "labels.txt").write_text((copy / "labels.txt").read_text().replace("tench", "trout"))
    proc = run_pipeline("predict", str(copy), str(images[0]), "--public-key", str(public_key))
    assert proc.returncode == 1 and "labels.txt" in proc.stderr and proc.stdout == ""
