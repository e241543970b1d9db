"""End to end with real PaddleClas checkpoints (made by Paddle from PaddleClas's code)."""
from __future__ import annotations

import copy
import json
import os
import pickle

import numpy as np
import pytest

from conftest import (PADDLE_PYTHON, REPO, assert_passed, helper_logits, manifest_entries,
                      random_bytes, read_report, run_in_env, run_pipeline,
                      write_manifest)
from verify.compare import compare_logits, failed
from verify.ort_runner import OrtRunner

pytestmark = pytest.mark.slow
ENTRIES = manifest_entries()


def paddle_logits(model_id: str, checkpoint, inputs: np.ndarray, tmp_path) -> np.ndarray:
    return helper_logits(PADDLE_PYTHON, "paddle_logits.py", model_id, checkpoint, inputs,
                         tmp_path)


def tolerances(name: str) -> dict:
    return {"min_cosine": 0.99999, "min_top1_agreement": 1.0, "min_top5_agreement": 1.0,
            **ENTRIES[name]["tolerances"]}


def test_paddleclas_checkpoint_converts_at_any_batch_size(three_sources, checkpoints, tmp_path):
    """The shipped entry from a training-format .pdparams (the session's shared three-source
    run)."""
    ckpt = checkpoints("pd-14w")
    out, _ = three_sources
    report = read_report(out, "paddleclas-res2net50-14w-8s")
    assert_passed(report)
    ck = report["source"]["checkpoint"]
    assert ck["layout"] == "structured-names" and ck["structured_table"] is True
    assert ck["skipped_keys"] == ["StructuredToParameterName@@"]
    assert report["source"]["versions"]["paddlepaddle"] == "3.3.1"
    assert report["source"]["versions"]["paddle2onnx"] == "2.1.0"
    assert report["onnx"]["opset"] == 13
    assert report["onnx"]["nodes_simplified"] < report["onnx"]["nodes_exported"]

    inputs = np.random.default_rng(3).normal(0, 1, (11, 3, 224, 224)).astype(np.float32)
    ref = paddle_logits("Res2Net50_14w_8s", ckpt, inputs, tmp_path)
    runner = OrtRunner(out / "paddleclas-res2net50-14w-8s" / "model.onnx")
    for batch in (1, 3, 7):
        got = runner.infer(inputs, batch)
        checks = compare_logits(ref, got, tolerances("paddleclas-res2net50-14w-8s"), {})
        assert not failed(checks), (batch, failed(checks))


def test_vd_variant_converts(checkpoints, tmp_path):
    """The vd architecture end to end."""
    manifest = write_manifest(tmp_path / "m.yaml", [ENTRIES["paddleclas-res2net50-vd-26w-4s"]])
    out = tmp_path / "out"
    proc = run_pipeline("--manifest", str(manifest), "--out", str(out), "--checkpoint",
                        f"paddleclas-res2net50-vd-26w-4s={checkpoints('pd-vd')}")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    report = read_report(out, "paddleclas-res2net50-vd-26w-4s")
    assert_passed(report)
    assert report["source"]["checkpoint"]["layout"] == "structured-names"


def test_other_file_layouts_load_the_same_weights(checkpoints):
    """Parameter-name keys, the DataParallel `_layers.` prefix and a numpy 1.x pickle, each
    loaded by the worker's own load path: the layout is recognised and every tensor equals
    the one the training-format file gives (same seed). Loading is what differs between the
    layouts; the stages after it are the ones the other end-to-end tests convert."""
    kinds = ("pd-14w-param-names", "pd-14w-layers", "pd-14w-numpy1")
    files = [checkpoints(kind) for kind in kinds]
    proc = run_in_env(PADDLE_PYTHON, str(REPO / "tests" / "helpers" / "paddle_layouts.py"),
                      "Res2Net50_14w_8s", str(checkpoints("pd-14w")), *map(str, files))
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    layouts = {kind: found[path.name]["layout"] for kind, path in zip(kinds, files)}
    assert layouts == {"pd-14w-param-names": "parameter-names",
                       "pd-14w-layers": "structured-names+_layers.",
                       "pd-14w-numpy1": "structured-names"}
    for path in files:
        assert found[path.name]["keys"] and found[path.name]["max_abs_diff"] == 0.0, found
    assert b"numpy.core.multiarray" in checkpoints("pd-14w-numpy1").read_bytes()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_pdparams_each_get_their_error(checkpoints, tmp_path):
    """Five bad files in one run: each entry fails with its own error, and the run goes on
    to the next (a passing conversion of each source beside another: the session's shared
    three-source run, test_mindcv_e2e.py)."""
    good_pd, good_mm = checkpoints("pd-14w"), checkpoints("w14")
    bad = tmp_path / "bad"
    bad.mkdir()
    data = good_pd.read_bytes()
    (bad / "truncated.pdparams").write_bytes(data[: len(data) // 3])
    (bad / "garbage.pdparams").write_bytes(random_bytes(5000, seed=1))
    marker = tmp_path / "PAYLOAD_RAN"
    (bad / "malicious.pdparams").write_bytes(pickle.dumps(
        {"conv1._conv.weight": np.zeros(1, np.float32), "x": _Payload(marker)}, protocol=4))

    base = ENTRIES["paddleclas-res2net50-14w-8s"]

    def variant(name):
        e = copy.deepcopy(base)
        e["name"] = name
        return e

    names = ["truncated", "garbage", "malicious", "wrong-variant", "torch-file"]
    entries = [base, ENTRIES["paddleclas-res2net50-26w-4s"], *[variant(n) for n in names]]
    manifest = write_manifest(tmp_path / "m.yaml", entries)
    out = tmp_path / "out"
    local = {"truncated": bad / "truncated.pdparams", "garbage": bad / "garbage.pdparams",
             "malicious": bad / "malicious.pdparams", "wrong-variant": checkpoints("pd-26w"),
             "torch-file": good_mm}
    args = ["--manifest", str(manifest), "--out", str(out)]
    for name, path in local.items():
        args += ["--only", name, "--checkpoint", f"{name}={path}"]
    proc = run_pipeline(*args)
    assert proc.returncode == 1, proc.stdout[-5000:] + proc.stderr[-3000:]

    assert "0/5 passed" in proc.stdout

    expected = {"truncated": ("checkpoint_format", "truncated"),
                "garbage": ("checkpoint_format", "not a .pdparams pickle"),
                "malicious": ("checkpoint_unsafe", "posix.system"),
                "wrong-variant": ("checkpoint_mismatch", "'paddleclas-res2net50-26w-4s'"),
                "torch-file": ("checkpoint_format", "zip archive")}
    for name, (kind, text) in expected.items():
        report = read_report(out, name)
        assert report["passed"] is False, name
        assert report["error"]["kind"] == kind, (name, report["error"])
        assert text in report["error"]["message"], (name, report["error"]["message"])
        assert not (out / name / "model.onnx").exists()
    assert not marker.exists(), "the malicious .pdparams payload ran"
    assert read_report(out, "wrong-variant")["error"]["details"]["fits_entries"] == [
        "paddleclas-res2net50-26w-4s"]
