"""The deployable artifact's parts: the preprocessing contract against each source's own
transforms, its rounding rules, the deploy gate refusing a wrong contract, labels, model
metadata, the manifest's deploy fields and the runtime matrix (OpenVINO refusing a model)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import (MINDSPORE_PYTHON, MM_PYTHON, PADDLE_PYTHON, REPO, manifest_entries,
                      run_in_env, write_manifest)
from deploy.labels import IMAGENET1K_FILE, read_label_file, resolve
from deploy.metadata import embed, read
from deploy.preprocess import (FORMAT, FORMAT_2, PreprocessError, contract, crop,
                               efficientnet_crop, preprocess, preprocess_batch, resize_size,
                               validate)
from manifests.loader import ManifestError, load_manifest
from orchestrator.contract_gate import deploy_gate, level_diffs
from orchestrator.runtimes import runtime_matrix
from verify.images import ODD_KINDS, generate_images, synth_image, write_jpeg

PYTHONS = {"mmpretrain": MM_PYTHON, "paddleclas": PADDLE_PYTHON, "mindcv": MINDSPORE_PYTHON}
ENTRY_OF = {"mmpretrain": "res2net50-w14-s8", "paddleclas": "paddleclas-res2net50-14w-8s",
            "mindcv": "mindcv-res2net50"}
# Sizes where the sources' rounding rules disagree: 333x250 -> long side 340 (floor) or 341
# (round); 511x256 -> crop offset 143.5 (floor 143, half-even 144); near-square and large.
SIZES = [(333, 250), (250, 333), (511, 256), (257, 255), (600, 457), (375, 500)]

# One worker runs the module (pytest-xdist): its tests share the sources' own tensors.
pytestmark = pytest.mark.xdist_group("deploy")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """RGB, grayscale and CMYK JPEGs, PNGs named .JPEG (as ImageNet val holds), JPEGs with
    an EXIF orientation (each source's decoder applies it or not, and the contract must say
    which: docs/artifact.md, "Preprocessing contract") and the generated PNGs of the logit check, in
    the sizes above."""
    root = tmp_path_factory.mktemp("deploy-images")
    rng = np.random.default_rng(11)
    paths = []
    for i, (h, w) in enumerate(SIZES):
        for kind in ("rgb", *ODD_KINDS, "exif_rotated"):
            path = root / f"img_{i}_{kind}.JPEG"
            write_jpeg(path, synth_image(rng, h, w), kind)
            paths.append(path)
    return paths + generate_images(root / "generated", 6, seed=3)


def source_tensors(source: str, cfg: dict, paths: list[Path], tmp: Path) -> np.ndarray:
    (tmp / f"{source}.json").write_text(json.dumps(cfg))
    (tmp / f"{source}.txt").write_text("\n".join(map(str, paths)))
    run_in_env(PYTHONS[source], str(REPO / "tests" / "helpers" / "source_tensors.py"), source,
               str(tmp / f"{source}.json"), str(tmp / f"{source}.txt"),
               str(tmp / f"{source}.npy"))
    return np.load(tmp / f"{source}.npy")


@pytest.fixture(scope="module")
def own_tensors(images, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    return {source: source_tensors(source, manifest_entries()[name]["preprocess"], images, tmp)
            for source, name in ENTRY_OF.items()}


@pytest.mark.parametrize("source", list(ENTRY_OF))
def test_contract_reproduces_each_sources_own_transforms_bit_for_bit(source, images,
                                                                     own_tensors):
    entry = manifest_entries()[ENTRY_OF[source]]
    spec = validate(contract(entry["preprocess"], [3, 224, 224]))
    ours = preprocess_batch(images, spec)
    theirs = own_tensors[source]
    assert ours.shape == theirs.shape == (len(images), 3, 224, 224)
    assert float(level_diffs(ours, theirs, spec).max()) == 0.0, source
    assert np.abs(ours - theirs).max() < 1e-5   # float rounding of the normalisation only


def test_each_rule_matters(images, own_tensors):
    """Swapping a source's decoder, resize library, long-side or crop rounding for another
    source's breaks the match on these images: none of the rules is decorative."""
    entry = manifest_entries()[ENTRY_OF["mindcv"]]
    spec = contract(entry["preprocess"], [3, 224, 224])
    theirs = own_tensors["mindcv"]
    for part, key, other in (("resize", "library", "pillow"), ("resize", "long_side",
                                                                "round_half_even"),
                             ("crop", "offset", "round_half_even")):
        wrong = json.loads(json.dumps(spec))
        wrong[part][key] = other
        assert level_diffs(preprocess_batch(images, wrong), theirs, spec).max() > 1.0, key
    mm = contract(manifest_entries()[ENTRY_OF["mmpretrain"]]["preprocess"], [3, 224, 224])
    wrong = json.loads(json.dumps(mm))
    wrong["decode"]["library"] = "pillow"   # cv2 and Pillow decode CMYK JPEGs differently
    cmyk = [i for i, p in enumerate(images) if "cmyk" in p.name]
    assert level_diffs(preprocess_batch([images[i] for i in cmyk], wrong),
                       own_tensors["mmpretrain"][cmyk], mm).max() >= 1.0
    # EXIF orientation: each source applies it or not; the contract's flag flipped turns
    # those images the other way and the match is gone.
    turned = [i for i, p in enumerate(images) if "exif_rotated" in p.name]
    assert turned
    for source, name in ENTRY_OF.items():
        own = contract(manifest_entries()[name]["preprocess"], [3, 224, 224])
        wrong = json.loads(json.dumps(own))
        wrong["decode"]["exif_orientation"] = not own["decode"]["exif_orientation"]
        assert level_diffs(preprocess_batch([images[i] for i in turned], wrong),
                           own_tensors[source][turned], own).max() > 1.0, source


