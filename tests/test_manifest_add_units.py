"""`pipeline.py add`'s text work (manifests/add.py), in-process and compared whole: the
rendered block, where the block goes, which files stay as they were, the names it makes and
the comment above the entry. The end-to-end `add` per source is in test_zoo.py (slow)."""
from __future__ import annotations

import datetime as dt
import glob
import os

import pytest
import yaml

import manifests.add as add
from manifests.add import HEADER, append, default_name, provenance_comment, render
from manifests.loader import ManifestError, load_manifest

FIRST = """version: 1
models:
  - name: first
    source: mindcv
    model_id: resnet50
    num_classes: 1000
    checkpoint: {url: "https://h/resnet50-12345678.ckpt", sha256_prefix: "12345678"}
"""


def _entry(name="second", model_id="mobilenet_v2_100", **extra):
    return {"name": name, "source": "mindcv", "model_id": model_id, "num_classes": 1000,
            "checkpoint": {"url": f"https://h/{model_id}-abcdef12.ckpt",
                           "sha256_prefix": "abcdef12"}, **extra}


MANIFEST = ("# a comment that must survive\nversion: 1\nshared:\n  tol: &tol\n    atol: 0.001\n"
            + FIRST.removeprefix("version: 1\n") + "    tolerances: *tol\n")


def test_append_keeps_the_file_and_adds_a_valid_entry(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    block = append(path, _entry(input_shape=[3, 224, 224]), ["why it is here"])
    text = path.read_text()
    assert text.startswith(MANIFEST) and text.endswith(block)   # appended, nothing rewritten
    assert "  # why it is here\n  - name: second\n" in block
    entries = load_manifest(path)
    assert [e.name for e in entries] == ["first", "second"]
    assert entries[1]["input_shape"] == [3, 224, 224]
    assert entries[0]["tolerances"]["atol"] == 0.001              # the anchor still works


_SAME_FILE = {"url": "https://h/resnet50-12345678.ckpt", "sha256_prefix": "12345678"}


@pytest.mark.parametrize("entry, words", [
    (dict(_entry(name="first"), model_id="other"), "an entry named 'first' exists"),
    (dict(_entry(name="other", model_id="resnet50"), checkpoint=_SAME_FILE),
     "already entry 'first'"),
    (_entry(name="Bad Name"), "field 'name'"),          # the loader's own check, by field
])
def test_append_refuses_and_leaves_the_manifest_untouched(tmp_path, entry, words):
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST)
    with pytest.raises(ManifestError) as caught:
        append(path, entry, [])
    assert words in str(caught.value) and str(path) in str(caught.value)
    assert path.read_text() == MANIFEST
    assert not [p for p in tmp_path.iterdir() if p.name != "m.yaml"]   # no staged file left


def test_append_refuses_a_manifest_whose_models_list_is_not_last(tmp_path):
    path = tmp_path / "m.yaml"
    text = MANIFEST.replace("version: 1\n", "") + "version: 1\n"
    path.write_text(text)
    with pytest.raises(ManifestError, match="not the file's last top-level key"):
        append(path, _entry(input_shape=[3, 224, 224]), [])
    assert path.read_text() == text


def test_render_writes_the_entry_as_an_indented_list_item_in_the_given_key_order():
    entry = {"name": "zz", "source": "mindcv",
             "preprocess": {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                            "interpolation": "bilinear", "crop": 224},
             "exclude_nodes": ["/a/Conv", "/b/Conv"], "num_classes": 3,
             "checkpoint": {"url": "https://h/zz.ckpt", "sha256_prefix": "abcdef12"}}
    assert render(entry, ["first line", "", "third line"]) == (
        "  # first line\n"
        "  #\n"                                   # an empty comment line has no trailing space
        "  # third line\n"
        "  - name: zz\n"
        "    source: mindcv\n"
        "    preprocess:\n"                        # mappings in block style, keys as given
        "      mean: [123.675, 116.28, 103.53]\n"  # lists of numbers on one line
        "      std: [58.395, 57.12, 57.375]\n"
        "      interpolation: bilinear\n"
        "      crop: 224\n"
        "    exclude_nodes:\n"                     # lists of strings one per line
        "    - /a/Conv\n"
        "    - /b/Conv\n"
        "    num_classes: 3\n"
        "    checkpoint:\n"                       # a mapping of scalars too
        "      url: https://h/zz.ckpt\n"
        "      sha256_prefix: abcdef12\n")


