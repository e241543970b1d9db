"""Dataset layouts, up-front dataset errors, the --limit subset, the parallel loader and the
accuracy gates. No framework worker runs here."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_pipeline
from converters.data_loader import LoaderStats, batches
from verify.accuracy import AccuracyMeter, accuracy_checks, images_allowed, sampling_allowance
from verify.dataset import (SYNSETS_FILE, DatasetError, check_num_classes, load_dataset,
                            spread_pick, spread_subset)
from verify.images import ODD_KINDS, imagenet_like, write_jpeg

SYNSETS = sorted(SYNSETS_FILE.read_text().split())
LIMITS = {"onnx_top1_delta": 0.1, "disagreement": 0.1, "published_top1_delta": 0.3,
          "unreadable": 1.0}


def _flat(tmp_path: Path, labels: list[int], name: str, sep: str) -> Path:
    root = tmp_path / name.replace(".", "_")
    paths = imagenet_like(root, len(labels), seed=1, size=(40, 60))
    (root / name).write_text("".join(f"{p.name}{sep}{lab}\n" for p, lab in zip(paths, labels)))
    return root


# --------------------------------------------------------------------------- layouts
def test_three_layouts_give_the_same_samples(tmp_path):
    labels = [65, 0, 999, 65, 3]
    txt = load_dataset(_flat(tmp_path, labels, "val.txt", " "))
    tsv = load_dataset(_flat(tmp_path, labels, "val_map.txt", "\t"))
    assert (txt.layout, tsv.layout) == ("val.txt", "val_map.txt")
    assert txt.labels == tsv.labels == labels
    assert [p.name for p in txt.paths] == [p.name for p in tsv.paths]

    folders = tmp_path / "folders"
    for i, label in enumerate(labels):
        (folders / SYNSETS[label]).mkdir(parents=True, exist_ok=True)
        (folders / SYNSETS[label] / txt.paths[i].name).hardlink_to(txt.paths[i])
    tree = load_dataset(folders)
    assert tree.layout == "imagefolder"
    # A subset of synset folders keeps ImageNet indices (not 0..k-1 as ImageFolder would).
    assert sorted(zip((p.name for p in tree.paths), tree.labels)) == \
        sorted(zip((p.name for p in txt.paths), labels))
    assert tree.classes == 4


def test_index_named_folders_and_odd_images_are_listed(tmp_path):
    for label in ("7", "123"):
        imagenet_like(tmp_path / label, 2, seed=int(label), odd_every=1, size=(30, 40))
    data = load_dataset(tmp_path)
    assert sorted(set(data.labels)) == [7, 123] and len(data) == 4


def test_write_jpeg_kinds_are_what_imagenet_holds(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    seen = {}
    for kind in ("rgb", *ODD_KINDS):
        write_jpeg(tmp_path / f"{kind}.JPEG", rgb, kind)
        with Image.open(tmp_path / f"{kind}.JPEG") as im:
            seen[kind] = (im.format, im.mode)
    assert seen == {"rgb": ("JPEG", "RGB"), "grayscale": ("JPEG", "L"),
                    "cmyk": ("JPEG", "CMYK"), "png_named_jpeg": ("PNG", "RGB")}


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("content, expected, line", [
    ("ILSVRC2012_val_00000001.JPEG 1000\n", "label 1000 is out of range", 1),
    ("ILSVRC2012_val_00000001.JPEG -1\n", "label -1 is out of range", 1),
    ("# header\nILSVRC2012_val_00000001.JPEG cat\n", "label 'cat' is not an integer", 2),
    ("ILSVRC2012_val_00000001.JPEG\n", "expected 'NAME LABEL'", 1),
    ("missing.JPEG 3\nalso_missing.JPEG 4\n", "names 2 image(s) that are not in", None),
    ("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000001.JPEG 2\n", "listed twice", 2),
    ("# only a comment\n", "lists no images", None),
])
def test_label_file_errors_name_the_line_and_cause(tmp_path, content, expected, line):
    imagenet_like(tmp_path, 1, size=(20, 20))
    (tmp_path / "val.txt").write_text(content)
    with pytest.raises(DatasetError, match=r"val\.txt") as err:
        load_dataset(tmp_path)
    assert expected in str(err.value)
    if line is not None:   # an error on one line says which, as the file counts lines
        assert f"val.txt, line {line}: " in str(err.value)


def test_val_map_needs_a_tab(tmp_path):
    imagenet_like(tmp_path, 1, size=(20, 20))
    (tmp_path / "val_map.txt").write_text("ILSVRC2012_val_00000001.JPEG 5\n")
    with pytest.raises(DatasetError, match=r"val_map\.txt, line 1: expected 'NAME<TAB>LABEL'"):
        load_dataset(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="is empty"):
        load_dataset(tmp_path)
    imagenet_like(tmp_path, 2, size=(20, 20))
    with pytest.raises(DatasetError, match="holds 2 image file.* no val.txt or val_map.txt"):
        load_dataset(tmp_path)
    imagenet_like(tmp_path / "cats", 1, size=(20, 20))
    with pytest.raises(DatasetError, match="synsets .* or all class indices.*cats"):
        load_dataset(tmp_path)
    other = tmp_path / "other"
    imagenet_like(other / "n99999999", 1, size=(20, 20))
    with pytest.raises(DatasetError, match="n99999999 are not ImageNet-1k synsets"):
        load_dataset(other)
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset(tmp_path / "ILSVRC2012_val_00000001.JPEG")


def test_labels_beyond_the_model_classes_are_refused(tmp_path):
    data = load_dataset(_flat(tmp_path, [1, 20, 500], "val.txt", " "))
    check_num_classes(data, 1000, "ok")
    with pytest.raises(DatasetError, match="'tiny' has num_classes 10.*2 image\\(s\\) "
                                           "labelled up to 500"):
        check_num_classes(data, 10, "tiny")


# --------------------------------------------------------------------------- --limit
def test_limit_spreads_over_all_classes_deterministically():
    labels = [c for c in range(100) for _ in range(5)]          # 100 classes x 5 images
    sub = spread_subset(labels, 250)
    assert sub == spread_subset(labels, 250) and len(sub) == len(set(sub)) == 250
    counts = np.bincount([labels[i] for i in sub], minlength=100)
    assert counts.min() == 2 and counts.max() == 3                # 2 rounds + half a round
    half = spread_subset(labels, 50)
    picked = sorted(labels[i] for i in half)
    assert len(set(picked)) == 50 and picked[0] == 0 and picked[-1] == 99
    assert max(np.diff(picked)) <= 3                               # evenly spaced classes
    assert spread_subset(labels, None) == list(range(500)) == spread_subset(labels, 10_000)
    assert spread_pick(4, 10) == [0, 3, 6, 9] and spread_pick(9, 3) == [0, 1, 2]


# --------------------------------------------------------------------------- loader
def test_loader_keeps_order_counts_unreadable_and_decodes_ahead():
    active, peak, lock = [0], [0], threading.Lock()

    def per_image(path):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        if path.endswith("bad"):
            raise ValueError("cannot decode\nsecond line")
        return np.full((3, 2, 2), int(path.split("-")[0]), np.float32)

    paths = [f"{i}-{'bad' if i in (3, 4, 9) else 'ok'}" for i in range(11)]
    stats = LoaderStats()
    out = list(batches(paths, per_image, np.stack, 4, workers=3, stats=stats))
    # Batches are cut by file position (an unreadable file still takes its slot), in order.
    assert [b.indices for b in out] == [[0, 1, 2], [5, 6, 7], [8, 10]]
    assert [b.array[:, 0, 0, 0].tolist() for b in out] == [[0, 1, 2], [5, 6, 7], [8, 10]]
    assert [u["index"] for b in out for u in b.unreadable] == [3, 4, 9]
    assert out[0].unreadable[0]["error"] == "ValueError: cannot decode"
    assert (stats.images, stats.unreadable) == (8, 3)
    assert peak[0] == 3                                 # three decode threads were busy at once
    allbad = list(batches(["x-bad"], per_image, np.stack, 4, workers=1))
    assert allbad[0].array is None and allbad[0].indices == []


# --------------------------------------------------------------------------- gates
def _logits(labels, correct_mask, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (len(labels), classes)).astype(np.float32)
    for i, (label, ok) in enumerate(zip(labels, correct_mask)):
        x[i, label] = x[i].max() + 1 if ok else x[i].min() - 1
    return x


def test_meter_and_gates():
    labels = np.arange(10) % 10
    src = _logits(labels, [True] * 6 + [False] * 4)
    onnx = src.copy()
    onnx[0, labels[0]] -= 10                     # ONNX now misses image 0: one disagreement
    meter = AccuracyMeter()
    meter.add(labels[:5], np.arange(5), src[:5], onnx[:5])
    meter.add(labels[5:], np.arange(5, 10), src[5:], onnx[5:])
    s = meter.summary()
    assert (s["source"]["top1"], s["onnx"]["top1"], s["disagree"]) == (60.0, 50.0, 1)
    assert s["source"]["top5"] >= s["source"]["top1"] and s["source"]["images"] == 10
    assert meter.disagree == [0] and s["max_abs_logit_diff"] == pytest.approx(10, abs=1e-5)

    checks, published = accuracy_checks(meter, LIMITS, 11, 1, {"top1": 60.0, "top5": 90.0},
                                        pinned=False)
    by = {c.name: c for c in checks}
    assert not by["onnx_top1_delta"].passed and by["onnx_top1_delta"].measured == 10.0
    assert not by["top1_disagreement"].passed and by["top1_disagreement"].measured == 10.0
    assert not by["unreadable_images"].passed and by["unreadable_images"].measured == 9.0909
    assert "published_top1_delta" not in by and published["applied"] is False
    assert "not the pinned" in published["why"]

    same = AccuracyMeter()
    same.add(labels, np.arange(10), src, src)
    checks, published = accuracy_checks(same, LIMITS, 10, 0, {"top1": 61.0, "top5": 90.0,
                                                               "reference": "x"}, pinned=True)
    by = {c.name: c for c in checks}
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert published["applied"] and by["published_top1_delta"].measured == 1.0
    assert by["published_top1_delta"].limit > 0.3 + 10    # 10 images: wide sampling allowance
    assert sampling_allowance(78.0, 50000) == 0.0
    assert 0.3 < sampling_allowance(78.0, 10000) < 1.3    # 3 x 0.41 pt x FPC
    far = AccuracyMeter()
    far.add(labels, np.arange(10), src, src)
    checks, _ = accuracy_checks(far, LIMITS, 10, 0, {"top1": 99.0, "top5": 99.0}, pinned=True)
    assert not {c.name: c for c in checks}["published_top1_delta"].passed


# The logit gate's: near-tie margin 2 x (atol + rtol x max|logit|).
TOL = {"atol": 1e-4, "rtol": 1e-5}


def _tie_case(gap: float, onnx_class: int):
    """400 images the source and ONNX agree on, except image 7: its source top-1 is class 2
    and class 5 is second, `gap` below; ONNX gives `onnx_class` a hair more than class 2."""
    rng = np.random.default_rng(1)
    src = rng.normal(0, 1, (400, 10))
    src[:, 2] = src.max(axis=1) + 2            # class 2 wins everywhere by a clear margin
    src[7, 5] = src[7, 2] - gap                # image 7: class 5 is `gap` below
    onnx = src.copy()
    onnx[7, onnx_class] = src[7, 2] + 1e-6
    labels = np.full(400, 2)
    meter = AccuracyMeter()
    meter.add(labels, np.arange(400), src, onnx, TOL)
    by = {c.name: c for c in accuracy_checks(meter, LIMITS, 400, 0, None, pinned=False)[0]}
    return meter, by["top1_disagreement"]


def test_a_near_tie_flip_passes_where_a_real_disagreement_of_the_same_count_fails():
    # margin for image 7: 2 x (1e-4 + 1e-5 x ~5.5) ~ 3.1e-4
    tie_meter, tie = _tie_case(gap=1e-4, onnx_class=5)       # swapped with the close second
    assert tie_meter.disagree == [] and tie_meter.near_ties["onnx"] == [7]
    assert tie.passed and tie.measured == 0.0
    assert "1 more changed between the source's top two classes" in tie.detail
    assert tie_meter.summary()["near_ties"] == 1

    far_meter, far = _tie_case(gap=1e-2, onnx_class=5)       # the second is far below: real
    assert far_meter.disagree == [7] and far_meter.near_ties["onnx"] == []
    assert not far.passed and far.measured == 0.25

    third_meter, third = _tie_case(gap=1e-4, onnx_class=8)   # close pair, ONNX picks a third
    assert third_meter.disagree == [7] and not third.passed

    # What each limit lets through at this size is said: 0.1 % of 400 images is 0 images.
    assert "the limit allows 0 images" in far.detail
    assert images_allowed(0.1, 1000) == "1 image" and images_allowed(0.1, 50000) == "50 images"


def test_near_ties_do_not_depend_on_how_images_are_batched():
    rng = np.random.default_rng(3)
    src = rng.normal(0, 1, (64, 10))
    src[:, 4] = -10
    src[::3, 4] = src[::3].max(axis=1) - 5e-5                # every third image: a close second
    onnx = src.copy()
    flip = np.arange(0, 64, 3)
    onnx[flip, 4] += 1e-4                                    # ONNX picks the second there
    whole = AccuracyMeter()
    whole.add(np.zeros(64, int), np.arange(64), src, onnx, TOL)
    parts = AccuracyMeter()
    for start in range(0, 64, 5):
        sl = slice(start, start + 5)
        parts.add(np.zeros(len(src[sl]), int), np.arange(64)[sl], src[sl], onnx[sl], TOL)
    assert whole.near_ties == parts.near_ties and whole.disagree == parts.disagree == []
    assert whole.near_ties["onnx"] == [int(i) for i in flip]


# --------------------------------------------------------------------------- CLI, up front
def test_cli_refuses_bad_datasets_before_any_work(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad"
    imagenet_like(bad, 2, size=(20, 20))
    (bad / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 1\nnot_there.JPEG 2\n")
    cases = [
        (["--data", str(tmp_path / "missing")], "does not exist"),
        (["--data", str(bad)], "names 1 image(s) that are not in"),
        (["--limit", "5"], "--limit needs --data"),
    ]
    for args, message in cases:
        proc = run_pipeline("--only", "res2net50-w14-s8", "--out", str(out), *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in proc.stderr
        assert not out.exists()                   # nothing fetched, nothing written
    proc = run_pipeline("--only", "res2net50-w14-s8", "--out", str(out),
                        env={"DATASETS_DIR": str(tmp_path / "from-env")})
    assert proc.returncode == 2 and "from-env does not exist" in proc.stderr