# mmpretrain's other eval forms (deploy/preprocess.py FORMAT_2), as its configs write them:
# EfficientNet's centre crop with its default padding (efficientnet) and none (efficientnetv2),
# a fixed-size Resize alone (convnext 384 px, tinyvit) and before a CenterCrop (repmlp), and
# BGR input (regnet, mobilevit: mean/std in B, G, R order).
MM_FORMS = {
    "efficientnet": {"crop_padding": 32, "crop": 224, "interpolation": "bicubic",
                     "resize_backend": "cv2"},
    "efficientnetv2": {"crop_padding": 0, "crop": 240, "interpolation": "bicubic",
                       "resize_backend": "cv2"},
    "fixed": {"resize_fixed": 384, "crop": 384, "interpolation": "bicubic",
              "resize_backend": "pillow"},
    "fixed_then_crop": {"resize_fixed": 256, "crop": 224, "interpolation": "bilinear",
                        "resize_backend": "pillow"},
    "bgr": {"resize_short": 256, "crop": 224, "interpolation": "bilinear",
            "resize_backend": "cv2", "to_rgb": False, "mean": [103.53, 116.28, 123.675],
            "std": [57.375, 57.12, 58.395]},
}


def mm_form(name: str) -> dict:
    """The Res2Net entry's mmpretrain block with its resize replaced by form `name`."""
    base = dict(manifest_entries()[ENTRY_OF["mmpretrain"]]["preprocess"])
    base.pop("resize_short")
    return {**base, **MM_FORMS[name]}


@pytest.fixture(scope="module")
def mm_form_tensors(images, tmp_path_factory):
    """mmpretrain's own transforms (its pipeline steps and ClsDataPreprocessor, built by the
    adapter from each block) on the images, all forms in one process."""
    made = source_tensors("mmpretrain", [mm_form(n) for n in MM_FORMS], images,
                          tmp_path_factory.mktemp("mm-forms"))   # an .npz archive
    return {name: made[f"arr_{i}"] for i, name in enumerate(MM_FORMS)}


@pytest.mark.parametrize("form", list(MM_FORMS))
def test_contract_reproduces_mmpretrains_other_forms_bit_for_bit(form, images,
                                                                 mm_form_tensors):
    cfg = mm_form(form)
    spec = validate(contract(cfg, [3, cfg["crop"], cfg["crop"]]))
    assert spec["format"] == FORMAT_2    # a /1 reader refuses it by its format
    ours = preprocess_batch(images, spec)
    theirs = mm_form_tensors[form]
    assert ours.shape == theirs.shape == (len(images), 3, cfg["crop"], cfg["crop"])
    assert float(level_diffs(ours, theirs, spec).max()) == 0.0, form


