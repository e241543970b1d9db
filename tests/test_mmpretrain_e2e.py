"""End to end with real mmpretrain (and timm) checkpoints: convert, verify, refuse bad input.

Checkpoints are made in this session by the real frameworks (seeded random init, BatchNorm
statistics set from data); nothing is downloaded except from a loopback server.
"""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from conftest import (MM_PYTHON, REPO, assert_passed, helper_logits, manifest_entries,
                      random_bytes, read_report, run_mm, run_pipeline, small_entry,
                      write_manifest)
from fetch.download import sha256_file
from verify.compare import compare_logits, failed
from verify.images import generate_images
from verify.ort_runner import OrtRunner

pytestmark = pytest.mark.slow
ENTRIES = manifest_entries()
TOL = {**{"min_cosine": 0.99999, "min_top1_agreement": 1.0, "min_top5_agreement": 1.0},
       **ENTRIES["res2net50-w14-s8"]["tolerances"]}


def framework_logits(arch: str, checkpoint, inputs: np.ndarray, tmp_path) -> np.ndarray:
    return helper_logits(MM_PYTHON, "framework_logits.py", arch, checkpoint, inputs, tmp_path)


def random_inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, size=(n, 3, 224, 224)).astype(np.float32)


def test_openmmlab_checkpoint_converts_at_any_batch_size(three_sources, checkpoints, tmp_path):
    """The shipped entry from an OpenMMLab-format file (the session's shared three-source
    run; `make convert` itself: test_accuracy_e2e.py and test_variants_e2e.py)."""
    ckpt = checkpoints("w14")
    out, stdout = three_sources
    assert "3/3 passed" in stdout and "NOT the pinned file" in stdout

    report = read_report(out, "res2net50-w14-s8")
    assert_passed(report)
    assert sorted(p.name for p in (out / "res2net50-w14-s8").iterdir()) == \
        ["labels.txt", "model.fp16.onnx", "model.onnx", "preprocess.json", "provenance.json",
         "report.json"]  # no key given: not signed
    assert report["signature"] is None
    ck = report["source"]["checkpoint"]
    assert ck["pinned"] is False and ck["digest_check"] == "local file"
    assert ck["demo"] is True and "DEMO" in ck["note"]
    assert ck["layout"] == "openmmlab" and ck["container"] == "{'state_dict', 'meta'}"
    assert ck["meta"]["mean_rgb"] == "<ndarray>"  # numpy in meta loaded under the allow-list
    onnx = report["onnx"]
    assert onnx["opset"] == 17 and onnx["nodes_simplified"] < onnx["nodes_exported"]
    assert onnx["inputs"][0]["name"] == "input" and onnx["outputs"][0]["name"] == "logits"
    assert report["source"]["versions"]["mmpretrain"] == "1.2.0"
    for stage in ("fetch", "convert", "simplify", "verify", "total"):
        assert report["timings"][stage] > 0
    assert set(report["timings"]["worker"]) == {"build", "load", "preprocess", "reference",
                                                "sensitivity", "export"}

    # Any batch size: ORT on batches of 1, 3 and 7 against mmpretrain's own loading path.
    inputs = random_inputs(11, seed=5)
    ref = framework_logits("mmpretrain:res2net50-w14-s8_3rdparty_8xb32_in1k", ckpt, inputs,
                           tmp_path)
    runner = OrtRunner(out / "res2net50-w14-s8" / "model.onnx")
    for batch in (1, 3, 7):
        got = runner.infer(inputs, batch)
        assert not failed(compare_logits(ref, got, TOL, {})), f"batch {batch}"


