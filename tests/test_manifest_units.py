"""The manifest loader's messages, in-process and compared whole: each kind of schema problem
names the file, the entry (by name and position) and the field; every unknown or missing key
is its own line, all at once."""
from __future__ import annotations

import pytest
import yaml

from manifests.loader import ManifestError, load_manifest

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
