"""Hostile inputs cost bounded memory and time and get a clear error: YAML alias bombs and
deep nesting in manifests, oversized or deeply nested JSON reports, oversized label files,
images whose header declares too many pixels, and workers that outgrow their memory limit.
No framework here (the slow worker tests are in test_limits_workers.py)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, manifest_entries, png_declaring, run_pipeline
from converters.data_loader import batches, header_size, stack
from converters.registry import SourceSpec
from converters.limits import tree_rss
from converters.runner import Worker, WorkerFailed
from manifests.bounded import DocumentTooLarge, load_json, load_yaml, read_json
from manifests.loader import ManifestError, load_manifest
from verify.dataset import DatasetError, load_dataset


def billion_laughs(levels: int = 9) -> str:
    """Each level a list of nine aliases of the one before: 9**levels strings."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\nmodels: []\n"


def _limited_address_space():
    resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))


# --------------------------------------------------------------------------- YAML
def test_billion_laughs_manifest_is_refused_within_bounded_memory_and_time(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert bomb.stat().st_size < 1500
    start = time.monotonic()
    # 2 GiB of address space for the whole run: expanding the document needs ~15 GB.
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "--manifest", str(bomb),
                           "--list"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=_limited_address_space,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{bomb}: refused before loading: its aliases expand to more than 100,000 nodes" \
        in proc.stderr
    assert "MODEL_CONVERT_MAX_YAML_NODES=100000" in proc.stderr
    assert took < 20, f"took {took:.1f} s to refuse"


@pytest.mark.parametrize("text, figure", [
    ("models: &m [*m]\n", "an alias refers to a node that contains it"),
    ("models: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64 levels deep"),
    ("models:\n" + "".join(" " * (2 * i + 1) + "-\n" for i in range(100)),
     "nested more than 64 levels deep"),                  # block nesting, by indentation
    ("x: &x 1\nmodels: [" + ",".join(["*x"] * 1001) + "]\n", "more than 1,000 aliases"),
])
def test_hostile_yaml_is_refused_naming_file_and_limit(tmp_path, text, figure):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert str(err.value).startswith(f"{path}: refused")
    assert figure in str(err.value)


def test_oversized_manifest_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES", "1000")
    path = tmp_path / "big.yaml"
    path.write_text("models: []\n" + "#" * 2000 + "\n")
    with pytest.raises(ManifestError, match=r"refused: 2,012 bytes, over the limit of 1,000 "
                                            r"\(MODEL_CONVERT_MAX_DOCUMENT_BYTES"):
        load_manifest(path)


def test_anchors_within_the_limits_still_load(tmp_path):
    """Users share blocks with anchors: that stays allowed."""
    shipped = manifest_entries()
    first, second = dict(shipped["res2net50-w14-s8"]), dict(shipped["res2net50-w26-s8"])
    second["preprocess"] = first["preprocess"]      # one object twice: the dumper anchors it
    path = tmp_path / "anchored.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": [first, second]}, sort_keys=False))
    assert "&id001" in path.read_text() and "*id001" in path.read_text()
    entries = load_manifest(path)
    assert [e.name for e in entries] == [first["name"], second["name"]]
    assert entries[1]["preprocess"] == entries[0]["preprocess"]


