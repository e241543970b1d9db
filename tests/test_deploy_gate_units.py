"""orchestrator/contract_gate.py's arithmetic in-process: the level difference, the shards' merge
and the --data contract checks, each Check compared whole with values worked out here."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.contract_gate import contract_accuracy_checks, contract_batch, level_diffs, \
    merge_contract
from deploy.preprocess import PreprocessError
from verify.compare import Check
from test_deploy import _onnx

ENTRY = {"source": "paddleclas", "deploy": {"max_level_diff": 1.0, "max_top1_delta": 0.1}}
SCOPE = {"stage": "accuracy", "model": "contract", "images": 40}


def test_level_diffs_are_per_image_in_pixel_levels_rounded_to_a_thousandth():
    # tensor = (pixel * scale - mean) / std, so one level is scale / std in tensor units.
    spec = {"normalize": {"std": [0.5, 0.25], "scale": 1 / 255}}
    source = np.zeros((3, 2, 1, 2), np.float32)
    ours = source.copy()
    ours[0, 0, 0, 1] = 2 / 255 / 0.5                 # channel 0: 2 levels
    ours[0, 1, 0, 0] = -1 / 255 / 0.25               # channel 1: 1 level (smaller)
    ours[1, 1, 0, 0] = 3.0001 / 255 / 0.25           # 3.0001 levels -> 3.0
    got = level_diffs(ours, source, spec)
    assert got.tolist() == [2.0, 3.0, 0.0]
    twice = level_diffs(ours, source, {"normalize": {"std": [0.5, 0.25], "scale": 2 / 255}})
    assert twice.tolist() == [1.0, 1.5, 0.0]


def test_merge_contract_takes_the_worst_shard_and_sums_the_rest():
    parts = [{"images": 10, "exact_images": 9, "max_level_diff": 1.0, "worst_image": "a.jpg",
              "errors": []},
             {"images": 5, "exact_images": 2, "max_level_diff": 3.5, "worst_image": "b.jpg",
              "errors": [{"path": "x", "error": "e1"}]},
             {"images": 7, "exact_images": 7, "max_level_diff": 0.0, "worst_image": "c.jpg",
              "errors": [{"path": "y", "error": "e2"}]}]
    assert merge_contract(parts) == {
        "images": 22, "exact_images": 18, "max_level_diff": 3.5, "worst_image": "b.jpg",
        "errors": [{"path": "x", "error": "e1"}, {"path": "y", "error": "e2"}]}


def _figures(worst=0.5, errors=()):
    return {"max_level_diff": worst, "worst_image": "n01.jpg", "exact_images": 31,
            "errors": list(errors)}


@pytest.mark.parametrize("source,contract_top1,passed", [
    (76.0, 76.1, True), (76.0, 75.9, True),            # at the limit, both ways
    (76.0, 76.125, False), (76.0, 75.875, False),      # over it, both ways (two-sided)
    (76.0, 76.0, True), (100 / 3, 33.4, True)])        # 0.0667: four decimals kept
def test_contract_top1_delta_is_two_sided(source, contract_top1, passed):
    checks = contract_accuracy_checks(ENTRY, _figures(), source, contract_top1, 40)
    delta = round(contract_top1 - source, 4)
    assert checks[1] == Check(
        "contract_top1_delta", passed, delta, 0.1,
        f"top-1 {contract_top1:.3f}% with preprocess.json + ONNX vs {source:.3f}% with "
        f"paddleclas's own preprocessing + model on 40 images (two-sided)", SCOPE)


@pytest.mark.parametrize("worst,passed", [(1.0, True), (1.001, False), (0.0, True)])
def test_contract_preprocess_over_every_image(worst, passed):
    [check, _] = contract_accuracy_checks(ENTRY, _figures(worst), 70.0, 70.0, 40)
    assert check == Check("contract_preprocess", passed, worst, 1.0,
                          "max over 40 images, worst n01.jpg; 31 bit-exact", SCOPE)


def test_an_image_the_contract_cannot_read_fails_whatever_the_levels():
    errors = [{"path": "d/a.png", "error": "cannot decode"}, {"path": "d/b", "error": "x"}]
    [check, _] = contract_accuracy_checks(ENTRY, _figures(0.0, errors), 70.0, 70.0, 40)
    assert check == Check(
        "contract_preprocess", False, float("inf"), 1.0,
        "2 image(s) the source reads, the contract cannot (first: d/a.png: cannot decode)",
        SCOPE)


def test_contract_batch_stands_in_the_sources_tensor_for_an_unreadable_image(tmp_path):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"no image here")
    spec = {"normalize": {"std": [1.0, 1.0, 1.0], "scale": 1.0}}
    theirs = np.ones((1, 3, 2, 2), np.float32)
    from unittest import mock

    with mock.patch("orchestrator.contract_gate.preprocess",
                    side_effect=PreprocessError("cannot read it")):
        ours, diffs, errors = contract_batch([str(bad)], spec, theirs)
    assert (ours == theirs).all() and diffs.tolist() == [0.0]
    assert errors == [{"path": str(bad), "error": "cannot read it"}]
    with mock.patch("orchestrator.contract_gate.preprocess",
                    return_value=np.zeros((3, 4, 4), np.float32)):
        with pytest.raises(PreprocessError, match=r"the contract makes tensors of \[3, 4, 4\], "
                                                  r"the source \[3, 2, 2\]"):
            contract_batch([str(bad)], spec, theirs)


def test_deploy_gate_in_full_on_tensors_off_by_known_levels(tmp_path):
    """17 6x6 images through a 4x4 contract; the 'source' tensors are the contract's own
    with chosen pixel-level offsets, so every figure is known: the worst five in order (ties
    in image order, exact ones left out), the limit inclusive, top-1 of contract + ONNX."""
    import cv2
    import PIL
    from PIL import Image

    from deploy.preprocess import contract, preprocess_batch
    from orchestrator.contract_gate import deploy_gate

    rng = np.random.default_rng(5)
    names = [f"{c}.png" for c in "abcdefghijklmnopq"]
    paths = []
    for name in names:
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    spec = contract({"pipeline": "mmpretrain", "resize_short": 4, "crop": 4,
                     "interpolation": "bilinear", "mean": [120.0, 110.0, 100.0],
                     "std": [60.0, 50.0, 40.0]}, [3, 4, 4])
    ours = preprocess_batch(paths, spec)
    levels = [0, 2, 0.5, 1, 1, 0.25, 0.125] + [1] * 10
    theirs = ours.copy()
    for i, level in enumerate(levels):               # channel 1, pixel (2, 3): level x 1/std
        theirs[i, 1, 2, 3] += np.float32(level * spec["normalize"]["scale"] / 50.0)
    source_logits = theirs.reshape(17, -1).copy()
    source_logits[3] = -source_logits[3]            # one image whose top-1 differs
    model = _onnx(tmp_path / "flat.onnx", "Flatten", ("N", 3, 4, 4))
    entry = {"source": "mmpretrain", "deploy": {"max_level_diff": 2.0}}
    checks, figures = deploy_gate(entry, paths, theirs, source_logits, model, 1, spec)
    scope = {"stage": "deploy", "model": "contract", "images": 17}
    agree = float(np.mean(ours.reshape(17, -1).argmax(1) == source_logits.argmax(1)))
    assert agree < 1.0
    assert checks == [Check("contract_preprocess", True, 2.0, 2.0, "", scope)]
    assert figures == {
        "contract": spec, "libraries": {"opencv": cv2.__version__, "pillow": PIL.__version__},
        "images": 17, "max_level_diff": 2.0, "mean_level_diff": sum(levels) / 17,
        "exact_images": 1,
        "worst": [{"image": n, "level_diff": d} for n, d in (
            ("b.png", 2.0), ("d.png", 1.0), ("e.png", 1.0), ("h.png", 1.0), ("i.png", 1.0))],
        "top1_agreement": agree}

    strict = {"source": "mmpretrain", "deploy": {"max_level_diff": 1.999}}
    [check], _ = deploy_gate(strict, paths, theirs, source_logits, model, 1, spec)
    assert check == Check(
        "contract_preprocess", False, 2.0, 1.999,
        "the contract's tensors differ from mmpretrain's own by up to 2 pixel levels (b.png): "
        "preprocess.json would not reproduce the source's preprocessing", scope)
    # Every image exact: nothing listed as worst.
    [check], exact = deploy_gate(entry, paths, ours, source_logits, model, 1, spec)
    assert check.passed and exact["worst"] == [] and exact["exact_images"] == 17


def test_deploy_gate_refuses_tensors_of_another_shape_and_unreadable_images(tmp_path):
    from PIL import Image

    from deploy.preprocess import contract
    from orchestrator.contract_gate import deploy_gate

    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    cfg = {"pipeline": "mmpretrain", "resize_short": 4, "crop": 4, "interpolation": "bilinear",
           "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    entry = {"source": "mmpretrain", "deploy": {"max_level_diff": 1.0},
             "preprocess": cfg, "input_shape": [3, 4, 4]}
    model = _onnx(tmp_path / "flat.onnx", "Flatten", ("N", 3, 4, 4))
    scope = {"stage": "deploy", "model": "contract", "images": 1}
    wrong = np.zeros((1, 3, 5, 5), np.float32)
    checks, figures = deploy_gate(entry, [tmp_path / "a.png"], wrong, wrong.reshape(1, -1),
                                  model, 1)                   # the entry's own contract
    why = "the contract makes tensors of [3, 4, 4], the source [3, 5, 5]"
    assert checks == [Check("contract_preprocess", False, None, 1.0, why, scope)]
    assert figures["error"] == why and figures["contract"] == contract(cfg, [3, 4, 4])
    two = np.zeros((2, 3, 4, 4), np.float32)
    checks, figures = deploy_gate(entry, [tmp_path / "a.png", tmp_path / "b.png"], two,
                                  two.reshape(2, -1), model, 1)
    from deploy.preprocess import PreprocessError, preprocess
    with pytest.raises(PreprocessError) as unreadable:
        preprocess(str(tmp_path / "b.png"), contract(cfg, [3, 4, 4]))
    error = str(unreadable.value)
    assert str(tmp_path / "b.png") in error
    assert checks == [Check("contract_preprocess", False, None, 1.0,
                            "the contract's preprocessing could not read 1 image(s) the source "
                            f"read: {error}", {**scope, "images": 2})]
    assert figures["error"] == error and "max_level_diff" not in figures
    # a graph that takes batch 1 only (exported at a fixed batch): its contract says so
    fixed = _onnx(tmp_path / "fixed.onnx", "Flatten", (1, 3, 4, 4))
    ours = preprocess(str(tmp_path / "a.png"), contract(cfg, [3, 4, 4]))[None]
    checks, figures = deploy_gate(entry, [tmp_path / "a.png"], ours, ours.reshape(1, -1),
                                  fixed, 1)
    assert figures["contract"]["input"]["batch"] == 1 and checks[0].passed, checks
    assert "batch" not in contract(cfg, [3, 4, 4])["input"]


# --------------------------------------------------------------------------- runtime matrix
TOLERANCES = {"atol": 1e-5, "rtol": 1e-5, "min_cosine": 0.99, "min_top1_agreement": 1.0,
              "min_top5_agreement": 1.0}


def test_runtime_matrix_in_full_with_a_skipped_required_runtime_first(tmp_path):
    """Every gating check and report field, each say line; a required runtime that cannot run
    here adds its check before the next runtime's, which are added to it, not put in its
    place."""
    import openvino

    from orchestrator.runtimes import runtime_matrix, unavailable
    from verify.compare import compare_logits, compare_variant

    x = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    reference = x.reshape(4, 6)                       # Flatten is exact on every runtime
    models = {"fp32": _onnx(tmp_path / "a.onnx", "Flatten", ("N", 2, 3)),
              "fp16": _onnx(tmp_path / "b.onnx", "Flatten", ("N", 2, 3))}
    gates = {"min_cosine": 0.99, "min_top1_agreement": 1.0}
    entry = {"deploy": {"runtimes": ["onnxruntime", "tensorrt", "openvino"],
                        "required_runtimes": ["onnxruntime", "tensorrt", "openvino"]},
             "tolerances": TOLERANCES, "variants": {"fp16": gates}}
    lines: list[str] = []
    gating, report = runtime_matrix(entry, models, x, reference, 1, lines.append)
    why = unavailable("tensorrt")
    scope = {"runtime": "openvino", "batch": 4}
    fp32 = compare_logits(reference, reference, TOLERANCES, {"model": "fp32", **scope})
    fp16 = compare_variant(reference, reference, gates, {"model": "fp16", **scope})
    missing = Check("runtime_available", False, "tensorrt", "available",
                    f"tensorrt is required by the manifest but cannot run here: {why}",
                    {"runtime": "tensorrt"})
    assert gating == {"fp32": [missing, *fp32], "fp16": fp16}
    assert report == {
        "tensorrt": {"required": True, "skipped": why},
        "openvino": {"required": True, "version": openvino.__version__.split("-")[0],
                     "models": {"fp32": {"passed": True, "checks": [c.as_dict() for c in fp32]},
                                "fp16": {"passed": True,
                                         "checks": [c.as_dict() for c in fp16]}}}}
    assert lines == [f"  runtime   tensorrt: skipped, {why}", "  runtime   openvino fp32: passed",
                     "  runtime   openvino fp16: passed"]

    # fp16 held to more than it can give, OpenVINO only reported: FAILED, said, not gated.
    entry["variants"]["fp16"] = {"min_cosine": 0.99, "min_top1_agreement": 1.5}
    entry["deploy"]["required_runtimes"] = ["onnxruntime"]
    lines.clear()
    gating, report = runtime_matrix(entry, models, x, reference, 1, lines.append)
    assert gating == {"fp32": [], "fp16": []}
    assert report["openvino"]["required"] is False and report["tensorrt"]["required"] is False
    assert report["openvino"]["models"]["fp16"]["passed"] is False
    assert lines[1:] == ["  runtime   openvino fp32: passed (reported, not required)",
                         "  runtime   openvino fp16: FAILED top1_agreement 1.0 vs 1.5 "
                         "(reported, not required)"]


def test_a_gpu_runtime_that_falls_back_to_the_cpu_is_refused(tmp_path, monkeypatch):
    """ONNX Runtime silently runs on the CPU when the GPU provider cannot load; the matrix
    must not report CPU figures as the GPU runtime's. A provider that is there runs. The
    runtimes come from the one registry (converters/registry.py RUNTIMES)."""
    import onnxruntime as ort

    from converters.registry import RUNTIMES, RuntimeSpec
    from verify import runners

    model = _onnx(tmp_path / "a.onnx", "Flatten", ("N", 2, 3))
    ort_runner = "verify.ort_runner:OrtRunner"
    for name, provider in (("cpu-as-gpu", "CPUExecutionProvider"),
                           ("missing", "NoSuchExecutionProvider"),
                           ("cuda", "CUDAExecutionProvider")):
        monkeypatch.setitem(RUNTIMES, name, RuntimeSpec(name, ort_runner, "gpu", provider))
    runner = runners.make_runner("cpu-as-gpu", model, 1)
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert runner.infer(x, 1).tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]   # this model
    assert runners.unavailable("cpu-as-gpu") is None
    assert runners.unavailable("missing") == (
        f"NoSuchExecutionProvider is not in this onnxruntime build ({ort.__version__}; "
        "install onnxruntime-gpu on a machine with an NVIDIA GPU)")
    # Asked for a provider the build lacks, ONNX Runtime warns and runs on the CPU.
    with pytest.warns(UserWarning), pytest.raises(RuntimeError) as err:
        runners.make_runner("cuda", model, 1)
    assert str(err.value) == ("ONNX Runtime ran the model on CPUExecutionProvider, not "
                              "CUDAExecutionProvider")
    assert runners.make_runner("openvino", model, 1).infer(x, 1).tolist() == [
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="unknown runtime 'coreml'; known: onnxruntime, "):
        runners.make_runner("coreml", model, 1)


def test_a_runtime_that_cannot_run_a_model_is_a_finding_in_full(tmp_path):
    """OpenVINO has no rule for com.microsoft.Inverse (ONNX Runtime runs it): the check names
    the runtime's own error (cut at 500 characters), is gating when the runtime is required,
    and the say line gives its first 12 characters against 'runs'."""
    from orchestrator.runtimes import runtime_matrix
    from verify.ov_runner import OpenVinoRunner

    x = np.random.default_rng(0).normal(size=(2, 2, 2)).astype(np.float32) + \
        np.eye(2, dtype=np.float32) * 3
    models = {"fp32": _onnx(tmp_path / "inv.onnx", "Inverse", ("N", 2, 2), "com.microsoft")}
    try:
        OpenVinoRunner(models["fp32"], 1).infer(x, 2)
    except Exception as exc:  # noqa: BLE001 - what OpenVINO says, however it says it
        said = f"{type(exc).__name__}: {exc}"
    assert "com.microsoft.Inverse" in said
    entry = {"deploy": {"runtimes": ["openvino"], "required_runtimes": ["openvino"]},
             "tolerances": TOLERANCES, "variants": {}}
    lines: list[str] = []
    gating, report = runtime_matrix(entry, models, x, x.reshape(2, 4), 1, lines.append)
    refused = Check("runtime_runs", False, said[:500], "runs",
                    "openvino could not run the fp32 model",
                    {"model": "fp32", "runtime": "openvino", "batch": 2})
    assert gating == {"fp32": [refused]}
    assert report["openvino"]["models"] == {"fp32": {"passed": False,
                                                     "checks": [refused.as_dict()]}}
    assert lines == [f"  runtime   openvino fp32: FAILED runtime_runs {said[:12]} vs runs"]


def test_the_summary_s_runtime_line_says_each_model_s_outcome_in_the_matrix_s_order():
    """ok only when the model's checks and (with --data) its accuracy passed; a runtime with
    no model says so; skipped runtimes say only that, wherever they are in the matrix."""
    from orchestrator.runtimes import runtimes_line

    passed, failed = {"passed": True}, {"passed": False}
    section = {
        "tensorrt": {"required": False, "skipped": "no GPU"},
        "onnxruntime": {"required": True, "models": {"fp32": passed, "fp16": failed,
                                                     "int8": passed},
                        "accuracy": {"fp32": passed, "int8": failed}},   # fp16: no --data
        "openvino": {"required": False, "models": {"fp32": passed}},
        "coreml": {"models": {}}}
    assert runtimes_line(section) == (
        "tensorrt skipped; onnxruntime fp32 ok, fp16 FAILED, int8 FAILED (required); "
        "openvino fp32 ok; coreml nothing ran")


def test_gpu_runtimes_name_providers_onnxruntime_knows():
    """A misspelt provider (another case, say) makes ONNX Runtime print "EP Error" and run on
    CPU alone, and the runtime matrix would then refuse every CUDA/TensorRT runtime on a GPU
    machine. ORT lists every provider name it knows, GPU ones included, in any build."""
    import onnxruntime as ort

    from converters.registry import RUNTIMES
    from verify.runners import providers

    known = set(ort.get_all_providers())
    gpu = {name: spec.provider for name, spec in RUNTIMES.items() if spec.device == "gpu"}
    assert set(gpu) == {"onnxruntime-cuda", "tensorrt"}
    for runtime, provider in gpu.items():
        assert providers(runtime) == [provider, "CPUExecutionProvider"]
        assert set(providers(runtime)) <= known, (runtime, set(providers(runtime)) - known)


def test_the_deploy_gate_and_the_runtime_matrix_run_on_the_threads_asked(tmp_path,
                                                                          monkeypatch):
    """--threads bounds every session the pipeline opens: the contract's ONNX Runtime run
    and each runtime of the matrix get the count given (recorded on the real runners)."""
    from PIL import Image

    import orchestrator.contract_gate as gate
    import orchestrator.runtimes as matrix
    from deploy.preprocess import contract, preprocess_batch
    from verify.runners import make_runner

    seen = []

    class Seen(gate.OrtRunner):
        def __init__(self, path, threads=None):
            seen.append(("contract", threads))
            super().__init__(path, threads)

    def recording(runtime, path, threads=None):
        seen.append((runtime, threads))
        return make_runner(runtime, path, threads)

    monkeypatch.setattr(gate, "OrtRunner", Seen)
    monkeypatch.setattr(matrix, "make_runner", recording)
    path = tmp_path / "a.png"
    Image.fromarray(np.full((6, 6, 3), 100, np.uint8)).save(path)
    spec = contract({"pipeline": "mmpretrain", "resize_short": 4, "crop": 4,
                     "interpolation": "bilinear", "mean": [120.0, 110.0, 100.0],
                     "std": [60.0, 50.0, 40.0]}, [3, 4, 4])
    ours = preprocess_batch([path], spec)
    model = _onnx(tmp_path / "flat.onnx", "Flatten", ("N", 3, 4, 4))
    entry = {"source": "mmpretrain", "deploy": {"max_level_diff": 2.0,
                                                "runtimes": ["onnxruntime", "openvino"],
                                                "required_runtimes": ["onnxruntime"]},
             "tolerances": {"atol": 1e-5, "rtol": 1e-5, "min_cosine": 0.99,
                            "min_top1_agreement": 1.0, "min_top5_agreement": 1.0}}
    gate.deploy_gate(entry, [path], ours, ours.reshape(1, -1), model, 3, spec)
    matrix.runtime_matrix(entry, {"fp32": model}, ours, ours.reshape(1, -1), 3, lambda _: None)
    assert seen == [("contract", 3), ("openvino", 3)]
