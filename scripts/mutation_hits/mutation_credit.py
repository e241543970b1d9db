"""The pytest side of crediting subprocess hits under mutmut (see sitecustomize.py here).

A conftest calls `install(root)` at import and re-exports `pytest_runtest_teardown`. Outside
mutmut (no MUTANT_UNDER_TEST) both do nothing.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def install(root: Path) -> None:
    """Under mutmut: subprocesses get this folder's sitecustomize and a folder for their hits.
    `root` is mutmut's working copy (its pyproject.toml holds mutmut's configuration)."""
    if "MUTANT_UNDER_TEST" not in os.environ or "MUTATION_HITS_DIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="mutation-hits-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ["MUTATION_HITS_DIR"] = folder
    os.environ["MUTATION_ROOT"] = str(root)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_teardown(item):
    """Before mutmut's own teardown hook reads this test's hits, add its subprocesses'."""
    folder = os.environ.get("MUTATION_HITS_DIR")
    if folder and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        from mutmut.state import state  # only set while mutmut (and so its package) runs

        for hits in sorted(Path(folder).glob("*.json")):
            state()._stats.update(json.loads(hits.read_text(encoding="utf-8")))
            hits.unlink()
    yield