def test_a_lower_limit_from_the_environment_applies(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_CONVERT_MAX_YAML_NODES", "500")
    with pytest.raises(ManifestError, match="MODEL_CONVERT_MAX_YAML_NODES=500"):
        load_manifest(REPO / "manifests" / "all.yaml")
    monkeypatch.setenv("MODEL_CONVERT_MAX_YAML_NODES", "many")
    with pytest.raises(ValueError, match="expected a positive integer"):
        load_yaml("a: 1", "x.yaml")


# --------------------------------------------------------------------------- JSON
def test_deep_json_is_refused_before_the_recursive_decoder():
    with pytest.raises(DocumentTooLarge, match="nested more than 64 levels deep"):
        load_json("[" * 100_000 + "]" * 100_000, "report.json")
    # Brackets inside strings are text, not nesting.
    assert load_json(json.dumps({"k": "[" * 500}), "report.json") == {"k": "[" * 500}
    # Strings between the brackets do not hide the depth, and depth counts down on a close
    # and up again after it: 64 levels pass, 65 are refused, however they are reached.
    for depth, refused in ((64, False), (65, True)):
        with_strings = '["x",' * (depth - 1) + '["x"]' + "]" * (depth - 1)
        after_a_close = "[" * (depth - 2) + "[]," + "[[]]" + "]" * (depth - 2)
        for text in (with_strings, after_a_close):
            if refused:
                with pytest.raises(DocumentTooLarge, match="nested more than 64 levels deep"):
                    load_json(text, "report.json")
            else:
                assert load_json(text, "report.json") == json.loads(text)


def test_read_json_names_the_file_or_the_label_it_is_given(tmp_path, monkeypatch):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 65 + "]" * 65)
    why = ("refused before loading: nested more than 64 levels deep (the limit is "
           "MODEL_CONVERT_MAX_NESTING=64; docs/usage.md, 'Limits')")
    for label, named in ((None, str(deep)), ("a/report.json", "a/report.json")):
        with pytest.raises(DocumentTooLarge) as err:
            read_json(deep, label)
        assert str(err.value) == f"{named}: {why}"
    big = tmp_path / "big.json"
    big.write_text('{"a": 1234}')                      # 11 bytes
    monkeypatch.setenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES", "10")
    for label, named in ((None, str(big)), ("b/report.json", "b/report.json")):
        with pytest.raises(DocumentTooLarge) as err:
            read_json(big, label)
        assert str(err.value) == (f"{named}: refused: 11 bytes, over the limit of 10 "
                                  "(MODEL_CONVERT_MAX_DOCUMENT_BYTES; docs/usage.md, 'Limits')")
    with pytest.raises(DocumentTooLarge) as err:               # text, not a file
        load_json('{"a": 1234}', "c.json")
    assert str(err.value) == ("c.json: refused before loading: 11 characters (the limit is "
                              "MODEL_CONVERT_MAX_DOCUMENT_BYTES=10; docs/usage.md, 'Limits')")
    monkeypatch.setenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES", "11")
    assert read_json(big) == {"a": 1234}


