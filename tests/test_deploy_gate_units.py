"""orchestrator/deploy.py's arithmetic in-process: the level difference, the shards' merge
and the --data contract checks, each Check compared whole with values worked out here."""
from __future__ import annotations

import numpy as np
import pytest

from orchestrator.deploy import contract_accuracy_checks, contract_batch, level_diffs, \
    merge_contract
from deploy.preprocess import PreprocessError
from verify.compare import Check

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
    (76.0, 76.0, True)])
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

    with mock.patch("orchestrator.deploy.preprocess",
                    side_effect=PreprocessError("cannot read it")):
        ours, diffs, errors = contract_batch([str(bad)], spec, theirs)
    assert (ours == theirs).all() and diffs.tolist() == [0.0]
    assert errors == [{"path": str(bad), "error": "cannot read it"}]
    with mock.patch("orchestrator.deploy.preprocess",
                    return_value=np.zeros((3, 4, 4), np.float32)):
        with pytest.raises(PreprocessError, match=r"the contract makes tensors of \[3, 4, 4\], "
                                                  r"the source \[3, 2, 2\]"):
            contract_batch([str(bad)], spec, theirs)
