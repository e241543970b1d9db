"""README's first command: `make demo` works offline and says its checkpoint is a demo."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO, VENV_ROOT, read_report

pytestmark = pytest.mark.slow


def test_make_demo(tmp_path):
    proc = subprocess.run(["make", "--no-print-directory", "demo", f"OUT={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "VENV_ROOT": str(VENV_ROOT)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "demo checkpoint" in proc.stdout and "3/3 passed" in proc.stdout
    for name in ("res2net50-w14-s8", "paddleclas-res2net50-14w-8s", "mindcv-res2net50"):
        report = read_report(tmp_path, name)
        assert report["passed"] and report["source"]["checkpoint"]["demo"] is True, name
        assert "DEMO" in report["source"]["checkpoint"]["note"]
        assert (tmp_path / name / "model.onnx").stat().st_size > 50_000_000
