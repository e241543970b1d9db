"""Export rewrites (converters/<source>/rewrites.py): what a source's exporter cannot write, or
writes wrong, is rewritten before export; the report names each rewrite and the logit gate,
at batch 1 and at the verification batch, compares with the unmodified model."""
from __future__ import annotations

import pytest

from conftest import read_report, run_mindspore, run_mm, run_pipeline, write_manifest
from fetch.download import sha256_file

pytestmark = pytest.mark.slow


def _entry(name, source, model_id, checkpoint):
    return {"name": name, "source": source, "model_id": model_id, "num_classes": 1000,
            "checkpoint": {"url": checkpoint.as_uri(), "sha256": sha256_file(checkpoint)}}


def _canary(report):
    return report["verification"]["canary"]


def test_mindspore_rewrites_let_mobilenet_v3_export_and_the_gate_checks_them(tmp_path):
    """MindSpore 2.7.2's exporter has no HSwish / HSigmoid rule (mindcv MobileNetV3 was
    `unsupported`); converters/mindcv/rewrites.py replaces them before export, the report
    names each rewrite, and the logit gate compares with the unmodified model."""
    ckpt = tmp_path / "mnv3.ckpt"
    run_mindspore("-m", "converters.mindcv.make_checkpoint", "--model-id",
                  "mobilenet_v3_small_075", "--seed", "0", "--out", str(ckpt))
    manifest = write_manifest(tmp_path / "m.yaml", [
        _entry("mnv3", "mindcv", "mobilenet_v3_small_075", ckpt)])
    out = tmp_path / "out"
    proc = run_pipeline("--manifest", str(manifest), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = read_report(out, "mnv3")
    assert report["passed"] and _canary(report)["status"] == "caught"
    fixups = report["source"]["export_fixups"]
    assert any(n.startswith("export rewrite: ") and "x HSwish -> x * relu6(x + 3) / 6" in n
               for n in fixups), fixups
    assert any("x HSigmoid -> relu6(x + 3) / 6" in n for n in fixups), fixups
    assert "fix-up    export rewrite:" in proc.stdout


def test_swin_window_reverse_rewrite_keeps_the_batch_dynamic(tmp_path):
    """mmpretrain's ShiftWindowMSA.window_reverse computes the batch with int(), which the
    tracer bakes in: swin-tiny was right at batch 1 and wrong at batch 16 (max diff 1.6).
    With the rewrite the same images give the same logits at both batch sizes."""
    ckpt = tmp_path / "swin.pth"
    run_mm("-m", "converters.mmpretrain.make_checkpoint", "--arch",
           "mmpretrain:swin-tiny_16xb64_in1k", "--seed", "0", "--out", str(ckpt))
    manifest = write_manifest(tmp_path / "m.yaml", [
        _entry("swin", "mmpretrain", "swin-tiny_16xb64_in1k", ckpt)])
    out = tmp_path / "out"
    proc = run_pipeline("--manifest", str(manifest), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    report = read_report(out, "swin")
    assert report["passed"]
    assert any(n.startswith("export rewrite: ShiftWindowMSA.window_reverse")
               for n in report["source"]["export_fixups"])
    batch = [c for c in report["checks"] if c["name"] == "batch_independent"]
    assert {c["scope"]["model"] for c in batch} == {"exported", "simplified"}
    assert all(c["passed"] and c["scope"]["batch_sizes"] == [16, 1] for c in batch)
