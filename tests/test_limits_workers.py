"""Limits inside the real framework workers: a worker over its memory limit ends its entry
with `resource_limit` while the run goes on (local and Ray). (An image whose header declares
too many pixels, counted unreadable by every source's own loader, locally and on Ray:
test_scale.py's shared data set.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import manifest_entries, read_report, run_pipeline, write_manifest

pytestmark = pytest.mark.slow
ENTRIES = {"res2net50-w14-s8": "w14", "paddleclas-res2net50-14w-8s": "pd-14w",
           "mindcv-res2net50": "ms-r50"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    shipped = manifest_entries()
    return write_manifest(tmp_path_factory.mktemp("m") / "m.yaml", [
        {**shipped[name], "accuracy": {"batch_size": 4, "unreadable": 20}} for name in ENTRIES])


def _args(manifest, checkpoints, out, *extra):
    args = ["--manifest", str(manifest), "--out", str(out), *extra]
    for name, kind in ENTRIES.items():
        args += ["--only", name, "--checkpoint", f"{name}={checkpoints(kind)}"]
    return args


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_worker_over_its_memory_limit_fails_its_entry_and_the_run_goes_on(
        checkpoints, manifest, tmp_path, executor):
    proc = run_pipeline(*_args(manifest, checkpoints, tmp_path / "out", "--worker-memory",
                               "150M", "--executor", executor),
                        env={"MODEL_CONVERT_WORK": str(tmp_path / "work")})
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in ENTRIES:                                   # every entry was tried
        report = read_report(tmp_path / "out", name)
        assert report["passed"] is False
        assert report["error"]["stage"] == "convert", report["error"]
        assert report["error"]["kind"] == "resource_limit"
        assert "exceeded its memory limit of 0.15 GiB" in report["error"]["message"]
        assert report["error"]["details"]["peak_bytes"] > 150 * 2**20
        assert not (tmp_path / "out" / name / "model.onnx").exists()
    assert "0/3 passed" in proc.stdout
    assert proc.stdout.count("convert: resource_limit") == 3
