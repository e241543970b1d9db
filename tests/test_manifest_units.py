"""The manifest loader's messages, in-process and compared whole: each kind of schema problem
names the file, the entry (by name and position) and the field; every unknown or missing key
is its own line, all at once."""
from __future__ import annotations

import pytest
import yaml

from manifests.loader import ManifestError, _merge, load_manifest, select
from manifests.schema import DEFAULTS

ENTRY = {"name": "a", "source": "mindcv", "model_id": "resnet50", "num_classes": 1000,
         "checkpoint": {"url": "https://h/resnet50-12345678.ckpt", "sha256_prefix": "12345678"}}


def _problems(tmp_path, doc) -> list[str]:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return str(caught.value).replace(str(path), "M").splitlines()


def _entry(**changes):
    entry = {**ENTRY, "checkpoint": dict(ENTRY["checkpoint"])}
    for key, value in changes.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    return entry


def test_unknown_keys_each_get_a_line_at_every_level(tmp_path):
    entry = _entry(colour="red", checkpoint={**ENTRY["checkpoint"], "sha265": "00",
                                             "mirror": "x"})
    assert _problems(tmp_path, {"version": 1, "models": [ENTRY | {"name": "b"}, entry]}) == [
        "M: entry 'a' (#2): field 'colour': unknown key (not in the schema: check its "
        "spelling)",                                      # the entry's own keys first
        "M: entry 'a' (#2): field 'checkpoint.mirror': unknown key (not in the schema: check "
        "its spelling)",
        "M: entry 'a' (#2): field 'checkpoint.sha265': unknown key (not in the schema: check "
        "its spelling)"]
    assert _problems(tmp_path, {"modles": [], "models": [ENTRY]}) == [
        "M: field 'modles': unknown key (not in the schema: check its spelling)"]


def test_missing_keys_each_get_a_line_nested_ones_with_their_path(tmp_path):
    """Each missing key named once (jsonschema reports the list once per missing key: the
    first missing key used to be named twice and the second never)."""
    entry = _entry(num_classes=None, checkpoint={"sha256_prefix": "12345678"})
    entry.pop("model_id")
    assert _problems(tmp_path, {"models": [entry]}) == [
        "M: entry 'a' (#1): field 'model_id': missing (required)",
        "M: entry 'a' (#1): field 'num_classes': missing (required)",
        "M: entry 'a' (#1): field 'checkpoint.url': missing (required)"]
    assert _problems(tmp_path, {"version": 1}) == ["M: field 'models': missing (required)"]
    nameless = _entry(name=None)
    assert _problems(tmp_path, {"models": [nameless]}) == [
        "M: entry #1: field 'name': missing (required)"]


def test_values_name_their_field_and_what_was_expected(tmp_path):
    assert _problems(tmp_path, {"models": [_entry(source="tensorflow")]}) == [
        "M: entry 'a' (#1): field 'source': 'tensorflow' is not one of mmpretrain, "
        "paddleclas, mindcv"]
    unpinned = _entry(checkpoint={"url": "https://h/x.ckpt"})
    assert _problems(tmp_path, {"models": [unpinned]}) == [
        "M: entry 'a' (#1): field 'checkpoint': give exactly one of sha256, sha256_prefix, "
        "or digest_unpublished: true (when the publisher gives no digest)"]
    assert _problems(tmp_path, {"models": [_entry(num_classes=0)]}) == [
        "M: entry 'a' (#1): field 'num_classes': 0 is less than the minimum of 1"]
    assert _problems(tmp_path, {"version": 2, "models": [ENTRY]}) == [
        "M: field 'version': 1 was expected"]
    shape = _entry(input_shape=[3, 224, "224"])
    assert _problems(tmp_path, {"models": [shape]}) == [
        "M: entry 'a' (#1): field 'input_shape.2': '224' is not of type 'integer'"]


def test_the_digest_advice_is_only_for_the_checkpoint_s_digest_rule(tmp_path):
    """Another oneOf (labels), or another rule broken by the checkpoint block (its type), gets
    jsonschema's own words, not the sha256 advice."""
    assert _problems(tmp_path, {"models": [_entry(labels=5)]}) == [
        "M: entry 'a' (#1): field 'labels': 5 is not valid under any of the given schemas"]
    assert _problems(tmp_path, {"models": [_entry(checkpoint="x.ckpt")]}) == [
        "M: entry 'a' (#1): field 'checkpoint': 'x.ckpt' is not of type 'object'",
        "M: entry 'a' (#1): field 'checkpoint': give exactly one of sha256, sha256_prefix, "
        "or digest_unpublished: true (when the publisher gives no digest)"]


def _loaded(tmp_path, text: str):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return load_manifest(path)


def _dumped(*entries) -> str:
    return yaml.safe_dump({"version": 1, "models": list(entries)}, sort_keys=False)


def test_defaults_fill_every_level_and_the_source_s_own_come_first(tmp_path):
    mindcv, paddle = _loaded(tmp_path, _dumped(ENTRY, _entry(name="b", source="paddleclas")))
    assert mindcv["export"] == {"opset": 11, "dynamic_batch": True,   # SOURCE_DEFAULTS
                                "fixed_batch_fallback": True}
    assert paddle["export"] == {"opset": 17, "dynamic_batch": True, "fixed_batch_fallback": True}
    assert {key: paddle[key] for key in DEFAULTS} == DEFAULTS
    assert "input_shape" not in paddle.data        # left to orchestrator/derive.py
    (given,) = _loaded(tmp_path, _dumped(_entry(
        export={"dynamic_batch": False}, tolerances={"atol": 1e-3},
        variants={"int8": {"calibration": "entropy", "exclude_nodes": ["n1"]}})))
    assert given["export"] == {"opset": 11, "dynamic_batch": False, "fixed_batch_fallback": True}
    assert given["tolerances"] == {**DEFAULTS["tolerances"], "atol": 1e-3}
    assert given["variants"] == {
        "fp16": DEFAULTS["variants"]["fp16"],
        "int8": {**DEFAULTS["variants"]["int8"], "calibration": "entropy",
                 "exclude_nodes": ["n1"]}}