def test_each_new_form_matters(images, mm_form_tensors):
    """The forms are not interchangeable on these images: RGB where the model takes BGR, the
    short side where mmpretrain resizes to a fixed size, and EfficientNet's crop without its
    padding each break the match."""
    def worst(cfg, form):
        spec = contract(cfg, [3, cfg["crop"], cfg["crop"]])
        return level_diffs(preprocess_batch(images, spec), mm_form_tensors[form], spec).max()

    assert worst({**mm_form("bgr"), "to_rgb": True}, "bgr") > 10
    fixed = {k: v for k, v in mm_form("fixed").items() if k != "resize_fixed"}
    assert worst({**fixed, "resize_short": 384}, "fixed") > 10
    assert worst({**mm_form("efficientnet"), "crop_padding": 0}, "efficientnet") > 10


def test_paddleclas_pillow_resize_is_pillows(images, tmp_path):
    """PaddleClas's own 256/384-px configs resize with `backend: pil` (manifest `pillow`;
    converters/paddleclas/derive.py): its ResizeImage must get "pil", or it warns and uses
    cv2. The contract's Pillow resize with PaddleClas's rounding then matches its tensors."""
    cfg = {**manifest_entries()[ENTRY_OF["paddleclas"]]["preprocess"], "resize_short": 292,
           "crop": 256, "interpolation": "bicubic", "resize_backend": "pillow"}
    made = source_tensors("paddleclas", [cfg], images, tmp_path)["arr_0"]
    spec = validate(contract(cfg, [3, 256, 256]))
    assert spec["resize"]["library"] == "pillow"
    assert float(level_diffs(preprocess_batch(images, spec), made, spec).max()) == 0.0
    cv2_spec = json.loads(json.dumps(spec))
    cv2_spec["resize"]["library"] = "opencv"
    assert level_diffs(preprocess_batch(images, cv2_spec), made, spec).max() > 1.0


def test_efficientnet_crop_by_hand():
    """mmpretrain's EfficientNetCenterCrop arithmetic on a 333x250 image: the side is a float,
    the offset rounds half to even, the last row/column is truncated."""
    image = np.arange(333 * 250).reshape(333, 250)
    # side 224/256 x 250 = 218.75; top round(57.125) = 57, last int(57 + 217.75) = 274;
    # left round(15.625) = 16, last 233: 218 x 218 (rounding the side would give 219).
    out = efficientnet_crop(image, {"size": 224, "padding": 32})
    assert out.shape == (218, 218) and out[0, 0] == 57 * 250 + 16
    # no padding: side 250, top (333 - 250) / 2 = 41.5 -> 42 (half to even; floor gives 41)
    out = efficientnet_crop(image, {"size": 224, "padding": 0})
    assert out.shape == (250, 250) and out[0, 0] == 42 * 250
    spec = contract(mm_form("fixed"), [3, 384, 384])
    del spec["resize"]["height"]
    with pytest.raises(PreprocessError, match="resize: 'height' is a required property"):
        validate(spec)
    first = contract(manifest_entries()[ENTRY_OF["mmpretrain"]]["preprocess"], [3, 224, 224])
    assert first["format"] == FORMAT and "mode" not in first["resize"]   # /1 files unchanged
    first["resize"]["mode"] = "fixed"
    first["resize"].update(height=224, width=224)
    with pytest.raises(PreprocessError, match="resize/mode"):
        validate(first)


def test_rounding_rules_by_hand():
    floor = {"short_side": 256, "long_side": "floor"}
    half_even = {"short_side": 256, "long_side": "round_half_even"}
    assert resize_size(333, 250, floor) == (340, 256)       # 333 * 256 / 250 = 340.99
    assert resize_size(333, 250, half_even) == (341, 256)
    assert resize_size(250, 333, floor) == (256, 340)
    assert resize_size(256, 256, floor) == (256, 256)
    image = np.arange(511 * 256).reshape(511, 256)
    assert crop(image, {"height": 224, "width": 224, "offset": "floor"})[0, 0] == 143 * 256 + 16
    assert crop(image, {"height": 224, "width": 224,
                        "offset": "round_half_even"})[0, 0] == 144 * 256 + 16
    with pytest.raises(PreprocessError, match="smaller than the 224x224 crop"):
        crop(np.zeros((200, 300)), {"height": 224, "width": 224, "offset": "floor"})


