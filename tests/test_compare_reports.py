"""scripts/compare_reports.py, the refactor check (docs/architecture.md, "Changing the code"):
what differs from run to run is masked, a figure or a graph that differs is found."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO
from scripts.compare_reports import compare


def _model(path, weight: float, run_id: str) -> None:
    w = numpy_helper.from_array(np.full((2, 2), weight, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [w])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"model_convert.pipeline": json.dumps({"run_id": run_id})})
    onnx.save(model, str(path))


def _run(root, run: int, max_diff: float = 1e-5, weight: float = 1.0) -> None:
    art = root / "e"
    art.mkdir(parents=True)
    _model(art / "model.onnx", weight, f"run{run}")
    report = {"name": "e", "run_id": f"id{run}", "created": f"2026-12-0{run}",
              "timings": {"total": 3.0 * run}, "pipeline": {"git_commit": f"c{run}"},
              "source": {"worker": {"pid": 100 + run}, "checkpoint": {"path": f"/tmp/w{run}"}},
              "inputs": {"fingerprint": f"f{run}", "parts": {"code_sha256": f"s{run}",
                                                             "entry_sha256": "same"}},
              "onnx": {"sha256": f"d{run}", "nodes_simplified": 1},
              "deploy": {"files": {"model.onnx": f"d{run}"}},
              "checks": [{"name": "max_abs_diff", "measured": max_diff, "passed": True}]}
    (art / "report.json").write_text(json.dumps(report))


def test_two_runs_of_the_same_code_compare_equal_and_a_changed_figure_or_graph_does_not(
        tmp_path):
    _run(tmp_path / "a", 1)
    _run(tmp_path / "b", 2)
    assert compare(tmp_path / "a", tmp_path / "b") == {"e": []}
    _run(tmp_path / "c", 3, max_diff=2e-5)
    assert compare(tmp_path / "a", tmp_path / "c") == {"e": [
        ".checks[0].measured: 1e-05 != 2e-05"]}
    _run(tmp_path / "d", 4, weight=1.5)
    assert compare(tmp_path / "a", tmp_path / "d") == {"e": [
        "model.onnx: the graph or its weights differ (metadata left out)"]}
    (tmp_path / "d" / "e" / "model.fp16.onnx").write_bytes(b"")
    assert "model.fp16.onnx only in after" in compare(tmp_path / "a", tmp_path / "d")["e"]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_reports.py"),
                           str(tmp_path / "a"), str(tmp_path / "c")], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 1 and "e: 1 difference(s)" in proc.stdout, proc.stdout
    same = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_reports.py"),
                           str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True,
                          text=True, cwd=REPO)
    assert same.returncode == 0 and "e: same" in same.stdout, same.stdout + same.stderr