def test_publisher_and_verifier_skip_a_hostile_report_with_a_reason(tmp_path):
    key = tmp_path / "key.pem"
    assert run_pipeline("keygen", str(key)).returncode == 0
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    (out / "deep" / "report.json").write_text("[" * 100_000 + "]" * 100_000)
    (out / "bomb").mkdir()
    (out / "bomb" / "report.json").write_text("{" * 10)
    store = tmp_path / "store"
    proc = run_pipeline("publish", "--from", str(out), "--to", str(store), "--public-key",
                        str(key.with_suffix(".pub")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deep: report.json unreadable" in proc.stdout
    assert "nested more than 64 levels deep" in proc.stdout
    assert "bomb: report.json unreadable" in proc.stdout
    assert "published 0" in proc.stdout
    assert not [p for p in store.rglob("*") if "deep" in p.parts or "bomb" in p.parts]
    verify = run_pipeline("verify-artifact", str(out / "deep"), "--public-key",
                          str(key.with_suffix(".pub")))
    assert verify.returncode == 1 and "FAILED" in verify.stderr
    assert "Traceback" not in verify.stderr


# --------------------------------------------------------------------------- label files
def test_oversized_label_file_is_refused_naming_it_and_the_limit(tmp_path, monkeypatch):
    (tmp_path / "a.JPEG").write_bytes(b"x")
    (tmp_path / "val.txt").write_text("a.JPEG 1\n" + "# padding\n" * 100)
    monkeypatch.setenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES", "100")   # label files: 4x this
    with pytest.raises(DatasetError, match=r"val.txt: refused: 1,009 bytes, over the limit of "
                                           r"400 \(MODEL_CONVERT_MAX_DOCUMENT_BYTES x 4"):
        load_dataset(tmp_path)
    monkeypatch.delenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES")
    assert load_dataset(tmp_path).labels == [1]


# --------------------------------------------------------------------------- images
def test_an_image_over_the_pixel_limit_is_unreadable_and_never_decoded(tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(small)
    huge = png_declaring(tmp_path / "huge.png", 25_000, 25_000)
    assert huge.stat().st_size < 200
    decoded = []

    def per_image(path):
        decoded.append(Path(path).name)
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)

    out = list(batches([str(small), str(huge), str(small)], per_image, stack, 4, 2))
    assert len(out) == 1 and out[0].indices == [0, 2]
    assert out[0].unreadable == [{"index": 1, "path": str(huge), "error":
                                  "too large: 25000 x 25000 (625,000,000 pixels, limit "
                                  "50,000,000: --max-image-pixels)"}]
    assert decoded == ["small.png", "small.png"]
    assert header_size(str(huge)) == (25_000, 25_000)
    # The limit is a setting: raised above the image, the decoder gets it (and fails on
    # its one-row data, which is the decoder's own, different error).
    again = list(batches([str(huge)], per_image, stack, 4, 1, max_pixels=10**9))
    assert again[0].unreadable[0]["error"] != out[0].unreadable[0]["error"]
    assert "huge.png" in decoded
    # 0 turns the check off (docs/usage.md, "Limits"), in the workers' loader and in the job they
    # are given, and in the contract's own preprocessing.
    from converters.protocol import CaptureJob
    from converters.worker_flow import _max_pixels
    from deploy.preprocess import PreprocessError, preprocess

    def job(**limit):
        return CaptureJob(entry={}, checkpoint="c", images=[], **limit)

    decoded.clear()
    off = list(batches([str(huge)], per_image, stack, 4, 1,
                       max_pixels=_max_pixels(job(max_image_pixels=0))))
    assert "huge.png" in decoded and "too large" not in off[0].unreadable[0]["error"]
    assert _max_pixels(job()) == 50_000_000 and _max_pixels(job(max_image_pixels=7)) == 7
    spec = {"decode": {"library": "pillow"}, "resize": None, "crop": None}
    with pytest.raises(PreprocessError, match="too large"):
        preprocess(huge, spec, max_pixels=10)
    with pytest.raises(PreprocessError) as decoder:
        preprocess(huge, spec, max_pixels=0)
    assert "too large" not in str(decoder.value)


# --------------------------------------------------------------------------- worker memory
HOG = SourceSpec("hog", "orchestrator", "tests.helpers.memory_hog", "memory hog", ".none")


@pytest.mark.parametrize("in_child", [False, True])
def test_a_worker_over_its_memory_limit_is_stopped_with_resource_limit(tmp_path, in_child):
    worker = Worker(HOG, {"task": "evaluate", "mb": 1200, "in_child": in_child},
                    tmp_path / "w", memory_limit=300 * 2**20)
    start = time.monotonic()
    worker.wait(120, progress=False)
    with pytest.raises(WorkerFailed) as err:
        worker.result()
    assert err.value.kind == "resource_limit"
    assert "memory hog worker (evaluate) exceeded its memory limit of 0.29 GiB" \
        in err.value.message
    assert err.value.details["peak_bytes"] > 300 * 2**20
    assert err.value.details["peak_bytes"] < 600 * 2**20      # stopped soon after, not at 1.2 GB
    assert time.monotonic() - start < 60
    assert tree_rss(worker.proc.pid) == 0                      # nothing of it is left


def test_a_worker_within_its_memory_limit_runs_to_its_end(tmp_path):
    worker = Worker(HOG, {"mb": 100, "in_child": True}, tmp_path / "w",
                    memory_limit=600 * 2**20)
    assert worker.wait(120, progress=False) == 0
    assert worker.result() == {"ok": True}
    assert worker.watch.peak > 100 * 2**20          # the child's memory was seen


def test_worker_memory_option_is_parsed_and_bad_sizes_refused(tmp_path):
    bad = run_pipeline("--worker-memory", "lots", "--list")
    assert bad.returncode == 2 and "'lots': expected a size such as 6G or 800M" in bad.stderr
    from commands.convert import _parse_size

    assert _parse_size("6G") == 6 * 2**30 and _parse_size("800M") == 800 * 2**20
    assert _parse_size("1.5GiB") == int(1.5 * 2**30) and _parse_size("4096") == 4096


# --------------------------------------------------------------------------- fuzz campaign
def test_seeded_fuzz_campaign_over_manifest_dataset_and_report_parsers(tmp_path):
    """Mutated manifests, label files and reports, 80 of each: each loaded whole or refused
    with the parser's own error within 2 s, under 2 GiB of address space; no hostile report
    published (tests/helpers/fuzz_documents.py). A fixed count, not a time: the same inputs
    on a fast or a loaded machine."""
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "helpers" / "fuzz_documents.py"),
                           str(tmp_path), "20261122", "80"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, preexec_fn=_limited_address_space,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.split(": ", 1)[1].rsplit(", ", 1)[0])
    # Most mutations break the document: a parser that let everything load would show here.
    assert summary["manifest"]["refused"] >= 60 and summary["dataset"]["refused"] >= 60, summary
    assert summary["report"] == {"refused": 80, "loaded": 0}, summary


