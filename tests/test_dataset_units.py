"""verify/dataset.py's arithmetic without image files (the --limit subset, the class check,
the dataset's description in a report), the synthetic batches the test checkpoints' BatchNorm
statistics come from (verify/images.py), and the OpenVINO runner's settings."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from verify.dataset import (SYNSETS_FILE, Dataset, DatasetError, check_num_classes, load_dataset,
                            spread_subset)
from verify.images import synthetic_batch


def _dataset(labels, note=""):
    return Dataset(Path("/data/val"), "val.txt", [Path(f"/data/val/{i}.JPEG")
                                                  for i in range(len(labels))], labels, note)


# --------------------------------------------------------------------------- --limit
def test_the_first_round_takes_each_class_s_first_image_in_file_order():
    labels = [2, 0, 1, 0, 2, 1, 1, 0, 2]        # images 1, 2, 0 are each class's first
    assert spread_subset(labels, 3) == [0, 1, 2]
    # Two full rounds: each class's first two images, not its last ones nor every other one.
    assert spread_subset(labels, 6) == [0, 1, 2, 3, 4, 5]
    assert spread_subset(labels, 8) == [0, 1, 2, 3, 4, 5, 7, 8]   # last round: classes 0, 2


def test_classes_that_run_out_drop_out_of_later_rounds():
    labels = [0, 1, 1, 1, 2]
    assert spread_subset(labels, 3) == [0, 1, 4]
    assert spread_subset(labels, 4) == [0, 1, 2, 4]   # only class 1 has a second image


def test_a_partial_round_takes_evenly_spaced_classes():
    labels = list(range(100))                      # one image per class
    assert spread_subset(labels, 10) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert spread_subset(labels, 2) == [0, 99]
    assert spread_subset(labels, 1) == [0]
    assert spread_subset(labels, 100) == spread_subset(labels, None) == list(range(100))


# --------------------------------------------------------------------------- classes
def test_a_label_equal_to_num_classes_is_out_of_range():
    check_num_classes(_dataset([0, 9, 3]), 10, "ok")            # 0..9 are the ten classes
    with pytest.raises(DatasetError) as caught:
        check_num_classes(_dataset([3, 10, 12, 10, 9]), 10, "ten")
    assert str(caught.value) == ("entry 'ten' has num_classes 10, but dataset /data/val has 3 "
                                 "image(s) labelled up to 12")
    with pytest.raises(DatasetError, match="has 1 image\\(s\\) labelled up to 10$"):
        check_num_classes(_dataset([0, 10]), 10, "edge")


def test_describe_is_what_a_report_shows_of_the_dataset():
    assert _dataset([0, 1, 1]).describe() == {"dir": "/data/val", "layout": "val.txt",
                                              "images": 3, "classes": 2}
    assert _dataset([5], note="labels from val.txt").describe() == {
        "dir": "/data/val", "layout": "val.txt", "images": 1, "classes": 1,
        "note": "labels from val.txt"}


# --------------------------------------------------------------------------- class folders
SYNSETS = sorted(SYNSETS_FILE.read_text().split())


def _files(root: Path, *names: str) -> None:
    """Empty files: folder layouts are read from names alone (images are decoded later)."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def test_class_folders_take_image_files_only_and_skip_hidden_folders(tmp_path):
    _files(tmp_path, f"{SYNSETS[3]}/b.JPEG", f"{SYNSETS[3]}/a.png", f"{SYNSETS[3]}/notes.txt",
           f"{SYNSETS[0]}/deeper/c.jpg", ".thumbnails/t.jpg", "loose.txt")
    (tmp_path / SYNSETS[3] / "dir.jpg").mkdir()                 # a folder, not an image
    data = load_dataset(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in data.paths] == [
        f"{SYNSETS[0]}/deeper/c.jpg", f"{SYNSETS[3]}/a.png", f"{SYNSETS[3]}/b.JPEG"]
    assert data.labels == [0, 3, 3] and data.layout == "imagefolder"
    assert data.root == tmp_path         # the report's "dir" and the data fingerprint use it
    assert data.note == "synset folders mapped in sorted synset order"
    _files(tmp_path / "idx", "7/a.jpg", "12/b.jpg", "12/c.jpg")
    indexed = load_dataset(tmp_path / "idx")
    assert indexed.labels == [12, 12, 7] and indexed.note == "folders named by class index"


