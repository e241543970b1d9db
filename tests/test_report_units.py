"""orchestrator/report.py: report.json's keys, their order and the verdict, from the typed
report the stages fill."""
from __future__ import annotations

import json
import pickle

import pytest

from orchestrator.report import EntryReport, ReportError


def _report(**sections) -> EntryReport:
    return EntryReport(name="e", created="2026-12-07T00:00:00+00:00", run_id="r",
                       pipeline={"git_commit": "c"}, entry={"name": "e"},
                       source={"framework": "mmpretrain", "model_id": "m"}, **sections)


BASE = ["name", "passed", "created", "run_id", "pipeline", "entry", "source", "checks",
        "timings", "error"]


def test_a_new_report_has_the_keys_every_report_has_and_no_section_no_stage_filled():
    out = _report().to_json()
    assert list(out) == BASE
    assert out["passed"] is False and out["error"] is None
    assert out["checks"] == [] and out["timings"] == {}
    assert out["source"] == {"framework": "mmpretrain", "model_id": "m"}


def test_a_passed_reports_keys_come_in_the_documented_order_whatever_order_stages_wrote():
    """The order of a passed --data run's report.json before the report was typed (a dict
    in the order the stages wrote it), whatever order the sections are set in now."""
    report = _report()
    report.inputs = {"fingerprint": "f"}
    report.runtimes = {"openvino": {}}
    report.warn("w")
    report.accuracy = {"source": {}}
    report.variants = {"fp16": {}}
    report.deploy = {"contract": {}}
    report.onnx = {"sha256": "s"}
    report.verification = {"images": {}}
    report.derived = {"fields": []}
    report.decide("passed", "max|diff| 1e-06 <= 1e-4")
    out = report.to_json()
    assert list(out) == [*BASE, "derived", "verification", "onnx", "warnings", "deploy",
                         "runtimes", "inputs", "accuracy", "variants", "decided_by",
                         "status", "signature"]
    assert out["warnings"] == ["w"] and out["signature"] is None and out["passed"] is True


def test_the_verdict_is_set_in_one_place_and_passed_follows_the_status():
    report = _report()
    report.decide("failed", "max_abs_diff (simplified) 0.5 vs limit 1e-4")
    assert (report.passed, report.status) == (False, "failed")
    report.decide("passed", "ok")
    assert report.passed is True
    with pytest.raises(ValueError, match="unknown status 'pased'"):
        report.decide("pased", "typo")
    assert report.status == "passed"   # a refused verdict changes nothing


def test_fail_records_the_error_and_with_a_status_decides_the_entry():
    report = _report()
    assert report.fail("convert", "export", "torch.onnx.export failed") == "convert: export"
    assert report.status is None and report.passed is False   # the driver decides later
    out = report.to_json()
    assert out["error"] == {"stage": "convert", "kind": "export",
                            "message": "torch.onnx.export failed", "details": {}}
    assert "status" not in out and "decided_by" not in out

    report.decide("passed", "ok")
    report.fail("sign", "signing", "no key", status="error")   # fail closed after a pass
    assert (report.passed, report.status, report.decided_by) == (False, "error",
                                                                "sign: signing")
    assert report.error == ReportError("sign", "signing", "no key", {})


def test_signature_is_written_on_a_passed_artifact_and_kept_when_signing_then_failed():
    report = _report()
    report.decide("failed", "x")
    assert "signature" not in report.to_json()
    report.decide("passed", "ok")
    assert report.to_json()["signature"] is None        # passed, unsigned
    report.signature = {"file": "model.sig", "public_key_sha256": "k"}
    report.fail("sign", "signing", "openssl failed", status="error")
    assert report.to_json()["signature"] == {"file": "model.sig", "public_key_sha256": "k"}


def test_sections_are_the_reports_own_so_the_release_code_updates_them_through_the_json():
    """release/contract_files.py make_deployable writes the shipped digests into the JSON
    form's onnx and deploy sections: they must land in the report that is written next."""
    report = _report(onnx={"sha256": "graph"}, deploy={"contract": {}})
    view = report.to_json()
    view["onnx"]["sha256"] = "shipped"
    view["deploy"]["files"] = {"model.onnx": "shipped"}
    assert report.onnx["sha256"] == "shipped"
    assert report.to_json()["deploy"]["files"] == {"model.onnx": "shipped"}


def test_a_report_travels_between_processes_and_writes_as_json():
    """A Ray task returns the report (pickled); report.json is its JSON form."""
    report = _report(timings={"fetch": 0.1})
    report.fail("fetch", "digest", "sha256 differs", {"expected": "a"}, status="error")
    assert report.to_json()["error"]["details"] == {"expected": "a"}
    again = pickle.loads(pickle.dumps(report))
    assert again == report
    assert json.loads(json.dumps(again.to_json())) == report.to_json()


def _merged(runtimes: dict):
    from orchestrator.accuracy import MergedAccuracy
    from verify.compare import Check

    figures = {"source": {"top1": 75.0, "top5": 92.0, "images": 8},
               "onnx": {"top1": 75.0, "top5": 92.0}, "disagree": 0, "unreadable": 0,
               "throughput": {"wall_images_per_s": 4.0, "shards": 1}, "runtimes": runtimes}
    return MergedAccuracy([Check("top1_delta", True, 0.0, 0.1)], figures, {})


def test_the_accuracy_stage_writes_a_runtimes_section_only_where_a_runtime_ran():
    """apply_accuracy on hand-made merged figures: the accuracy section, and each runtime's
    top-1 into its runtimes section (created when the runtime matrix left none); with no
    runtime measured, no runtimes section appears (report.json kept no empty one before the
    report was typed)."""
    from orchestrator.stages.accuracy import apply_accuracy
    from verify.compare import Check

    report, said = _report(), []
    checks = apply_accuracy(report, [], {}, _merged({}), said.append)
    assert [c.name for c in checks] == ["top1_delta"]
    assert report.runtimes is None and "runtimes" not in report.to_json()
    assert report.accuracy["source"]["top1"] == 75.0 and "runtimes" not in report.accuracy
    assert said[-1].startswith("  accuracy  source top-1/top-5 75.00/92.00")

    ran = {"openvino": {"fp32": {"check": Check("top1_delta", False, 2.0, 0.1),
                                 "figures": {"top1": 73.0, "top5": 91.0}}}}
    report = _report()
    checks = apply_accuracy(report, [], {}, _merged(ran), said.append)
    section = report.to_json()["runtimes"]["openvino"]
    assert section["accuracy"]["fp32"]["top1"] == 73.0
    assert section["accuracy"]["fp32"]["passed"] is False
    assert [c.name for c in checks] == ["top1_delta"]   # not required: reported, not gating