def test_label_file_names_stay_inside_the_dataset_folder(tmp_path):
    (tmp_path / "a.JPEG").write_bytes(b"x")
    for name in ("../outside.JPEG", "/etc/passwd", "sub/../../x.JPEG"):
        (tmp_path / "val.txt").write_text(f"a.JPEG 1\n{name} 2\n")
        with pytest.raises(DatasetError, match=r"val.txt, line 2: .* is outside the dataset "
                                                r"folder"):
            load_dataset(tmp_path)


def test_deep_yaml_flow_nesting_is_refused_while_scanning(tmp_path):
    """PyYAML's scanner is quadratic in open flow levels: 200 kB of '[' must stop at the
    limit, not after minutes."""
    path = tmp_path / "deep.yaml"
    path.write_text("models: " + "[" * 200_000)
    start = time.monotonic()
    with pytest.raises(ManifestError, match="nested more than 64 levels deep"):
        load_manifest(path)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("nested, load", [
    (lambda n: "[" * n + "]" * n, load_yaml),                            # flow, empty inside
    (lambda n: "[" * n + "1" + "]" * n, load_yaml),
    (lambda n: "".join(" " * (2 * i) + "-\n" for i in range(n)), load_yaml),         # block
    (lambda n: "".join(" " * (2 * i) + f"k{i}:\n" for i in range(n)), load_yaml),
    # Block levels with an empty flow collection innermost: 6 collections were accepted
    # under a limit of 5 (the node walk counted the scalar under them, and there is none).
    (lambda n: "".join(" " * (2 * i) + "-" + " []" * (i == n - 2) + "\n"
                       for i in range(n - 1)), load_yaml),
    (lambda n: "".join(" " * (2 * i) + f"k{i}:" + " {}" * (i == n - 2) + "\n"
                       for i in range(n - 1)), load_yaml),
    (lambda n: "[" * n + "]" * n, load_json),
], ids=["flow", "flow-scalar", "block-list", "block-map", "block-list-flow", "block-map-flow",
        "json"])
def test_the_nesting_limit_counts_collections_the_same_way_everywhere(nested, load,
                                                                      monkeypatch):
    """The limit is the number of collections inside each other: exactly that many load,
    one more is refused, whichever check (the scanner's, the node walk's, JSON's) sees it."""
    monkeypatch.setenv("MODEL_CONVERT_MAX_NESTING", "5")
    assert load(nested(5), "x") is not None
    with pytest.raises(DocumentTooLarge) as refused:
        load(nested(6), "x")
    assert str(refused.value) == ("x: refused before loading: nested more than 5 levels deep "
                                  "(the limit is MODEL_CONVERT_MAX_NESTING=5; docs/usage.md, "
                                  "'Limits')")