@pytest.mark.parametrize("names, message", [
    ([], "dataset {root} is empty: no class sub-folders with images, no val.txt, no "
         "val_map.txt"),
    (["a.jpg", "b.png", "c.txt"], "dataset {root} is empty: no class sub-folders with "
     "images, no val.txt, no val_map.txt; it holds 2 image file(s) but no val.txt or "
     "val_map.txt to label them"),
    ([f"n0000000{i}/x.jpg" for i in range(6)], "dataset {root}: folder(s) n00000000, "
     "n00000001, n00000002, n00000003, n00000004 are not ImageNet-1k synsets"),
    (["3/x.jpg", "1000/x.jpg"], "dataset {root}: folder '1000': label 1000 is out of range "
     "(ImageNet class indices are 0..999)"),
    ([f"{SYNSETS[0]}/x.jpg", "5/x.jpg"] + [f"{n}/x.jpg" for n in "abcdef"],
     "dataset {root}: class folders must all be ImageNet synsets (n01440764) or all class "
     "indices (0..999); found a, b, c, d, e"),
])
def test_folder_layout_errors_say_what_was_found(tmp_path, names, message):
    _files(tmp_path, *names)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path)
    assert str(caught.value) == message.format(root=tmp_path)


# --------------------------------------------------------------------------- label files
def _label_error(root, name, text):
    (root / name).write_text(text)
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    return str(caught.value).replace(str(root), "R")


def test_a_val_txt_name_may_hold_spaces_the_label_is_the_last_field(tmp_path):
    _files(tmp_path, "my image.JPEG", "b.JPEG")
    (tmp_path / "val.txt").write_text("my image.JPEG 3\nb.JPEG\t 7 \n")
    data = load_dataset(tmp_path)
    assert (data.paths, data.labels) == ([tmp_path / "my image.JPEG", tmp_path / "b.JPEG"], [3, 7])


def test_label_file_refusals_name_the_line_and_what_is_wrong(tmp_path):
    _files(tmp_path, "a.JPEG")
    assert _label_error(tmp_path, "val_map.txt", "a.JPEG\t3\t\n") == (
        "R/val_map.txt, line 1: expected 'NAME<TAB>LABEL', got 'a.JPEG\\t3\\t'")
    assert _label_error(tmp_path, "val_map.txt", "a.JPEG\t3X\n") == (
        "R/val_map.txt, line 1: label '3X' is not an integer class index")
    (tmp_path / "val_map.txt").unlink()
    assert _label_error(tmp_path, "val.txt", "# header\n../a.JPEG 1\n") == (
        "R/val.txt, line 2: '../a.JPEG' is outside the dataset folder (names are relative to "
        "it, without '..')")
    assert _label_error(tmp_path, "val.txt", "a.JPEG 1\n\na.JPEG 1\n") == (
        "R/val.txt, line 3: a.JPEG is listed twice (first on line 1)")
    long = "x" * 300 + ".JPEG"                   # longer than a file name may be (255 bytes)
    assert _label_error(tmp_path, "val.txt", f"{long} 1\n") == (
        f"R/val.txt, line 1: cannot use {long[:80]!r}: File name too long")


@pytest.mark.parametrize("count, shown", [
    (5, "m0.JPEG, m1.JPEG, m2.JPEG, m3.JPEG, m4.JPEG"),
    (6, "m0.JPEG, m1.JPEG, m2.JPEG, m3.JPEG, m4.JPEG (+1 more)"),
    (8, "m0.JPEG, m1.JPEG, m2.JPEG, m3.JPEG, m4.JPEG (+3 more)"),
])
def test_missing_images_are_counted_and_the_first_five_named(tmp_path, count, shown):
    text = "".join(f"m{i}.JPEG {i}\n" for i in range(count))
    assert _label_error(tmp_path, "val.txt", text) == (
        f"R/val.txt names {count} image(s) that are not in R: {shown}")


def test_with_both_label_files_val_txt_is_used_and_the_note_says_so(tmp_path):
    _files(tmp_path, "a.JPEG")
    (tmp_path / "val.txt").write_text("a.JPEG 1\n")
    (tmp_path / "val_map.txt").write_text("a.JPEG\t2\n")
    data = load_dataset(tmp_path)
    assert (data.layout, data.labels, data.note) == ("val.txt", [1],
                                                     "val_map.txt ignored: val.txt is used")
    (tmp_path / "val.txt").unlink()
    data = load_dataset(tmp_path)
    assert (data.layout, data.labels, data.note) == ("val_map.txt", [2], "")