def test_a_wrong_contract_fails_the_deploy_gate(images, own_tensors, tmp_path):
    """Swapped mean/std, or BGR fed where RGB is expected: the gate fails, naming the image
    and the size of the difference; a /1 contract that says BGR is refused by the schema."""
    raw = manifest_entries()[ENTRY_OF["paddleclas"]]
    entry = {**raw, "input_shape": [3, 224, 224], "deploy": {"max_level_diff": 1.0}}
    spec = contract(raw["preprocess"], [3, 224, 224])
    theirs = own_tensors["paddleclas"]
    model = _onnx(tmp_path / "flat.onnx", "Flatten", (None, 3, 224, 224))
    logits = theirs.reshape(len(theirs), -1)
    checks, figures = deploy_gate(entry, images, theirs, logits, model, 1, spec)
    assert checks[0].passed and figures["max_level_diff"] == 0.0
    assert figures["exact_images"] == len(images) and figures["top1_agreement"] == 1.0

    swapped = json.loads(json.dumps(spec))
    swapped["normalize"]["mean"], swapped["normalize"]["std"] = spec["normalize"]["std"], \
        spec["normalize"]["mean"]
    [check], figures = deploy_gate(entry, images, theirs, logits, model, 1, swapped)
    assert not check.passed and check.measured > 10 and check.limit == 1.0
    assert figures["worst"][0]["image"] in check.detail and "pixel levels" in check.detail

    bgr = preprocess_batch(images, spec)[:, ::-1]
    assert level_diffs(bgr, theirs, spec).max() > 10
    wrong = json.loads(json.dumps(spec))
    wrong["decode"]["channels"] = "BGR"
    with pytest.raises(PreprocessError, match="decode/channels"):
        validate(wrong)


def test_unreadable_image_is_a_clear_error(tmp_path):
    spec = contract(manifest_entries()[ENTRY_OF["mindcv"]]["preprocess"], [3, 224, 224])
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(PreprocessError, match="broken.JPEG.*Pillow cannot decode"):
        preprocess(bad, spec)
    spec["decode"]["library"] = "opencv"
    with pytest.raises(PreprocessError, match="broken.JPEG.*OpenCV cannot decode"):
        preprocess(bad, spec)


def test_imagenet_labels_are_the_sources_own_lists():
    names = read_label_file(IMAGENET1K_FILE)
    mm = run_in_env(MM_PYTHON, "-c", "import json; from mmpretrain.datasets.categories import "
                    "IMAGENET_CATEGORIES as c; print(json.dumps(list(c)))")
    assert json.loads(mm.stdout) == names
    where = run_in_env(PADDLE_PYTHON, "-c", "import importlib.util; print(importlib.util."
                       "find_spec('paddleclas').submodule_search_locations[0])")
    listed = (Path(where.stdout.strip()) / "ppcls" / "utils" / "imagenet1k_label_list.txt")
    paddle = [line.split(" ", 1)[1] for line in listed.read_text().splitlines() if line]
    assert paddle == names and len(names) == 1000 and names[0] == "tench, Tinca tinca"


def test_labels_resolve_and_manifest_checks(tmp_path):
    assert resolve(None, 1000)[0] == read_label_file(IMAGENET1K_FILE)
    names, origin = resolve(None, 3)
    assert names == ["class_0", "class_1", "class_2"] and "none given" in origin
    with pytest.raises(ValueError, match="2 labels for 3 classes"):
        resolve(["a", "b"], 3)

    base = manifest_entries()[ENTRY_OF["mmpretrain"]]
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    (tmp_path / "gap.txt").write_text("cat\n\ndog\n")
    good = {**base, "name": "good", "num_classes": 2, "labels": "two.txt"}
    [entry] = load_manifest(write_manifest(tmp_path / "good.yaml", [good]))
    assert entry["labels"] == ["cat", "dog"]   # read relative to the manifest, carried inline
    bad = [{**base, "name": "count", "labels": "two.txt"},
           {**base, "name": "gap", "num_classes": 2, "labels": "gap.txt"},
           {**base, "name": "runtimes", "deploy": {"runtimes": ["onnxruntime"],
                                                   "required_runtimes": ["openvino"]}}]
    with pytest.raises(ManifestError) as err:
        load_manifest(write_manifest(tmp_path / "bad.yaml", bad))
    text = str(err.value)
    assert "entry 'count' (#1): field 'labels': 2 labels for 1000 classes" in text
    assert "entry 'gap' (#2): field 'labels':" in text and "blank line 2" in text
    assert "entry 'runtimes' (#3): field 'deploy.required_runtimes': ['openvino']" in text


