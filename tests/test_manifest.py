"""Manifest loading: every seed model present and valid; bad manifests name file, entry, field."""
from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO, manifest_entries, run_pipeline, write_manifest
from manifests.loader import ManifestError, load_manifest, select

SEED_MODELS = {
    "res2net50-w14-s8", "res2net50-w26-s8", "res2net101-w26-s4", "res2net50-14w-8s-official",
    "paddleclas-res2net50-14w-8s", "paddleclas-res2net50-26w-4s",
    "paddleclas-res2net50-vd-26w-4s", "paddleclas-res2net50-vd-26w-4s-ssld",
    "paddleclas-res2net101-vd-26w-4s", "paddleclas-res2net101-vd-26w-4s-ssld",
    "paddleclas-res2net200-vd-26w-4s", "paddleclas-res2net200-vd-26w-4s-ssld",
    "mindcv-res2net50", "mindcv-res2net101", "mindcv-res2net50-v1b", "mindcv-res2net101-v1b",
}


def test_all_yaml_lists_every_seed_model_and_validates():
    entries = load_manifest(REPO / "manifests" / "all.yaml")
    assert {e.name for e in entries} == SEED_MODELS
    for e in entries:
        assert e["preprocess"]["pipeline"] == e.source
        assert e["export"]["opset"] >= 11 and e["export"]["dynamic_batch"] is True
        assert 0 < e["published"]["top5"] <= 100 and e["published"]["top1"] < e["published"]["top5"]
        ck = e["checkpoint"]
        # The 8-hex prefix OpenMMLab / MindCV / the official release put in file names.
        if "sha256_prefix" in ck:
            assert ck["sha256_prefix"] in ck["url"]


def test_defaults_are_filled_in():
    entry = load_manifest(REPO / "manifests" / "all.yaml")[0]
    assert entry["input_shape"] == [3, 224, 224]
    assert entry["verify"] == {"images": 16, "seed": 0}
    assert set(entry["tolerances"]) >= {"atol", "rtol", "min_cosine", "min_top1_agreement"}


def _broken(tmp_path, mutate) -> str:
    entries = copy.deepcopy(list(manifest_entries().values())[:2])
    mutate(entries)
    path = write_manifest(tmp_path / "bad.yaml", entries)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    return str(info.value)


def test_unknown_key_names_file_entry_and_field(tmp_path):
    msg = _broken(tmp_path, lambda es: es[1]["checkpoint"].update(sha265="00"))
    assert "bad.yaml" in msg and "res2net50-w26-s8" in msg and "checkpoint.sha265" in msg
    assert "unknown key" in msg


def test_missing_field_names_it(tmp_path):
    msg = _broken(tmp_path, lambda es: es[0].pop("num_classes"))
    assert "'res2net50-w14-s8' (#1)" in msg and "field 'num_classes'" in msg
    assert "missing" in msg


def test_every_problem_is_reported_at_once(tmp_path):
    def two_faults(entries):
        entries[0].pop("num_classes")
        entries[1]["checkpoint"].update(sha265="00")
    msg = _broken(tmp_path, two_faults)
    assert "'res2net50-w14-s8' (#1)" in msg and "field 'num_classes'" in msg
    assert "res2net50-w26-s8" in msg and "checkpoint.sha265" in msg
    assert len(msg.splitlines()) >= 2                 # one line per problem


def test_preprocess_takes_exactly_one_resize_form_its_source_has(tmp_path):
    """resize_short, resize_fixed or crop_padding (manifests/schema.py RESIZE_FORMS): none,
    two, or an mmpretrain-only form in another source's block is an error naming the entry
    and the field; each mmpretrain form alone loads."""
    paddle = next(e for e in manifest_entries().values() if e["source"] == "paddleclas")

    def faults(entries):
        for entry in entries:    # the entries share one block (a YAML alias): unshare
            entry["preprocess"] = dict(entry["preprocess"])
        entries[0]["preprocess"].pop("resize_short")
        entries[1]["preprocess"]["resize_fixed"] = 256
        entries.append(copy.deepcopy(paddle))
        entries[2]["preprocess"]["crop_padding"] = 32
        entries[2]["preprocess"].pop("resize_short")
    msg = _broken(tmp_path, faults)
    assert ("'res2net50-w14-s8' (#1): field 'preprocess': give exactly one of resize_short, "
            "resize_fixed, crop_padding (found none)") in msg
    assert "(#2): field 'preprocess': give exactly one of" in msg
    assert "(found resize_short, resize_fixed)" in msg
    assert (f"'{paddle['name']}' (#3): field 'preprocess.crop_padding': paddleclas's eval "
            "transforms have no such resize (only mmpretrain)") in msg
    for form in ({"resize_fixed": 384, "crop": 384}, {"crop_padding": 0, "crop": 240}):
        entry = copy.deepcopy(list(manifest_entries().values())[0])
        entry["preprocess"].pop("resize_short")
        entry["preprocess"].update(form)
        [loaded] = load_manifest(write_manifest(tmp_path / "good.yaml", [entry]))
        assert loaded["input_shape"] == [3, form["crop"], form["crop"]]