def test_input_shape_follows_the_crop_unless_given(tmp_path):
    pre = {"pipeline": "mindcv", "resize_short": 256, "crop": 192, "interpolation": "bilinear",
           "mean": [1, 2, 3], "std": [4, 5, 6]}
    derived, given = _loaded(tmp_path, _dumped(
        _entry(preprocess=pre), _entry(name="b", preprocess=pre, input_shape=[3, 200, 200])))
    assert derived["input_shape"] == [3, 192, 192]
    assert given["input_shape"] == [3, 200, 200]


def test_defaults_are_copied_never_shared():
    """What an entry gets from DEFAULTS is its own copy at every depth: changing it does not
    change DEFAULTS, so no other entry sees the change."""
    default = {"a": {"b": {"c": [1]}}, "d": [2]}
    merged = _merge(default, {"a": {}})
    merged["a"]["b"]["c"].append(9)
    merged["d"].append(9)
    whole = _merge(default, None)
    whole["a"]["b"]["c"].append(9)
    assert default == {"a": {"b": {"c": [1]}}, "d": [2]}
    assert merged == {"a": {"b": {"c": [1, 9]}}, "d": [2, 9]}


def test_entries_sharing_a_yaml_anchor_do_not_share_their_blocks(tmp_path):
    """A block given once under an anchor (as all.yaml does with each source's preprocess)
    becomes each entry's own copy: changing it in one entry changes no other entry."""
    pre = {"pipeline": "mindcv", "resize_short": 256, "crop": 224, "interpolation": "bilinear",
           "mean": [1, 2, 3], "std": [4, 5, 6]}
    text = _dumped(ENTRY, _entry(name="b")).replace(
        "models:", f"shared:\n  p: &p {pre}\n  v: &v {{int8: {{exclude_nodes: [n1]}}}}\n"
                   "models:").replace(
        "  num_classes: 1000", "  num_classes: 1000\n  preprocess: *p\n  variants: *v")
    a, b = _loaded(tmp_path, text)
    assert text.count("*p") == 2 and a["preprocess"] == b["preprocess"] == pre
    a["preprocess"]["mean"].append(7)
    a["variants"]["int8"]["exclude_nodes"].append("n2")
    assert b["preprocess"] == pre
    assert b["variants"]["int8"]["exclude_nodes"] == ["n1"]
    assert DEFAULTS["variants"]["int8"]["exclude_nodes"] == []


def test_labels_given_inline_are_kept(tmp_path):
    (entry,) = _loaded(tmp_path, _dumped(_entry(num_classes=2, labels=["cat", "dog"])))
    assert entry["labels"] == ["cat", "dog"]


def test_select_names_every_unknown_entry_and_lists_the_known(tmp_path):
    entries = _loaded(tmp_path, _dumped(ENTRY, _entry(name="b")))
    with pytest.raises(ManifestError) as caught:
        select(entries, ["x", "a", "y"])
    assert str(caught.value) == "unknown entry 'x', 'y'; known: a, b"
    assert [e.name for e in select(entries, ["b", "a", "b"])] == ["b", "a"]
    assert select(entries, []) == entries


def test_cross_field_rules_read_whole(tmp_path):
    pre = {"pipeline": "mmpretrain", "resize_short": 256, "crop": 224,
           "interpolation": "bilinear", "mean": [1, 2, 3], "std": [4, 5, 6]}
    assert _problems(tmp_path, {"models": [_entry(preprocess=pre)]}) == [
        "M: entry 'a' (#1): field 'preprocess.pipeline': 'mmpretrain' differs from source "
        "'mindcv'; each source preprocesses with its own transform code"]
    deploy = {"runtimes": ["onnxruntime"], "required_runtimes": ["openvino", "onnxruntime"]}
    assert _problems(tmp_path, {"models": [_entry(deploy=deploy)]}) == [
        "M: entry 'a' (#1): field 'deploy.required_runtimes': ['openvino'] not in "
        "deploy.runtimes (a required runtime must be checked)"]


def test_whole_file_problems_read_whole(tmp_path):
    assert _problems(tmp_path, {"models": [5, _entry(source="x")]}) == [
        "M: entry #1: must be a mapping, got int",               # and the next one still read
        "M: entry 'a' (#2): field 'source': 'x' is not one of mmpretrain, paddleclas, mindcv"]
    assert _problems(tmp_path, {"modles": [], "version": 2}) == [
        "M: field 'modles': unknown key (not in the schema: check its spelling)",
        "M: field 'models': missing (required)", "M: field 'version': 1 was expected"]
    path = tmp_path / "m.yaml"
    path.write_text("- a\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value) == f"{path}: the top level must be a mapping with a 'models' list"
    with pytest.raises(ManifestError) as caught:
        load_manifest(tmp_path / "nope.yaml")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: cannot read manifest: No such file " \
                                "or directory"
    path.write_bytes(b"models: [\xff]\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value).startswith(f"{path}: not UTF-8 text: 'utf-8' codec can't decode")
    (entry,) = _loaded(tmp_path, _dumped(ENTRY))
    assert entry.file == str(path)
