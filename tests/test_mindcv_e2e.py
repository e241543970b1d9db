"""End to end with real MindCV checkpoints (written by mindspore.save_checkpoint from mindcv's
own model code), and the three sources side by side in one run."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import (MINDSPORE_PYTHON, THREE_SOURCES, assert_passed, helper_logits,
                      manifest_entries, random_bytes, read_report, run_pipeline,
                      small_entry, write_manifest)
from verify.compare import compare_logits, failed
from verify.ort_runner import OrtRunner

pytestmark = pytest.mark.slow
ENTRIES = manifest_entries()


def mindspore_logits(model_id: str, checkpoint, inputs: np.ndarray, tmp_path) -> np.ndarray:
    return helper_logits(MINDSPORE_PYTHON, "mindspore_logits.py", model_id, checkpoint,
                         inputs, tmp_path)


def test_mindcv_checkpoint_converts_at_any_batch_size(three_sources, checkpoints, tmp_path):
    """The shipped entry from a weights-only .ckpt (the session's shared three-source run)."""
    ckpt = checkpoints("ms-r50")
    out, _ = three_sources
    report = read_report(out, "mindcv-res2net50")
    assert_passed(report)
    assert report["onnx"]["outputs"][0]["shape"] == ["batch", 1000]
    assert report["source"]["versions"]["mindspore"] == "2.7.2"
    assert report["source"]["versions"]["mode"] == "GRAPH_MODE"
    assert report["onnx"]["opset"] == 11
    assert "optimizer_state_ignored" not in report["source"]["checkpoint"]
    assert any("MindSpore exporter ignores output dynamic_axes" in note
               for note in report["source"]["export_fixups"])

    inputs = np.random.default_rng(4).normal(0, 1, (11, 3, 224, 224)).astype(np.float32)
    ref = mindspore_logits("res2net50", ckpt, inputs, tmp_path)  # PyNative, MindSpore's loader
    runner = OrtRunner(out / "mindcv-res2net50" / "model.onnx")
    tol = {"min_cosine": 0.99999, "min_top1_agreement": 1.0, "min_top5_agreement": 1.0,
           **ENTRIES["mindcv-res2net50"]["tolerances"]}
    for batch in (1, 3, 7):
        checks = compare_logits(ref, runner.infer(inputs, batch), tol, {})
        assert not failed(checks), (batch, failed(checks))


def test_three_sources_side_by_side_in_one_run(three_sources):
    """Each source in its own worker and environment, in one run (the session's shared
    three-source run): each passes, and each report names its own framework."""
    out, stdout = three_sources
    for name in THREE_SOURCES:
        assert_passed(read_report(out, name))
    framework = {n: read_report(out, n)["source"]["versions"]["framework"]
                 for n in THREE_SOURCES}
    assert sorted(framework.values()) == ["mindcv", "mmpretrain", "paddleclas"]
    assert "3/3 passed" in stdout
    # Each source's own rounding sensitivity was measured, and these trained-like models move
    # by less than the logit limit under a one-ulp input change (a chaotic one would not).
    for name in THREE_SOURCES:
        report = read_report(out, name)
        moved = report["verification"]["source_sensitivity"]["max_abs_logit_change"]
        [limit] = {c["limit"] for c in report["checks"] if c["name"] == "max_abs_diff"}
        assert 0 < moved < limit, (name, moved, limit)


def test_bad_ckpts_and_optimizer_state(checkpoints, tmp_path):
    good = checkpoints("ms-r50")
    bad = tmp_path / "bad"
    bad.mkdir()
    data = good.read_bytes()
    (bad / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (bad / "garbage.ckpt").write_bytes(random_bytes(5000, seed=1))

    base = ENTRIES["mindcv-res2net50"]

    def variant(name):
        e = copy.deepcopy(base)
        e["name"] = name
        return e

    names = ["truncated", "garbage", "other-variant", "1001-classes"]
    # The one that converts is SMALL_THREE's mobilenet_v2_075 as `add` writes it, its
    # checkpoint saved with the optimizer's state (the state is the point, not the model).
    trained_entry = {**small_entry("ms-small", checkpoints), "name": "with-optimizer-state"}
    entries = [ENTRIES["mindcv-res2net50-v1b"], trained_entry, *[variant(n) for n in names]]
    manifest = write_manifest(tmp_path / "m.yaml", entries)
    local = {"with-optimizer-state": checkpoints("ms-mnv2-training"),
             "truncated": bad / "truncated.ckpt", "garbage": bad / "garbage.ckpt",
             "other-variant": checkpoints("ms-r50-v1b"),
             "1001-classes": checkpoints("ms-r50-1001")}
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out", str(out)]
    for name, path in local.items():
        args += ["--only", name, "--checkpoint", f"{name}={path}"]
    proc = run_pipeline(*args)
    assert proc.returncode == 1, proc.stdout[-5000:] + proc.stderr[-3000:]

    # The entries after each bad file still ran: every one has its report.
    trained = read_report(out, "with-optimizer-state")
    assert_passed(trained)
    ignored = trained["source"]["checkpoint"]["optimizer_state_ignored"]
    assert ignored["count"] > 100 and "global_step" in ignored["first"]
    assert "1/5 passed" in proc.stdout

    expected = {"truncated": ("checkpoint_format", "truncated, corrupt"),
                "garbage": ("checkpoint_format", "truncated, corrupt"),
                "other-variant": ("checkpoint_mismatch", "'mindcv-res2net50-v1b'"),
                "1001-classes": ("checkpoint_mismatch",
                                 "the checkpoint has 1001 classes, the entry says "
                                 "num_classes: 1000")}
    for name, (kind, text) in expected.items():
        report = read_report(out, name)
        assert report["passed"] is False, name
        assert report["error"]["kind"] == kind, (name, report["error"])
        assert text in report["error"]["message"], (name, report["error"]["message"])
        assert not (out / name / "model.onnx").exists()
