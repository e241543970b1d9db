"""FP16 and INT8 variants from a real mmpretrain checkpoint, their gates, signing over every
file, a variant that fails its gate, and the bench table. The model is SMALL_THREE's
mobilenet-v2 (conftest.py), as `add` writes it: the variants' code is the point, and its int8
quantization takes 5 s where Res2Net-50's took about a minute."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import read_report, run_make, run_pipeline, small_entry, write_manifest
from deploy.metadata import read as read_metadata
from verify.images import synthetic_batch

pytestmark = pytest.mark.slow
NAME = "mm-small"


def _manifest(tmp_path, checkpoints, required=("onnxruntime",), **int8):
    entry = small_entry(NAME, checkpoints, variants={"int8": {"calibration_images": 16, **int8}},
                        deploy={"required_runtimes": list(required)})
    return str(write_manifest(tmp_path / f"m{len(int8)}.yaml", [entry]))


def test_fp16_int8_variants_gated_signed_and_benched(checkpoints, tmp_path):
    out, key = tmp_path / "out", tmp_path / "key.pem"
    assert run_pipeline("keygen", str(key)).returncode == 0
    # The int8 gate is set here, not left at its default (cosine 0.95, top-1 0.75): this
    # test is about shipping variants, and ONNX Runtime's int8 kernels give this model other
    # figures by CPU. Measured: at least the defaults on the Ice Lake (AVX-512 VNNI) machines,
    # cosine 0.936 and top-1 0.688 on an AMD EPYC with AVX2 only (2026-12-07), where u8s8
    # products can saturate. The gate failing a variant is test_a_variant_failing_its_gate.
    manifest = _manifest(tmp_path, checkpoints, ("onnxruntime", "openvino"), min_cosine=0.9,
                         min_top1_agreement=0.6)
    proc = run_make("convert", f"MODEL={NAME}", f"OUT={out}", "PRECISIONS=fp32,fp16,int8",
                    f"SIGNING_KEY={key}", f"MANIFEST={manifest}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    art = out / NAME
    report = read_report(out, NAME)
    assert report["passed"] is True
    assert {p.name for p in art.iterdir()} == {"model.onnx", "model.fp16.onnx",
                                               "model.int8.onnx", "report.json",
                                               "provenance.json", "model.sig",
                                               "preprocess.json", "labels.txt"}
    # Every shipped model carries the same contract and labels as the files beside it, and
    # its own precision; the digests in the report are those of the shipped files.
    contract = json.loads((art / "preprocess.json").read_text())
    labels = (art / "labels.txt").read_text().splitlines()
    for precision, file in (("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"),
                            ("int8", "model.int8.onnx")):
        meta = read_metadata(art / file)
        assert meta["preprocess"] == contract and meta["labels"] == labels, file
        assert meta["pipeline"]["precision"] == precision
        assert report["deploy"]["files"][file] == hashlib.sha256(
            (art / file).read_bytes()).hexdigest()
        # On the runtime matrix: OpenVINO, required here, ran each shipped model against the
        # source's logits, and its checks are among those that decided the model.
        assert report["runtimes"]["openvino"]["models"][precision]["passed"] is True
        decided = report["checks"] if precision == "fp32" else \
            report["variants"][precision]["checks"]
        assert any(c["scope"].get("runtime") == "openvino" for c in decided), precision
    assert report["runtimes"]["openvino"]["required"] is True
    for precision in ("fp16", "int8"):
        v = report["variants"][precision]
        assert v["passed"] is True and v["file"] == f"model.{precision}.onnx"
        names = {c["name"] for c in v["checks"]}
        assert {"io_names", "io_shapes", "cosine_min", "top1_agreement"} <= names
    assert report["variants"]["int8"]["build"]["calibration_images"] == 16
    assert report["verification"]["int8_calibration"]["kind"] == "generated"

    # What was written is what the names say: fp16 weights with fp32 I/O; int8 QDQ with
    # per-channel weight scales. Both still compute the fp32 model's function.
    fp16 = onnx.load(str(art / "model.fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    int8 = onnx.load(str(art / "model.int8.onnx"))
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
               for t in int8.graph.initializer)
    pre = report["entry"]["preprocess"]   # image-like inputs, as calibrated for
    x = synthetic_batch(7, 2, pre["mean"], pre["std"])
    ref = ort.InferenceSession(str(art / "model.onnx")).run(None, {"input": x})[0]
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        got = ort.InferenceSession(str(art / name)).run(None, {"input": x})[0]
        assert got.dtype == np.float32 and got.shape == ref.shape
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.9, (name, cos)

    # The signature covers every file, the variants included.
    proc = run_make("verify-artifact", f"ARTIFACT={art}", f"PUBLIC_KEY={key.with_suffix('.pub')}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = bytearray((art / "model.int8.onnx").read_bytes())
    data[-1] ^= 1
    (art / "model.int8.onnx").write_bytes(bytes(data))
    proc = run_pipeline("verify-artifact", str(art), "--public-key", str(key.with_suffix(".pub")))
    assert proc.returncode == 1 and "model.int8.onnx" in proc.stderr
    data[-1] ^= 1
    (art / "model.int8.onnx").write_bytes(bytes(data))

    # Bench: the source worker and ONNX Runtime per precision, same run, table + JSON.
    proc = run_make("bench", f"MODEL={NAME}", f"OUT={out}", "BATCH_SIZES=1,2", "RUNS=2",
                    f"MANIFEST={manifest}", f"BENCH_JSON={tmp_path / 'bench.json'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["batch_size"], r["precision"], r["runtime"].split()[0]) for r in bench["rows"]}
    assert rows == {(b, p, rt) for b in (1, 2) for p, rt in
                    (("fp32", "mmpretrain"), ("fp32", "onnxruntime"),
                     ("fp16", "onnxruntime"), ("int8", "onnxruntime"),
                     ("fp32", "openvino"), ("fp16", "openvino"), ("int8", "openvino"))}
    for ratio in bench["ratios"]:
        assert {f"openvino_{p}_vs_onnxruntime_{p}" for p in ("fp32", "fp16", "int8")} <= \
            set(ratio)
    assert all(r["images_per_s"] > 0 and r["p90_ms"] >= r["median_ms"] > 0
               for r in bench["rows"])
    assert "onnxruntime fp32 vs source" in proc.stdout and "int8 vs onnxruntime fp32" in \
        proc.stdout


def test_a_variant_failing_its_gate_is_not_written_and_fp32_still_ships(checkpoints, tmp_path):
    out = tmp_path / "out"
    manifest = _manifest(tmp_path, checkpoints, min_cosine=1.0)   # no int8 model can meet this
    proc = run_pipeline("--manifest", manifest, "--out", str(out), "--precisions", "int8")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_report(out, NAME)
    assert report["passed"] is True
    assert (out / NAME / "model.onnx").is_file()
    assert not (out / NAME / "model.int8.onnx").exists()
    v = report["variants"]["int8"]
    assert v["passed"] is False and "file" not in v
    assert v["why"].startswith("cosine_min") and "not written" in v["why"]
    assert "int8      NOT SHIPPED: cosine_min" in proc.stdout

    # The failed int8 variant says which tensors lost the accuracy, by the nodes the
    # quantizer knows, and says how to keep them in fp32.
    diagnosis = v["diagnosis"]
    assert diagnosis["images"] == 2 and diagnosis["tensors_compared"] > 50   # 66 here
    worst = diagnosis["worst"]
    assert len(worst) == 10 and worst == sorted(worst, key=lambda r: r["sqnr_db"])
    first = diagnosis["first_below"]
    assert first["sqnr_db"] < first["threshold_db"] == 20.0 and first["node"]
    assert f"int8      parts from fp32 first at {first['node']}" in proc.stdout
    assert "variants.int8.exclude_nodes" in proc.stdout
    cosine = next(c["measured"] for c in v["checks"] if c["name"] == "cosine_min")

    # Acting on it: those nodes kept in fp32 change the int8 model and its figures.
    keep = sorted({first["node"], *(r["node"] for r in worst[:3] if r["node"])})
    again = run_pipeline("--manifest", _manifest(tmp_path, checkpoints, min_cosine=1.0,
                                                 exclude_nodes=keep),
                         "--out", str(tmp_path / "o2"), "--precisions", "int8")
    assert again.returncode == 0, again.stdout + again.stderr
    v2 = read_report(tmp_path / "o2", NAME)["variants"]["int8"]
    assert v2["build"]["excluded_node_names"] == keep
    assert v2["build"]["excluded_nodes"] == v["build"]["excluded_nodes"] + len(keep)
    # The exclusion reached the model: its figures moved. Not necessarily for the better:
    # on the random-init Res2Net-50 this test used before, keeping four such nodes in fp32
    # moved cosine from 0.965 to 0.962 (measured); the diagnosis names where int8 parts from
    # fp32, it does not promise that fp32 there helps.
    assert next(c["measured"] for c in v2["checks"] if c["name"] == "cosine_min") != cosine
    # A name the model does not have: test_variants_units.py (make_int8 refuses it).