def test_render_keeps_unicode_blank_lines_and_a_100_column_width():
    reference = "Téléchargé " + "word " * 40 + "end"
    block = render({"name": "zz", "published": {"reference": reference},
                    "note": "a\n\nb"}, [])
    assert "Téléchargé" in block                  # not escaped as \xE9
    lines = block.splitlines()
    # A multi-line string's blank line stays empty (no indent of trailing spaces).
    assert "" in lines and all(line == line.rstrip() for line in lines)
    widths = [len(line) for line in lines]
    assert 95 < max(widths) <= 110, widths        # folded near column 100, not PyYAML's 80
    assert yaml.safe_load(block)[0]["published"]["reference"] == reference


@pytest.mark.parametrize("model_id, source, expected", [
    ("ViT-B/16 (in21k)", "mmpretrain", "vit-b-16-in21k"),   # each run of bad characters: one -
    ("__Res.Net_50--", "mmpretrain", "res.net_50"),         # separators trimmed at both ends
    ("MobileNetV3_small_x0_35", "paddleclas", "paddleclas-mobilenetv3_small_x0_35"),
    ("pit ti", "mindcv", "mindcv-pit-ti"),
])
def test_default_name_from_any_model_id_is_valid(model_id, source, expected):
    assert default_name(source, model_id) == expected


def _appended(tmp_path, text, entry=None, comment=("why",)):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    block = append(path, entry or _entry(), list(comment))
    return path.read_text(), block


def test_append_adds_exactly_the_block_after_a_file_that_ends_in_a_newline(tmp_path):
    text, block = _appended(tmp_path, FIRST)
    assert text == FIRST + block                  # nothing rewritten, no blank line between
    assert [e.name for e in load_manifest(tmp_path / "m.yaml")] == ["first", "second"]


def test_append_after_a_file_without_a_final_newline_starts_a_new_line(tmp_path):
    text, block = _appended(tmp_path, FIRST.rstrip("\n"))
    assert text == FIRST + block


def test_append_creates_a_missing_manifest_and_its_folders(tmp_path):
    path = tmp_path / "new" / "deeper" / "m.yaml"
    block = append(path, _entry(), [])
    assert path.read_text() == HEADER + block and block.startswith("  - name: second\n")
    assert [e.name for e in load_manifest(path)] == ["second"]


@pytest.mark.parametrize("text", [
    FIRST + "# a comment at the end of the file\n",
    FIRST.replace("  - ", "- ").replace("\n    ", "\n  "),       # the list not indented
    "shared:\n  x:\n  - 1\nmodels:\n" + "".join(   # another list first; models' at 4
        "  " + line + "\n" for line in FIRST.splitlines()[2:]),
    FIRST.replace("version: 1\n", "version: 1\nshared: {x: [\n  1\n  ]\n}\n"),  # a 1-char line
])
def test_models_is_recognised_as_the_last_key_around_comments_and_layouts(tmp_path, text):
    new, block = _appended(tmp_path, text)
    assert new == text + block
    items = [line for line in text.splitlines() if line.lstrip().startswith("- name:")]
    assert block.splitlines()[1] == items[0].replace("first", "second")   # indented alike
    assert [e.name for e in load_manifest(tmp_path / "m.yaml")] == ["first", "second"]


def test_a_key_after_models_with_a_colon_in_its_comment_is_refused_whole(tmp_path):
    text = FIRST.replace("models:\n", "models:  # the list: below\n") + "shared: {}\n"
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        append(path, _entry(), [])
    assert str(caught.value) == (
        f"{path}: `models:` is not the file's last top-level key; add the entry by hand "
        "(pipeline.py add appends to the end of the file)")
    assert path.read_text() == text
    # The same comment on the last key is fine: the key is what comes before the first ':'.
    path.write_text(FIRST.replace("models:\n", "models:  # the list: below\n"))
    append(path, _entry(), [])


