"""The pytest side of mutmut runs: subprocess hits credited (see sitecustomize.py here) and
the tests of a mutant run cheapest first.

A conftest calls `install(root)` at import and re-exports the hooks below. Outside mutmut (no
MUTANT_UNDER_TEST) they do nothing.

Order: mutmut runs a mutant's tests with -x, in no particular order, and records only the
tests' call time, not their fixtures'. A module whose fixture starts a framework (seconds) then
often runs before the unit test that kills the mutant in milliseconds. The stats pass writes
each test's setup + call + teardown time to ROOT/mutation-durations.json; a mutant's run puts
the modules of least total time first, and in each module its cheapest tests first.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DURATIONS = "mutation-durations.json"
_root: Path | None = None
_durations: dict[str, float] = {}


def install(root: Path) -> None:
    """Under mutmut: subprocesses get this folder's sitecustomize and a folder for their hits.
    `root` is mutmut's working copy (its pyproject.toml holds mutmut's configuration)."""
    global _root
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    _own_progress_lock()
    _root = Path(root)
    if "MUTATION_HITS_DIR" in os.environ:   # set up by this process's parent already
        return
    folder = tempfile.mkdtemp(prefix="mutation-hits-")
    atexit.register(shutil.rmtree, folder, True)
    os.environ["MUTATION_HITS_DIR"] = folder
    os.environ["MUTATION_ROOT"] = str(root)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))


def _own_progress_lock() -> None:
    """tqdm's default lock holds a multiprocessing RLock: a semaphore shared by every process
    forked after it was made. mutmut forks a worker per mutant from the process that ran the
    test map, and kills one that overruns its CPU limit; killed while drawing a progress bar,
    it left every later worker that drew one waiting on that semaphore until mutmut's clock
    ran out, recorded as a "timeout" (caught) though no test had failed. A thread lock is
    each process's own."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


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


def pytest_runtest_logreport(report):
    """Stats pass: each test's time, fixtures included."""
    if _root is not None and os.environ.get("MUTANT_UNDER_TEST") == "stats":
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    if _root is not None and os.environ.get("MUTANT_UNDER_TEST") == "stats" and _durations:
        (_root / DURATIONS).write_text(json.dumps(_durations), encoding="utf-8")


def pytest_collection_modifyitems(items):
    """A mutant's run: the cheapest modules first, and the cheapest tests in each."""
    if _root is None or os.environ.get("MUTANT_UNDER_TEST") in (None, "", "stats"):
        return
    try:
        took = json.loads((_root / DURATIONS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    unknown = max(took.values(), default=0.0)    # a test the stats pass did not time

    def cost(item) -> float:
        return took.get(item.nodeid, unknown)

    modules: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        modules[module] = modules.get(module, 0.0) + cost(item)
    items.sort(key=lambda item: (modules[item.nodeid.split("::")[0]], cost(item)))