def test_unknown_source_names_it(tmp_path):
    msg = _broken(tmp_path, lambda es: es[0].update(source="tensorflow"))
    assert "field 'source'" in msg and "'tensorflow' is not one of" in msg


def test_digest_must_be_given_or_declared_unpublished(tmp_path):
    msg = _broken(tmp_path, lambda es: es[0]["checkpoint"].pop("sha256_prefix"))
    assert "field 'checkpoint'" in msg and "digest_unpublished" in msg


def test_duplicate_names_and_duplicate_yaml_keys(tmp_path):
    msg = _broken(tmp_path, lambda es: es[1].update(name=es[0]["name"]))
    assert "duplicate of entry #1" in msg
    path = tmp_path / "dupkey.yaml"
    path.write_text("models:\n  - name: a\n    name: b\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value).splitlines() == [      # where the second one is
        f"{path}: not valid YAML: duplicate key 'name'", '  in "<unicode string>", line 3, '
        'column 5:', "        name: b", "        ^"]


def test_not_yaml_and_missing_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("models: [\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "nope.yaml")


def test_select_unknown_name():
    entries = load_manifest(REPO / "manifests" / "all.yaml")
    with pytest.raises(ManifestError, match="unknown entry 'res2net9000'"):
        select(entries, ["res2net9000"])


def test_cli_bad_manifest_exits_2_with_the_error(tmp_path):
    entries = list(manifest_entries().values())[:1]
    entries[0]["tolerances"] = {"atol": -1}
    path = write_manifest(tmp_path / "bad.yaml", entries)
    proc = run_pipeline("--manifest", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "bad.yaml: entry 'res2net50-w14-s8' (#1): field 'tolerances.atol'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_list_and_help():
    proc = run_pipeline("--list")
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(SEED_MODELS)
    assert lines[0].split() == ["res2net50-w14-s8", "mmpretrain",
                                "res2net50-w14-s8_3rdparty_8xb32_in1k"]
    help_text = run_pipeline("--help").stdout
    for option in ("--manifest", "--only", "--checkpoint", "--out", "--cache-dir", "--list"):
        assert option in help_text


def test_cli_checkpoint_for_unselected_entry_is_refused(tmp_path):
    proc = run_pipeline("--only", "res2net50-w14-s8", "--checkpoint",
                        f"res2net50-w26-s8={tmp_path}/x.pth")
    assert proc.returncode == 2 and "not selected" in proc.stderr


def test_yaml_anchors_are_shared_not_copied():
    """Every entry's preprocess and tolerances are an alias of a `shared` block: PyYAML gives
    an alias the anchored object itself, a pasted copy only an equal one."""
    doc = yaml.safe_load((REPO / "manifests" / "all.yaml").read_text())
    shared = {id(block): name for name, block in doc["shared"].items()}
    for entry in doc["models"]:
        for key in ("preprocess", "tolerances"):
            assert id(entry[key]) in shared, f"{entry['name']}.{key} is a copy, not an alias"
        assert shared[id(entry["preprocess"])] == f"{entry['source']}_preprocess", entry["name"]


def test_cli_missing_data_dir_is_refused_before_any_work(tmp_path):
    proc = run_pipeline("--only", "res2net50-w14-s8", "--data", str(tmp_path / "no-images"),
                        "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "no-images" in proc.stderr and "does not exist" in proc.stderr
    assert not (tmp_path / "out").exists()