def test_duplicates_name_the_entry_by_its_position_counted_from_one(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(FIRST)
    append(path, _entry(), [])
    with pytest.raises(ManifestError) as caught:
        append(path, _entry(name="third"), [])
    assert str(caught.value) == (f"{path}: mindcv mobilenet_v2_100 with this checkpoint is "
                                 "already entry 'second' (#2)")
    with pytest.raises(ManifestError) as caught:
        append(path, _entry(name="second", model_id="other"), [])
    assert str(caught.value) == (f"{path}: an entry named 'second' exists (#2, mindcv "
                                 "mobilenet_v2_100): pass --name")


def test_the_new_text_is_checked_beside_the_manifest_in_a_hidden_file(tmp_path, monkeypatch):
    """A labels file is read relative to the manifest, so the staged copy must sit beside
    it; it is hidden (a dot file), so `manifests/*.yaml` never lists a half-written one."""
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n")
    staged = []
    real_replace = os.replace

    def replace(src, dst):
        staged.append((src, glob.glob(str(tmp_path / "*.yaml"))))
        real_replace(src, dst)

    monkeypatch.setattr(add.os, "replace", replace)
    text, block = _appended(tmp_path, FIRST, _entry(num_classes=3, labels="names.txt"))
    assert text == FIRST + block
    assert load_manifest(tmp_path / "m.yaml")[1]["labels"] == ["cat", "dog", "bird"]
    [(src, listed)] = staged
    assert os.path.dirname(src) == str(tmp_path) and os.path.basename(src).startswith(".m.yaml.")
    assert listed == [str(tmp_path / "m.yaml")]   # a shell glob does not list it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml", "names.txt"]


def test_provenance_comment_says_when_which_version_and_where_each_field_came_from():
    described = {"model_id": "pit_ti", "family": "pit",
                 "versions": {"mindcv": "0.3.0", "framework": "mindspore 2.3.1"}}
    derived = {"fields": {"preprocess": "mindcv/models/pit.py default_cfgs",
                          "input_shape": "the crop"},
               "notes": ["published top-1/top-5 not taken: another checkpoint"]}
    day = dt.date(2026, 2, 28)
    # Without a date: today's, read around the call so that midnight cannot break the test.
    before = dt.date.today().isoformat()
    [first, *_] = provenance_comment("mindcv", described, derived)
    assert first.split(" on ")[1].split(" ")[0] in {before, dt.date.today().isoformat()}
    today = day.isoformat()
    assert provenance_comment("mindcv", described, derived, on=day) == [
        f"Added by `pipeline.py add mindcv pit_ti` on {today} (mindcv 0.3.0; family pit).",
        "preprocess: mindcv/models/pit.py default_cfgs",
        "input_shape: the crop",
        "published top-1/top-5 not taken: another checkpoint"]
    # No version of the source package: the framework's; neither, or no family: left out.
    assert provenance_comment("paddleclas", {"model_id": "X", "family": "resnet", "versions": {
        "framework": "paddle 2.6"}}, {}, on=day) == [
        f"Added by `pipeline.py add paddleclas X` on {today} (paddleclas paddle 2.6; "
        "family resnet)."]
    assert provenance_comment("mmpretrain", {"model_id": "Y"}, {"fields": {}}, on=day) == [
        f"Added by `pipeline.py add mmpretrain Y` on {today} (mmpretrain)."]


def test_every_per_source_fact_comes_from_the_registry():
    """converters/registry.py is the one place a source is declared: the manifest schema's
    source names and per-source defaults, `add`'s entry names and the zoo sweep's checkpoint
    names and maker arguments all read its SourceSpec."""
    from converters.registry import SOURCES, SourceSpec
    from manifests import schema
    from manifests.add import default_name
    from scripts import zoo_sweep

    assert schema.SOURCES == tuple(SOURCES) == ("mmpretrain", "paddleclas", "mindcv")
    assert schema.ENTRY["properties"]["source"]["enum"] == list(SOURCES)
    assert schema.SOURCE_DEFAULTS == {"mindcv": {"export": {"opset": 11}}}
    assert [default_name(s, "ResNet50") for s in SOURCES] == [
        "resnet50", "paddleclas-resnet50", "mindcv-resnet50"]
    assert SOURCES["mmpretrain"].maker_args("resnet18_8xb32_in1k") == [
        "--arch", "mmpretrain:resnet18_8xb32_in1k"]
    assert SOURCES["mindcv"].maker_args("resnet18") == ["--model-id", "resnet18"]
    assert {s.checkpoint_suffix for s in SOURCES.values()} == {".pth", ".pdparams", ".ckpt"}
    assert "MAKERS" not in vars(zoo_sweep)
    spec = SourceSpec("x", "x", "converters.x.worker", "X", ".bin", prefixed_names=False)
    assert spec.maker_args("m") == ["--model-id", "m"] and spec.defaults == {}