def test_the_node_limit_counts_every_node_an_alias_brings(monkeypatch):
    """`a: &a [1, 2]` and `b: *a`: the mapping, two keys and the list with its two items
    twice, 9 nodes. A limit of 9 loads it; 8 refuses it."""
    text = "a: &a [1, 2]\nb: *a\n"
    monkeypatch.setenv("MODEL_CONVERT_MAX_YAML_NODES", "9")
    assert load_yaml(text, "x") == {"a": [1, 2], "b": [1, 2]}
    monkeypatch.setenv("MODEL_CONVERT_MAX_YAML_NODES", "8")
    with pytest.raises(DocumentTooLarge) as refused:
        load_yaml(text, "x")
    assert str(refused.value) == ("x: refused before loading: its aliases expand to more than "
                                  "8 nodes (the limit is MODEL_CONVERT_MAX_YAML_NODES=8; "
                                  "docs/usage.md, 'Limits')")


def test_alias_and_text_limits_exactly_and_a_raised_nesting_limit_still_ends_cleanly(
        monkeypatch):
    monkeypatch.setenv("MODEL_CONVERT_MAX_YAML_ALIASES", "2")
    assert load_yaml("a: &a 1\nb: *a\nc: *a\n", "x") == {"a": 1, "b": 1, "c": 1}
    with pytest.raises(DocumentTooLarge) as refused:
        load_yaml("a: &a 1\nb: *a\nc: *a\nd: *a\n", "x")
    assert str(refused.value) == ("x: refused before loading: more than 2 aliases (the limit "
                                  "is MODEL_CONVERT_MAX_YAML_ALIASES=2; docs/usage.md, 'Limits')")
    monkeypatch.setenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES", "10")
    with pytest.raises(DocumentTooLarge) as refused:
        load_yaml("a" * 20, "x")
    assert str(refused.value) == ("x: refused before loading: 20 characters (the limit is "
                                  "MODEL_CONVERT_MAX_DOCUMENT_BYTES=10; docs/usage.md, 'Limits')")
    # A limit raised past what Python's recursion can compose: refused, not a RecursionError.
    monkeypatch.delenv("MODEL_CONVERT_MAX_DOCUMENT_BYTES")
    monkeypatch.setenv("MODEL_CONVERT_MAX_NESTING", "100000")
    with pytest.raises(DocumentTooLarge) as refused:
        load_yaml("".join(" " * i + "-\n" for i in range(3000)), "x")
    assert str(refused.value) == ("x: refused before loading: nested too deep to parse (the "
                                  "limit is MODEL_CONVERT_MAX_NESTING=100000; docs/usage.md, "
                                  "'Limits')")


def test_only_regular_files_are_read_a_fifo_or_a_device_is_refused(tmp_path):
    """docs/usage.md, "Limits": a FIFO as the manifest, /dev/zero as a label file or an artifact's
    report.json: each refused at once, naming it, not read forever (a child process with a
    deadline, so that a regression hangs nothing but it)."""
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "--manifest", str(fifo),
                           "--list"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{fifo}: refused: not a regular file" in proc.stderr, \
        proc.stderr[-2000:]
    data = tmp_path / "val"
    data.mkdir()
    (data / "val.txt").symlink_to("/dev/zero")
    art = tmp_path / "out" / "a"
    art.mkdir(parents=True)
    (art / "report.json").symlink_to("/dev/zero")
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
            "from manifests.bounded import read_json\n"
            "from verify.dataset import DatasetError, load_dataset\n"
            "try:\n    load_dataset(Path(sys.argv[2]))\nexcept DatasetError as e:\n    print(e)\n"
            "try:\n    read_json(Path(sys.argv[3]))\nexcept Exception as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO), str(data),
                           str(art / "report.json")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all("not a regular file" in line for line in lines), lines
    assert "val.txt" in lines[0] and "report.json" in lines[1]
