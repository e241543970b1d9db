"""The orchestrator imports no deep-learning framework: each lives in its own worker."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MINDSPORE_PYTHON, MM_PYTHON, PADDLE_PYTHON, REPO, run_in_env

FRAMEWORKS = ("torch", "torchvision", "paddle", "mindspore", "tensorflow", "jax", "mmpretrain",
              "mmcv", "mmengine", "paddleclas", "mindcv", "paddle2onnx")


def test_orchestrator_modules_import_no_framework():
    code = (
        "import sys, pipeline, orchestrator.run, converters.runner, converters.simplify, "
        "verify.compare, verify.ort_runner, fetch.download, release.artifact, manifests.loader\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_worker_modules_are_not_imported_by_the_orchestrator_package():
    for path in (REPO / "orchestrator").glob("*.py"):
        text = path.read_text()
        assert "converters.mmpretrain" not in text, f"{path.name} imports a worker module"


@pytest.mark.slow
@pytest.mark.parametrize("source,python", [("mmpretrain", MM_PYTHON),
                                           ("paddleclas", PADDLE_PYTHON),
                                           ("mindcv", MINDSPORE_PYTHON)])
def test_checkpoint_readers_refuse_random_bytes_as_format_errors(source, python, tmp_path):
    run_in_env(python, str(REPO / "tests" / "helpers" / "fuzz_loader.py"), source,
               str(tmp_path), "60")


@pytest.mark.slow
@pytest.mark.parametrize("source,python", [("mmpretrain", MM_PYTHON),
                                           ("paddleclas", PADDLE_PYTHON),
                                           ("mindcv", MINDSPORE_PYTHON)])
def test_checkpoint_readers_refuse_crafted_files_within_budget(source, python, tmp_path):
    """Nesting 200,000 deep, zip members that lie about their size, a deflate bomb, 10^10
    elements declared over 4 stored (torch view, numpy array, MindSpore protobuf dims),
    lengths past the end: each a format error in under 20 s, under 3 GiB peak."""
    proc = run_in_env(python, str(REPO / "tests" / "helpers" / "fuzz_loader.py"), source,
                      str(tmp_path), "hostile")
    assert f"{source}: 0 hostile file(s) not refused within budget" in proc.stdout

