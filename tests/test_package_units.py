"""orchestrator/stages/package.py on a hand-made passed report and a small real ONNX model:
what ships, that the driver's files are moved into the artifact (not copied), and that a
metadata or signing failure turns the verdict into an error with nothing shipped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from manifests.loader import Entry
from orchestrator.report import EntryReport
from orchestrator.stages import package as stage
from orchestrator.stages.context import RunOptions
from release.signing import SigningError


def _model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _passed(tmp_path: Path) -> tuple[Entry, EntryReport, dict, dict]:
    from fetch.download import sha256_file

    entry = Entry({"name": "e", "source": "mmpretrain", "model_id": "m", "num_classes": 3},
                  None)
    work = tmp_path / "driver" / "e"
    work.mkdir(parents=True)
    model = _model(work / "model.onnx")
    log = work / "worker.log"
    log.write_text("worker said\n")
    report = EntryReport(
        name="e", created="2026-12-07T00:00:00+00:00", run_id="r",
        pipeline={"git_commit": "unknown"}, entry=entry.data,
        source={"framework": "mmpretrain", "model_id": "m",
                "checkpoint": {"sha256": "c" * 64, "url": "file:///c.pth"}},
        onnx={"sha256": sha256_file(model)}, deploy={"contract": {"pipeline": "mmpretrain"}})
    report.decide("passed", "max|diff| 1e-06 <= 1e-4")
    return entry, report, {"model.onnx": model}, {"model.onnx": model, "worker.log": log}


def test_a_passed_entry_ships_its_files_moved_from_the_drivers_folder(tmp_path):
    entry, report, artifact_files, files = _passed(tmp_path)
    work = files["model.onnx"].parent
    said = []
    stage.package(entry, report, artifact_files, files, work, RunOptions(tmp_path / "out",
                                                                         tmp_path / "c"),
                  said.append)
    out = tmp_path / "out" / "e"
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.txt", "model.onnx", "preprocess.json", "provenance.json", "report.json"]
    written = json.loads((out / "report.json").read_text())
    assert written == json.loads(json.dumps(report.to_json()))
    assert written["status"] == "passed" and written["signature"] is None
    # the shipped files are the driver's scratch, moved: none of them is left behind
    assert not list(work.glob("shipped-*")) and not (work / "preprocess.json").exists()
    assert written["onnx"]["sha256_verified_graph"] != written["onnx"]["sha256"]
    assert said == []


def test_metadata_that_cannot_be_made_turns_a_pass_into_an_error_and_ships_no_model(
        tmp_path, monkeypatch):
    entry, report, artifact_files, files = _passed(tmp_path)

    def broken(*args):
        raise ValueError("unknown metadata keys ['x']")

    monkeypatch.setattr(stage, "make_deployable", broken)
    said = []
    stage.package(entry, report, artifact_files, files, files["worker.log"].parent,
                  RunOptions(tmp_path / "out", tmp_path / "c"), said.append)
    out = tmp_path / "out" / "e"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "worker.log"]
    written = json.loads((out / "report.json").read_text())
    assert (written["passed"], written["status"]) == (False, "error")
    assert written["decided_by"] == "package: metadata"
    assert written["error"]["message"] == "ValueError: unknown metadata keys ['x']"
    assert "signature" not in written
    assert said == ["  ERROR     [package/metadata] unknown metadata keys ['x']"]


def test_a_signature_that_cannot_be_made_ships_nothing_unsigned(tmp_path, monkeypatch):
    entry, report, artifact_files, files = _passed(tmp_path)

    def refuse(staging, key):
        raise SigningError("model-signing could not sign e: KeyError: k")

    monkeypatch.setattr(stage, "sign_directory", refuse)
    opts = RunOptions(tmp_path / "out", tmp_path / "c", signing_key=tmp_path / "k.pem",
                      signing_key_id="f" * 64)
    said = []
    stage.package(entry, report, artifact_files, files, files["worker.log"].parent, opts,
                  said.append)
    out = tmp_path / "out" / "e"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "worker.log"]
    written = json.loads((out / "report.json").read_text())
    assert (written["passed"], written["status"], written["decided_by"]) == (
        False, "error", "sign: signing")
    assert written["signature"] == {"file": "model.sig", "public_key_sha256": "f" * 64}
    assert said[-1].startswith("  ERROR     [sign/signing] model-signing could not sign")


@pytest.mark.parametrize("verdict", ["failed", "error"])
def test_an_entry_that_did_not_pass_gets_its_report_and_log_only(tmp_path, verdict):
    entry, report, artifact_files, files = _passed(tmp_path)
    report.decide(verdict, "max_abs_diff (simplified) 0.5 vs limit 1e-4")
    stage.package(entry, report, {}, files, files["worker.log"].parent,
                  RunOptions(tmp_path / "out", tmp_path / "c"), print)
    out = tmp_path / "out" / "e"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "worker.log"]
    assert (out / "worker.log").read_text() == "worker said\n"
    assert json.loads((out / "report.json").read_text())["status"] == verdict