# --------------------------------------------------------------------------- synthetic batch
@pytest.mark.parametrize("mean, std, scale", [
    ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], 1.0),     # mmpretrain, MindCV
    ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255),       # PaddleClas
])
def test_synthetic_batch_is_normalised_images_in_nchw(mean, std, scale):
    batch = synthetic_batch(3, 4, mean, std, scale=scale, size=32)
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    # Undone with the documented formula, x = (pixel * scale - mean) / std, each channel is
    # a uint8 image again: whole numbers in 0..255 that use most of the range.
    mean_, std_ = np.array(mean)[None, :, None, None], np.array(std)[None, :, None, None]
    pixels = (batch.astype(np.float64) * std_ + mean_) / scale
    assert np.allclose(pixels, np.round(pixels), atol=1e-3)
    assert pixels.min() > -0.5 and pixels.max() < 255.5 and np.ptp(pixels) > 150
    # Images, not noise: neighbouring pixels are strongly correlated.
    left, right = pixels[..., :-1].ravel(), pixels[..., 1:].ravel()
    assert np.corrcoef(left, right)[0, 1] > 0.5
    # Normalised in float32 as the sources do, bit for bit (in float64, or with constants
    # not rounded to float32 first, about one element in ten differs by an ulp).
    f32 = np.float32
    again = (np.round(pixels).astype(f32) * f32(scale) - np.array(mean, f32)[None, :, None, None]
             ) / np.array(std, f32)[None, :, None, None]
    assert again.dtype == np.float32 and np.array_equal(again, batch)


def test_synthetic_batch_is_reproducible_per_seed_and_its_images_differ():
    one = synthetic_batch(7, 3, [0, 0, 0], [1, 1, 1], size=24)
    assert np.array_equal(one, synthetic_batch(7, 3, [0, 0, 0], [1, 1, 1], size=24))
    assert not np.array_equal(one, synthetic_batch(8, 3, [0, 0, 0], [1, 1, 1], size=24))
    assert not np.array_equal(one[0], one[1]) and not np.array_equal(one[1], one[2])
    default = synthetic_batch(7, 3, [0, 0, 0], [1, 1, 1])      # 224 pixels, scale 1
    assert default.shape == (3, 3, 224, 224) and np.ptp(default) > 150
    assert default.min() >= 0 and default.max() <= 255


# --------------------------------------------------------------------------- OpenVINO
def test_openvino_runs_on_the_cpu_in_f32_with_the_threads_asked_for(tmp_path):
    """Without the f32 hint OpenVINO runs bf16 on CPUs that have it (it does on this box's
    kind): the runtime matrix would compare a lower precision than the ONNX file's."""
    from test_deploy import _onnx
    from verify.ov_runner import OpenVinoRunner

    model = _onnx(tmp_path / "m.onnx", "Flatten", (None, 2, 2))
    one = OpenVinoRunner(model, threads=1)
    assert one.compiled.get_property("EXECUTION_DEVICES") == ["CPU"]
    assert one.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(one.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    every = OpenVinoRunner(model)
    assert every.compiled.get_property("INFERENCE_NUM_THREADS") == os.cpu_count()
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    assert np.array_equal(every.infer(x, batch_size=2), x.reshape(3, 4))


def test_make_runner_passes_threads_and_spinning_off_and_names_the_runtimes_it_knows(tmp_path):
    """Spinning is off unless asked (the pipeline's runs share the cores: docs/
    environments.md); threads reach both runtimes."""
    from test_deploy import _onnx
    from verify.runners import make_runner

    model = _onnx(tmp_path / "m.onnx", "Flatten", (None, 2, 2))
    spinning = "session.intra_op.allow_spinning"
    options = make_runner("onnxruntime", model, 3).session.get_session_options()
    assert (options.intra_op_num_threads, options.get_session_config_entry(spinning)) == (3, "0")
    from verify.ort_runner import OrtRunner

    assert OrtRunner(model).session.get_session_options().get_session_config_entry(
        spinning) == "0"
    asked = make_runner("onnxruntime", model, spinning=True).session.get_session_options()
    assert asked.intra_op_num_threads == os.cpu_count()
    with pytest.raises(RuntimeError, match="does not have configuration"):
        asked.get_session_config_entry(spinning)   # ONNX Runtime's own default: spinning
    assert make_runner("openvino", model, 2).compiled.get_property("INFERENCE_NUM_THREADS") == 2
    with pytest.raises(ValueError) as caught:
        make_runner("tflite", model)
    assert str(caught.value) == ("unknown runtime 'tflite'; known: onnxruntime, openvino, "
                                 "onnxruntime-cuda, tensorrt")