def test_official_release_naming_and_module_prefix(checkpoints, tmp_path):
    """timm's res2net50_14w_8s (the official code and names) and DataParallel prefixes (on
    mobilenet-v2, as `add` writes its entry: the prefix is the point, not the model)."""
    module = checkpoints("mnv2-module")
    module_entry = {**small_entry("mm-small", checkpoints), "name": "mnv2-module-prefix",
                    "checkpoint": {"url": module.as_uri(), "sha256": sha256_file(module)}}
    manifest = write_manifest(tmp_path / "m.yaml", [
        ENTRIES["res2net50-14w-8s-official"], module_entry])
    official = checkpoints("official")
    data = tmp_path / "data"
    for cls in ("n01440764", "n01443537"):  # ImageFolder-style class sub-folders
        generate_images(data / cls, 5, seed=len(cls) + ord(cls[-1]))
    out = tmp_path / "out"
    proc = run_pipeline("--manifest", str(manifest), "--out", str(out), "--data", str(data),
                        "--checkpoint", f"res2net50-14w-8s-official={official}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    official_report = read_report(out, "res2net50-14w-8s-official")
    assert_passed(official_report)
    assert official_report["source"]["checkpoint"]["layout"] == "official-res2net"
    assert official_report["source"]["checkpoint"]["container"] == "bare state dict"
    assert official_report["verification"]["images"] == {
        "kind": "data", "dir": str(data), "count": 10, "available": 10}
    module_report = read_report(out, "mnv2-module-prefix")
    assert_passed(module_report)
    assert module_report["source"]["checkpoint"]["layout"] == "openmmlab+module."

    # The mapping is right, not just key-compatible: timm's own forward agrees with the ONNX
    # built from mmpretrain's code.
    inputs = random_inputs(5, seed=9)
    ref = framework_logits("timm:res2net50_14w_8s", official, inputs, tmp_path)
    got = OrtRunner(out / "res2net50-14w-8s-official" / "model.onnx").infer(inputs, 5)
    assert not failed(compare_logits(ref, got, TOL, {}))


def test_weights_a_model_caches_when_set_to_eval_come_from_the_checkpoint(tmp_path):
    """EfficientFormer's (and LeViT's) train(False) caches its attention biases from the
    weights (`self.ab`). mmpretrain's own get_model loads the checkpoint, then sets eval; an
    adapter that set eval only before loading would keep the init's biases (zeros) in the
    cache and export them. After the adapter's load, every cache holds the checkpoint's."""
    model_id = "efficientformer-l1_3rdparty_8xb128_in1k"
    ckpt = tmp_path / "efficientformer.pth"
    run_mm("-c", (
        "import sys, torch\n"
        "from converters.mmpretrain.worker import MMPretrainAdapter, build_model\n"
        f"model = build_model({model_id!r}, 1000)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "with torch.no_grad():\n"
        "    for name, p in model.named_parameters():\n"
        "        if name.endswith('attention_biases'):\n"
        "            p.copy_(torch.randn(p.shape, generator=g))\n"
        "torch.save({'state_dict': model.state_dict(), 'meta': {}}, sys.argv[1])\n"
        "adapter = MMPretrainAdapter()\n"
        f"fresh = adapter.build({model_id!r}, 1000)\n"
        "adapter.load(fresh, __import__('pathlib').Path(sys.argv[1]), [], 1000)\n"
        "caches = [m for m in fresh.modules() if hasattr(m, 'ab')]\n"
        "assert caches, 'no attention-bias cache found'\n"
        "for m in caches:\n"
        "    want = m.attention_biases[:, m.attention_bias_idxs]\n"
        "    assert want.abs().max() > 0.1, 'the checkpoint biases are not trained-like'\n"
        "    assert torch.equal(m.ab, want), (m.ab.abs().max(), want.abs().max())\n"
        "print(len(caches), 'caches hold the checkpoint biases')\n"), str(ckpt))


def _malicious_checkpoint(path, marker) -> None:
    code = (
        "import os, torch\n"
        "class Payload:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'state_dict': {{'w': torch.zeros(1)}}, 'meta': Payload()}}, '{path}')\n")
    run_mm("-c", code)


def test_bad_inputs_each_get_their_error_and_the_run_goes_on(checkpoints, tmp_path,
                                                             http_server):
    good = checkpoints("w14")
    bad = tmp_path / "bad"
    bad.mkdir()
    data = good.read_bytes()
    (bad / "truncated.pth").write_bytes(data[: len(data) // 2])
    (bad / "garbage.pth").write_bytes(random_bytes(4096, seed=1))
    marker = tmp_path / "PAYLOAD_RAN"
    _malicious_checkpoint(bad / "malicious.pth", marker)
    http_server.files["/res2net50-w14-s8-deadbeef.pth"] = data

    base = ENTRIES["res2net50-w14-s8"]

    def variant(name, **checkpoint):
        e = copy.deepcopy(base)
        e["name"] = name
        if checkpoint:
            e["checkpoint"] = checkpoint
        return e

    too_strict = variant("too-strict")
    too_strict["tolerances"] = {"atol": 0.0, "rtol": 0.0, "min_cosine": 1.0}
    cv2_resize = variant("cv2-resize")  # mmpretrain's config resizes with pillow
    cv2_resize["preprocess"] = {**base["preprocess"], "resize_backend": "cv2"}
    # No passing entry of its own: a passing conversion of each source is the session's
    # shared three-source run (test_mmpretrain_e2e.py's first test). too-strict, a whole
    # conversion, comes after the bad files: the run went on past each of them.
    entries = [ENTRIES["res2net50-w26-s8"], cv2_resize, variant("truncated"),
               variant("garbage"), variant("malicious"), variant("wrong-variant"),
               variant("missing-file"),
               variant("wrong-digest", url=http_server.url("/res2net50-w14-s8-deadbeef.pth"),
                       sha256="0" * 64),
               too_strict, ENTRIES["paddleclas-res2net50-14w-8s"]]
    manifest = write_manifest(tmp_path / "m.yaml", entries)
    selected = ["cv2-resize", "truncated", "garbage", "malicious", "wrong-variant",
                "missing-file", "wrong-digest", "too-strict", "paddleclas-res2net50-14w-8s"]
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    for name in selected:
        args += ["--only", name]
    args += ["--checkpoint", f"too-strict={good}",
             "--checkpoint", f"cv2-resize={good}",
             "--checkpoint", f"truncated={bad / 'truncated.pth'}",
             "--checkpoint", f"garbage={bad / 'garbage.pth'}",
             "--checkpoint", f"malicious={bad / 'malicious.pth'}",
             "--checkpoint", f"wrong-variant={checkpoints('w26')}",
             "--checkpoint", f"missing-file={bad / 'does-not-exist.pth'}"]
    proc = run_pipeline(*args, env={"PADDLE_PYTHON": str(tmp_path / "no-such-python")})
    assert proc.returncode == 1, proc.stdout[-5000:] + proc.stderr[-3000:]

    expected = {
        "cv2-resize": ("convert", "preprocess",
                       "resize_backend 'cv2' vs config 'pillow'"),
        "truncated": ("convert", "checkpoint_format", "truncated or corrupt"),
        "garbage": ("convert", "checkpoint_format", "not a torch checkpoint"),
        "malicious": ("convert", "checkpoint_unsafe", "Nothing in the file was executed"),
        "wrong-variant": ("convert", "checkpoint_mismatch", "'res2net50-w26-s8'"),
        "missing-file": ("fetch", "checkpoint_missing", "does-not-exist.pth"),
        "wrong-digest": ("fetch", "digest_mismatch", "0" * 64),
    }
    for name, (stage, kind, text) in expected.items():
        report = read_report(out, name)
        assert report["passed"] is False, name
        err = report["error"]
        assert (err["stage"], err["kind"]) == (stage, kind), (name, err)
        assert text in err["message"], (name, err["message"])
        assert not (out / name / "model.onnx").exists(), name
        # Its row of the summary table (names padded to the widest) says ERROR.
        assert re.search(rf"^{re.escape(name)} +ERROR ", proc.stdout, re.M), name

    assert not marker.exists(), "the malicious checkpoint's payload ran"
    mismatch = read_report(out, "wrong-variant")["error"]
    assert mismatch["details"]["fits_entries"] == ["res2net50-w26-s8"]
    assert mismatch["details"]["counts"]["shape_mismatch"] > 0
    assert "shape mismatches" in mismatch["message"]

    # A source whose environment is absent is reported and the run goes on.
    assert "paddleclas" in proc.stdout and "UNAVAILABLE" in proc.stdout
    assert not (out / "paddleclas-res2net50-14w-8s").exists()
    assert "0/9 passed" in proc.stdout

    # Fail closed on a logit gate: fp32 torch and ORT never agree to 0.0, so the gate fails,
    # says by how much, and no model is written.
    strict = read_report(out, "too-strict")
    assert strict["passed"] is False and strict["error"] is None
    worst = [c for c in strict["checks"] if c["name"] == "max_abs_diff" and not c["passed"]]
    assert worst and worst[0]["measured"] > 0.0 and worst[0]["limit"] == 0.0
    assert strict["decided_by"].startswith("max_abs_diff")
    # A zero limit is below any rounding: the failed check says the source itself moves by
    # more under a one-ulp input change (and no ratio to a zero limit).
    assert "over the limit" in worst[0]["detail"]
    assert not (out / "too-strict" / "model.onnx").exists()
    assert (out / "too-strict" / "worker.log").exists()
    assert MM_PYTHON.exists()


def test_buffers_the_source_drops_on_load_and_re_derives_do_not_refuse_a_checkpoint(tmp_path):
    """mmpretrain's SwinTransformerV2 deletes relative_position_index and relative_coords_table
    from any state dict it loads and re-derives them from its window size; a strict load then
    called every checkpoint of it broken (the zoo sweep's swinv2-base-w8: an internal error).
    The worker loads as the source does, says which buffers were re-derived, and the model
    computes what the saved one did."""
    proc = run_mm(str(REPO / "tests" / "helpers" / "mm_load.py"),
                  "swinv2-tiny-w8_3rdparty_in1k-256px", str(tmp_path))
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["same_logits"] is True
    rederived = found["buffers_rederived"]
    assert rederived["count"] == 24 and "relative_coords_table" in rederived["first"], rederived
