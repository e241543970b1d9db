"""The first diverging layer (issue 13, item 2): for each source, one convolution's weights
perturbed in the exported model, and the localiser must name that layer in the source's own
terms; no false alarm on the clean models; a failing logit check localises by itself."""
from __future__ import annotations

import copy
import hashlib
import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import (MINDSPORE_PYTHON, MM_PYTHON, PADDLE_PYTHON, manifest_entries,
                      read_report, run_in_env, run_pipeline, write_manifest)
from verify.canary import perturbed

pytestmark = pytest.mark.slow
ENTRIES = manifest_entries()
CASES = {  # entry -> (checkpoint kind of the session fixture, environment)
    "res2net50-w14-s8": ("w14", MM_PYTHON),
    "paddleclas-res2net50-14w-8s": ("pd-14w", PADDLE_PYTHON),
    "mindcv-res2net50": ("ms-r50", MINDSPORE_PYTHON),
}


def test_a_reparameterised_model_is_compared_in_the_form_it_was_exported(checkpoints, tmp_path):
    """RepVGG is exported in its inference form (mmpretrain's own switch_to_deploy: each
    block's three branches fused into one conv). The localiser captures the source in that
    same form: compared with its trained branches, the fused conv was a false "first
    diverging layer" (backbone.stem.branch_3x3.conv, 0.49 of its range) on a correct
    conversion."""
    model_id = "repvgg-a0_8xb32_in1k"
    ckpt = checkpoints("repvgg-a0")
    manifest = write_manifest(tmp_path / "m.yaml", [
        {"name": "repvgg", "source": "mmpretrain", "model_id": model_id, "num_classes": 1000,
         "checkpoint": {"url": ckpt.as_uri(),
                        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}}])
    proc = run_pipeline("--manifest", str(manifest), "--out", str(tmp_path / "out"),
                        "--localize")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    verification = read_report(tmp_path / "out", "repvgg")["verification"]
    # The source's own switch, run by the source on the logit check's images, stays within
    # rounding of the model as trained (recorded for every switched model: it names the
    # cause when a switch moves the logits, orchestrator/stages/verify.py).
    form = verification["inference_form_change"]
    assert form["images"] == 16 and 0 <= form["max_abs_logit_change"] < 1e-4, form
    found = verification["localization"]
    assert found["first_diverging"] is None, found["summary"]
    assert found["aligned"] > 20
    assert "switch_to_deploy() on backbone" in found["source_form"][0]
    assert "source layers in the form exported: the inference form" in found["summary"]


def test_clean_models_localise_without_a_false_alarm(three_sources):
    out, stdout = three_sources
    for name in CASES:
        found = read_report(out, name)["verification"]["localization"]
        assert found["model"] == "simplified"
        assert found["first_diverging"] is None, found["summary"]
        # Several images at once (a graph holding the traced batch parts only after the
        # first), and no false alarm at that batch either.
        # (the first 4 of the logit check's images; the shared data set has 3)
        assert 2 < found["images"] == len(found["image_names"]) <= 4, found
        assert found["image"] == found["image_names"][0]
        # Every conv / linear layer of the source found its ONNX node.
        assert found["aligned"] == found["source_layers"] == found["onnx_layers"] > 50
        assert found["compared"] == found["aligned"]
        assert 0 <= found["worst"]["relative"] < found["rtol"]
        assert f"all {found['aligned']} aligned layers agree" in stdout


