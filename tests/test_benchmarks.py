"""The data-path benchmark runs and writes what it prints (figures are not asserted: speed
targets live in benchmarks, not in tests)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_data_path_benchmark_writes_its_table_as_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "data_path.py"), "--entries",
         "res2net50-w14-s8", "--images", "8", "--batch-size", "4", "--runs", "1",
         "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr   # 1: data path bottleneck
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["entry"] == "res2net50-w14-s8" and result["images"] == 8
    assert [d["data_workers"] for d in row["data_path"]] == sorted(
        {1, result["machine"]["cpus"]})
    assert all(d["images"] == 8 and d["images_per_s"] > 0 for d in row["data_path"])
    assert row["source_inference"]["images_per_s"] > 0
    assert row["onnx_inference"]["images_per_s"] > 0
    assert row["data_path_bottleneck"] == (
        max(d["images_per_s"] for d in row["data_path"]) < row["both_inferences_images_per_s"])
    assert "res2net50-w14-s8" in proc.stdout and "bottleneck" in proc.stdout