def _onnx(path: Path, op: str, shape, domain: str = "", out_shape=None) -> Path:
    """A one-node model, input 'input', output 'logits'."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)
    nodes = [helper.make_node(op, ["input"], ["logits"], domain=domain)]
    if op == "Inverse":   # (N, 2, 2) -> inverse -> (N, 4)
        nodes = [helper.make_node(op, ["input"], ["inv"], domain=domain),
                 helper.make_node("Flatten", ["inv"], ["logits"])]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets,
                              ir_version=9)
    onnx.save(model, str(path))
    return path


def test_metadata_round_trip_keeps_other_props(tmp_path):
    model = _onnx(tmp_path / "m.onnx", "Flatten", (None, 2, 2))
    proto = onnx.load(str(model))
    proto.metadata_props.add(key="onnxsim.note", value="kept")
    onnx.save(proto, str(model))
    embed(model, tmp_path / "out.onnx", {"labels": ["a", "b"], "preprocess": {"x": 1}})
    assert read(tmp_path / "out.onnx") == {"labels": ["a", "b"], "preprocess": {"x": 1}}
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "out.onnx")).metadata_props}
    assert props["onnxsim.note"] == "kept"
    assert onnx.load(str(tmp_path / "out.onnx")).graph == onnx.load(str(model)).graph
    with pytest.raises(ValueError, match="unknown metadata keys"):
        embed(model, tmp_path / "x.onnx", {"colour": "red"})


def test_runtime_matrix_required_openvino_blocks_what_it_cannot_run(tmp_path):
    """OpenVINO 2026.4 has no conversion rule for com.microsoft.Inverse, which ONNX Runtime
    runs: a model using it fails the matrix on OpenVINO. Required, that failure gates the
    model; only reported, it does not."""
    x = np.random.default_rng(0).normal(size=(4, 2, 2)).astype(np.float32) + \
        np.eye(2, dtype=np.float32) * 3
    models = {"fp32": _onnx(tmp_path / "flat.onnx", "Flatten", ("N", 2, 2)),
              "int8": _onnx(tmp_path / "inv.onnx", "Inverse", ("N", 2, 2), "com.microsoft")}
    reference = x.reshape(4, 4)
    entry = {"deploy": {"runtimes": ["onnxruntime", "openvino", "tensorrt"],
                        "required_runtimes": ["onnxruntime", "openvino"]},
             "tolerances": {"atol": 1e-5, "rtol": 1e-5, "min_cosine": 0.99,
                            "min_top1_agreement": 1.0, "min_top5_agreement": 1.0},
             "variants": {"int8": {"min_cosine": -1.0, "min_top1_agreement": 0.0}}}
    lines = []
    gating, report = runtime_matrix(entry, models, x, reference, 1, lines.append)
    assert not any(not c.passed for c in gating["fp32"])          # OpenVINO runs Flatten
    [refused] = [c for c in gating["int8"] if not c.passed]
    assert refused.name == "runtime_runs" and "Inverse" in refused.measured
    assert report["openvino"]["models"]["int8"]["passed"] is False
    assert report["openvino"]["required"] is True and report["openvino"]["version"]
    assert "TensorrtExecutionProvider" in report["tensorrt"]["skipped"]
    assert any("openvino int8: FAILED runtime_runs" in line for line in lines)

    entry["deploy"]["required_runtimes"] = ["onnxruntime"]
    gating, report = runtime_matrix(entry, models, x, reference, 1, lines.append)
    assert gating == {"fp32": [], "int8": []}
    assert report["openvino"]["models"]["int8"]["passed"] is False

    entry["deploy"]["required_runtimes"] = ["onnxruntime", "tensorrt"]
    gating, _ = runtime_matrix(entry, models, x, reference, 1, lines.append)
    assert [c.name for c in gating["fp32"] if not c.passed] == ["runtime_available"]


def test_runtime_accuracy_gates_only_required_runtimes_and_the_summary_says_so():
    """--data figures of another runtime: a failing check of a required runtime fails the
    fp32 entry or drops the variant; of another runtime it is only reported."""
    from orchestrator.stages.context import EntryResult
    from orchestrator.stages.runtimes import runtime_accuracy
    from orchestrator.runtimes import runtimes_line
    from orchestrator.summary import format_summary
    from verify.compare import Check

    def result(passed):
        return {"check": Check("top1_drop", passed, 0.0 if passed else 2.0, 0.5),
                "figures": {"top1": 70.0, "top5": 90.0, "images": 100, "disagree": 2}}

    for required in (True, False):
        report = {"runtimes": {"openvino": {"required": required, "models": {
            "fp32": {"passed": True, "checks": []}, "int8": {"passed": True, "checks": []}}},
            "tensorrt": {"required": False, "skipped": "no GPU"}}}
        variants = {"int8": {"checks": [], "passed": True}}
        lines = []
        gating = runtime_accuracy(report["runtimes"], variants, {"openvino": {
            "fp32": result(False), "int8": result(False)}}, lines.append)
        accuracy = report["runtimes"]["openvino"]["accuracy"]
        assert accuracy["int8"]["passed"] is False and accuracy["int8"]["top1"] == 70.0
        assert [c.passed for c in gating] == ([False] if required else [])
        assert variants["int8"]["passed"] is (not required)
        assert all("FAILED" in line for line in lines)
        assert ("not required" in lines[0]) is (not required)
        line = runtimes_line(report["runtimes"])
        assert line == ("openvino fp32 FAILED, int8 FAILED" + (" (required)" if required else "")
                        + "; tensorrt skipped")
    summary = format_summary([EntryResult("m", "failed", "x", 1.0, line)])
    assert f"  m: {line}" in summary and summary.endswith("0/1 passed")


def test_predict_uses_only_the_model_file_and_keeps_going_past_a_bad_image(tmp_path):
    """A one-layer 'classifier' (mean of each channel: 3 classes) with the contract and labels
    in its metadata: predict's probabilities are the softmax of what the contract makes of the
    image, an unreadable image gets its error while the other is classified (exit 1), and a
    model without metadata is refused by name."""
    from conftest import run_pipeline
    from deploy.predict import softmax

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
                               helper.make_node("Flatten", ["pooled"], ["logits"])],
                              "g", [x], [y])
    bare = tmp_path / "bare.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=9), str(bare))
    art = tmp_path / "art"
    art.mkdir()
    spec = contract(manifest_entries()[ENTRY_OF["mmpretrain"]]["preprocess"], [3, 224, 224])
    embed(bare, art / "model.onnx", {"preprocess": spec, "labels": ["red", "green", "blue"]})
    [good] = generate_images(tmp_path / "img", 1, seed=5)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")

    proc = run_pipeline("predict", str(art), str(good), str(bad), "--top", "3", "--json")
    assert proc.returncode == 1, proc.stderr
    ok, err = json.loads(proc.stdout)
    assert err == {"image": str(bad), "error": err["error"]} and "broken.jpg" in err["error"]
    means = preprocess(good, spec).reshape(3, -1).mean(axis=1, dtype=np.float64)
    probs = softmax(means[None])[0]
    order = np.argsort(-probs)
    assert [t["label"] for t in ok["top"]] == [["red", "green", "blue"][i] for i in order]
    assert [t["probability"] for t in ok["top"]] == pytest.approx(probs[order].tolist(),
                                                                  rel=1e-5)
    text = run_pipeline("predict", str(art), str(good), "--top", "1")
    assert text.returncode == 0 and ["red", "green", "blue"][order[0]] in text.stdout
    (art / "model.onnx").write_bytes(bare.read_bytes())
    refused = run_pipeline("predict", str(art), str(good))
    assert refused.returncode == 1 and "no model_convert.preprocess metadata" in refused.stderr
    missing = run_pipeline("predict", str(art), str(good), "--precision", "int8")
    assert missing.returncode == 1 and "no model.int8.onnx" in missing.stderr


def test_gate_fails_on_an_image_the_contract_cannot_read_and_shards_skip_gpu_runtimes(
        images, own_tensors, tmp_path):
    from orchestrator.accuracy import shard_runtimes

    raw = manifest_entries()[ENTRY_OF["mindcv"]]
    entry = {**raw, "input_shape": [3, 224, 224], "deploy": {"max_level_diff": 1.0}}
    theirs = own_tensors["mindcv"][:2]
    gone = tmp_path / "gone.JPEG"
    [check], figures = deploy_gate(entry, [images[0], gone], theirs, theirs.reshape(2, -1),
                                   _onnx(tmp_path / "f.onnx", "Flatten", (None, 3, 224, 224)),
                                   1)
    assert not check.passed and "could not read 1 image(s)" in check.detail
    assert "gone.JPEG" in check.detail and "max_level_diff" not in figures
    # A GPU runtime would make a shard's figures depend on its node: shards run CPU ones only.
    assert shard_runtimes({"deploy": {"runtimes": ["onnxruntime", "openvino",
                                                   "onnxruntime-cuda", "tensorrt"]}}) == \
        ["openvino"]