def _unique_conv_near_the_middle(model: onnx.ModelProto, source_convs: dict) -> tuple:
    """(node name, weight name, weight shape): a Conv whose weight shape occurs once in the
    ONNX model and once among the source's convs, nearest the middle of the graph."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    convs = [(n.name, n.input[1], inits[n.input[1]]) for n in model.graph.node
             if n.op_type == "Conv" and n.input[1] in inits]
    onnx_count = Counter(shape for _, _, shape in convs)
    source_count = Counter(tuple(s) for s in source_convs.values())
    unique = [c for c in convs if onnx_count[c[2]] == 1 and source_count[c[2]] == 1]
    assert unique, "no conv with a unique weight shape"
    middle = len(convs) / 2
    return min(unique, key=lambda c: abs(convs.index(c) - middle))


@pytest.mark.parametrize("name", list(CASES))
def test_a_perturbed_convolution_is_named_in_the_sources_terms(three_sources, checkpoints,
                                                                tmp_path, name):
    out, _ = three_sources
    kind, python = CASES[name]
    entry = ENTRIES[name]
    # The expected answer from the framework itself: its conv layers and weight shapes.
    run_in_env(python, "tests/helpers/conv_layers.py", entry["source"], entry["model_id"],
               str(entry["num_classes"]), str(tmp_path / "convs.json"))
    source_convs = json.loads((tmp_path / "convs.json").read_text())
    model = onnx.load(str(out / name / "model.onnx"))
    node, weight, shape = _unique_conv_near_the_middle(model, source_convs)
    [expected] = [layer for layer, s in source_convs.items() if tuple(s) == shape]

    faulty = perturbed(model, weight, noise=1e-2, seed=1)
    before = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == weight))
    after = numpy_helper.to_array(next(i for i in faulty.graph.initializer if i.name == weight))
    assert not np.array_equal(before, after)
    onnx.save(faulty, str(tmp_path / "faulty.onnx"))

    proc = run_pipeline("localize", str(tmp_path / "faulty.onnx"), "--model", name,
                        "--checkpoint", str(checkpoints(kind)), "--json",
                        str(tmp_path / "found.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr          # a layer diverges
    found = json.loads((tmp_path / "found.json").read_text())
    first = found["first_diverging"]
    assert first["layer"] == expected, (first, expected)
    assert first["onnx_node"] == node
    assert first["relative"] > found["rtol"]
    assert found["last_agreeing"] is not None                        # not the first layer
    assert f"first diverging layer: {expected}" in proc.stdout
    # Early stop: the chunks after the diverging layer's were not run. (The same model
    # unperturbed agrees everywhere: test_clean_models_localise_without_a_false_alarm.)
    assert found["compared"] < found["aligned"]


def test_a_failing_logit_check_localises_by_itself(checkpoints, tmp_path):
    """No --localize: a check that fails (a limit no fp32 export can meet) brings the
    localisation into the report, for the model whose check failed first."""
    name = "res2net50-w14-s8"
    entry = copy.deepcopy(ENTRIES[name])
    entry["tolerances"] = {**entry.get("tolerances", {}), "atol": 1e-12, "rtol": 0.0}
    manifest = write_manifest(tmp_path / "m.yaml", [entry])
    out = tmp_path / "out"
    proc = run_pipeline("--manifest", str(manifest), "--only", name, "--checkpoint",
                        f"{name}={checkpoints('w14')}", "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_report(out, name)
    assert report["passed"] is False
    found = report["verification"]["localization"]
    assert found["model"] == "exported"                 # its max_abs_diff failed first
    assert found["aligned"] == found["source_layers"] > 50
    # The exporter is sound: no layer parts beyond 1e-3; the report says where it is largest.
    assert found["first_diverging"] is None
    assert found["worst"]["layer"].startswith("backbone.")
    assert "localize" in report["timings"]
    assert "localize  all" in proc.stdout


def test_localize_exits_0_when_every_layer_agrees(three_sources, checkpoints, shared_data,
                                                  tmp_path):
    """`pipeline.py localize` on the untouched model: nothing diverges, exit 0 (--help);
    `--image` repeated gives the batch it compares."""
    out, _ = three_sources
    name = "mindcv-res2net50"                       # the quickest source to capture
    images = sorted(p for p in shared_data.rglob("*.JPEG"))[:2]
    proc = run_pipeline("localize", str(out / name / "model.onnx"), "--model", name,
                        "--checkpoint", str(checkpoints(CASES[name][0])),
                        *(arg for image in images for arg in ("--image", str(image))),
                        "--json", str(tmp_path / "found.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "aligned layers agree" in proc.stdout
    found = json.loads((tmp_path / "found.json").read_text())
    assert found["images"] == 2 and found["image_names"] == [p.name for p in images]



def _hold_the_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a batch held in its graph after the Conv nearest the middle: its output
    replaced by its first image's, broadcast over the batch (what a graph traced at batch 1
    does where it keeps the trace's batch). Right on one image, wrong on the others."""
    from onnx import helper

    held = onnx.ModelProto()
    held.CopyFrom(model)
    convs = [n for n in held.graph.node if n.op_type == "Conv"]
    conv = convs[len(convs) // 2]
    tensor = conv.output[0]
    for node in held.graph.node:
        for i, name in enumerate(node.input):
            if name == tensor:
                node.input[i] = "held_batch"
    held.graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                                   for n, v in (("held_zero", 0), ("held_one", 1))])
    at = list(held.graph.node).index(conv) + 1
    for offset, node in enumerate([
            helper.make_node("Slice", [tensor, "held_zero", "held_one", "held_zero"],
                             ["held_first"]),
            helper.make_node("Shape", [tensor], ["held_shape"]),
            helper.make_node("Expand", ["held_first", "held_shape"], ["held_batch"])]):
        held.graph.node.insert(at + offset, node)
    return held


def test_a_graph_holding_its_traced_batch_is_localised_as_such(three_sources, checkpoints,
                                                               tmp_path):
    """The localiser compares four images at once: a graph right on one image and wrong on
    the others of a batch is localised (before, on one image at batch 1, every layer agreed),
    and the summary says the batch is held in the graph."""
    out, _ = three_sources
    name = "mindcv-res2net50"                       # the quickest source to capture
    held = _hold_the_batch(onnx.load(str(out / name / "model.onnx")))
    onnx.checker.check_model(held)
    onnx.save(held, str(tmp_path / "held.onnx"))
    proc = run_pipeline("localize", str(tmp_path / "held.onnx"), "--model", name,
                        "--checkpoint", str(checkpoints(CASES[name][0])), "--json",
                        str(tmp_path / "found.json"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = json.loads((tmp_path / "found.json").read_text())
    first = found["first_diverging"]
    assert found["images"] == 4 and first["rows"] == [1, 2, 3], first
    assert first["alone"] <= found["rtol"] < first["relative"], first
    assert "the graph holds the batch it was traced at" in proc.stdout
