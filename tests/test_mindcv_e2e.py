"""End to end with real MindCV checkpoints (written by mindspore.save_checkpoint from mindcv's
own model code), and the three sources side by side in one run."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import (MINDSPORE_PYTHON, assert_passed, helper_logits, manifest_entries,
                      read_report, run_make, run_pipeline, write_manifest, random_bytes)
from verify.compare import compare_logits, failed
from verify.ort_runner import OrtRunner

pytestmark = pytest.mark.slow
ENTRIES = manifest_entries()


def mindspore_logits(model_id: str, checkpoint, inputs: np.ndarray, tmp_path) -> np.ndarray:
    return helper_logits(MINDSPORE_PYTHON, "mindspore_logits.py", model_id, checkpoint,
                         inputs, tmp_path)


def test_make_convert_mindcv_checkpoint_any_batch_size(checkpoints, tmp_path):
    ckpt = checkpoints("ms-r50")
    out = tmp_path / "out"
    proc = run_make("convert", "MODEL=mindcv-res2net50", f"CHECKPOINT={ckpt}",
                    f"OUT={out}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
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


def test_bad_ckpts_optimizer_state_and_three_sources_side_by_side(checkpoints, tmp_path):
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

    names = ["with-optimizer-state", "truncated", "garbage", "other-variant", "1001-classes"]
    entries = [ENTRIES["res2net50-w14-s8"], ENTRIES["paddleclas-res2net50-14w-8s"], base,
               ENTRIES["mindcv-res2net50-v1b"], *[variant(n) for n in names]]
    manifest = write_manifest(tmp_path / "m.yaml", entries)
    local = {"res2net50-w14-s8": checkpoints("w14"),
             "paddleclas-res2net50-14w-8s": checkpoints("pd-14w"),
             "mindcv-res2net50": good,
             "with-optimizer-state": checkpoints("ms-r50-training"),
             "truncated": bad / "truncated.ckpt", "garbage": bad / "garbage.ckpt",
             "other-variant": checkpoints("ms-r50-v1b"),
             "1001-classes": checkpoints("ms-r50-1001")}
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out", str(out)]
    for name, path in local.items():
        args += ["--only", name, "--checkpoint", f"{name}={path}"]
    proc = run_pipeline(*args)
    assert proc.returncode == 1, proc.stdout[-5000:] + proc.stderr[-3000:]

    # The three sources side by side in one run, each in its own worker and environment.
    for name in ("res2net50-w14-s8", "paddleclas-res2net50-14w-8s", "mindcv-res2net50"):
        assert_passed(read_report(out, name))
    framework = {n: read_report(out, n)["source"]["versions"]["framework"]
                 for n in ("res2net50-w14-s8", "paddleclas-res2net50-14w-8s", "mindcv-res2net50")}
    assert sorted(framework.values()) == ["mindcv", "mmpretrain", "paddleclas"]

    trained = read_report(out, "with-optimizer-state")
    assert_passed(trained)
    ignored = trained["source"]["checkpoint"]["optimizer_state_ignored"]
    assert ignored["count"] > 100 and "global_step" in ignored["first"]
    assert "4/8 passed" in proc.stdout

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
