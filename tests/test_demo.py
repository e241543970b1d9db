"""README's first command and the nightly job, offline: `make nightly` runs `make demo` (each
source's demo checkpoint, signed with the demo key) and publishes what passed to a store."""
from __future__ import annotations

import json

import pytest

from conftest import read_report, run_make

pytestmark = pytest.mark.slow
DEMO_ENTRIES = ("res2net50-w14-s8", "paddleclas-res2net50-14w-8s", "mindcv-res2net50")


def test_make_nightly_offline_runs_the_demo_signs_and_publishes(tmp_path):
    out, store = tmp_path / "out", tmp_path / "store"
    proc = run_make("nightly", f"NIGHTLY_OUT={out}", f"STORE={store}")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert "nightly (offline)" in proc.stdout and "DEMO checkpoints" in proc.stdout
    assert "demo checkpoint" in proc.stdout and "3/3 passed" in proc.stdout

    for name in DEMO_ENTRIES:
        report = read_report(out, name)
        assert report["passed"] and report["source"]["checkpoint"]["demo"] is True, name
        assert "DEMO" in report["source"]["checkpoint"]["note"]
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "model.onnx", "model.sig", "provenance.json", "report.json"]
        verified = run_make("verify-artifact", f"ARTIFACT={out / name}",
                        "PUBLIC_KEY=demo/signing-key.pub")
        assert verified.returncode == 0 and f"OK: {name}" in verified.stdout

    rows = json.loads((store / "index.json").read_text())["artifacts"]
    assert sorted(row["name"] for row in rows) == sorted(DEMO_ENTRIES)  # each exactly once
    table = (store / "index.md").read_text()
    for name in DEMO_ENTRIES:
        assert f"| {name} |" in table
    assert not any(p.suffix == ".pem" for p in out.rglob("*")), "a private key in an artifact"
    assert not any(p.suffix == ".pem" for p in store.rglob("*"))
