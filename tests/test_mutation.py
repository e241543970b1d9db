"""`make mutation`'s machinery (scripts/mutation.sh + scripts/mutation_report.py) on a toy
tree: mutmut really runs, the score counts what the tests catch, survivors come with their
diff, an equivalent entry leaves the denominator, a stale one is named, and a second run
resumes in the working copy."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import REPO, VENV_ROOT

HITS = REPO / "scripts" / "mutation_hits"


def _toy(root):
    (root / "gate").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\npythonpath = ["."]\n\n[tool.mutmut]\n'
        'source_paths = ["gate/"]\npytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        'pytest_add_cli_args_test_selection = ["tests/"]\n')
    (root / "gate" / "__init__.py").write_text("")
    (root / "gate" / "limits.py").write_text(
        "def within(measured, limit):\n    return abs(measured) <= limit\n\n\n"
        "def label(passed):\n    return 'pass' if passed else 'FAIL'\n")
    # No test at the boundary (<= vs <) and none of label(): those mutants must not count.
    (root / "tests" / "test_gate.py").write_text(
        "from gate.limits import within\n\n\ndef test_within():\n"
        "    assert within(0.5, 1.0) is True\n    assert within(-2.0, 1.0) is False\n")
    # clip() is reached only by a subprocess, as pipeline.py's code is in the real suite: its
    # mutants must be run (and caught), not counted as "no tests".
    (root / "gate" / "clip.py").write_text("def clip(value, top):\n    return min(value, top)\n")
    (root / "tests" / "test_clip.py").write_text(
        "import subprocess, sys\nfrom pathlib import Path\n\n\ndef test_clip_in_a_subprocess():\n"
        "    code = 'from gate.clip import clip; assert clip(5, 3) == 3 and clip(1, 3) == 1'\n"
        "    subprocess.run([sys.executable, '-c', code], check=True,\n"
        "                   cwd=Path(__file__).resolve().parent.parent)\n")
    (root / "tests" / "conftest.py").write_text(
        f"import sys\nfrom pathlib import Path\n\nsys.path.insert(0, {str(HITS)!r})\n"
        "from mutation_credit import (install, pytest_collection_modifyitems,  # noqa\n"
        "    pytest_runtest_logreport, pytest_runtest_teardown, pytest_sessionfinish)\n\n"
        "install(Path(__file__).resolve().parent.parent)\n")


def _run(toy, tmp_path, **settings):
    # MUTATION_OUT relative, as `make mutation` gives it: the report lands there, relative to
    # where the run started, not in the working copy the script moves into.
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "mutation.sh")], cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MUTATION_")},
             "VENV_ROOT": str(VENV_ROOT), "MUTATION_SRC": str(toy),
             "MUTATION_WORK": str(tmp_path / "work"), "MUTATION_OUT": "out",
             "MUTATION_BUDGET": "300", "MUTATION_JOBS": "2", **settings})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((tmp_path / "out" / "mutation.json").read_text())


@pytest.mark.index   # scripts/mutation.sh builds the mutation environment from the lock
def test_mutation_run_scores_lists_survivors_and_honours_equivalents(tmp_path):
    toy = tmp_path / "toy"
    _toy(toy)
    (toy / "tests" / "mutation_equivalent.txt").write_text("gate.limits.x_gone__mutmut_1  # x\n")
    proc, report = _run(toy, tmp_path)
    statuses = report["total"]["by_status"]
    assert report["finished"] is True and statuses.get("killed", 0) >= 1
    label = [s for s in report["survivors"] if "x_label" in s["name"]]
    assert label and all(s["status"] == "no tests" for s in label)
    # clip's mutants ran through the subprocess: none left as "no tests", and caught.
    assert not [s for s in report["survivors"] if "x_clip" in s["name"]]
    assert report["files"]["gate/clip.py"]["caught"] == report["files"]["gate/clip.py"]["mutants"]
    [boundary] = [s for s in report["survivors"] if "x_within" in s["name"]]
    assert boundary["status"] == "survived" and "abs(measured) < limit" in boundary["diff"]
    caught = report["total"]["caught"]
    assert report["total"]["score_percent"] == round(100 * caught / report["total"]["mutants"], 1)
    assert report["stale_equivalent"] == ["gate.limits.x_gone__mutmut_1"]
    assert f"score {report['total']['score_percent']}%" in proc.stdout
    md = (tmp_path / "out" / "mutation.md").read_text()
    assert boundary["name"] in md and "abs(measured) < limit" in md
    # The stats pass timed every toy test, fixtures included, for the cheapest-first order.
    took = json.loads((tmp_path / "work" / "mutants" / "mutation-durations.json").read_text())
    assert set(took) == {"tests/test_gate.py::test_within",
                         "tests/test_clip.py::test_clip_in_a_subprocess"}, took
    assert all(t > 0 for t in took.values())

    # The boundary mutant declared equivalent: reported with its reason, out of the score.
    (toy / "tests" / "mutation_equivalent.txt").write_text(
        f"{boundary['name']}  # toy: documented as equivalent\n")
    # A test for label() written after the first run: the resumed run must re-test label's
    # "no tests" mutants with it (mutmut alone would let the old result stand).
    (toy / "tests" / "test_label.py").write_text(
        "from gate.limits import label\n\n\ndef test_label():\n"
        "    assert label(True) == 'pass' and label(False) == 'FAIL'\n")
    _, again = _run(toy, tmp_path)
    assert not [s for s in again["survivors"] if "x_label" in s["name"]]
    assert again["equivalent"] == [{"name": boundary["name"], "status": "survived",
                                    "why": "toy: documented as equivalent"}]
    assert boundary["name"] not in {s["name"] for s in again["survivors"]}
    total = again["total"]
    assert total["equivalent"] == 1 and total["score_percent"] == round(
        100 * total["caught"] / (total["mutants"] - 1), 1)
    assert again["stale_equivalent"] == []

    # A listed equivalent keeps its result on a resumed run: no test can kill it, so its
    # tests are not run again (MUTATION_FRESH=1 below does run them). A timeout and a death
    # by a signal are tested again (a hang can be the machine's): here two kills made into
    # them, which the tests kill again.
    meta = tmp_path / "work" / "mutants" / "gate" / "limits.py.meta"
    data = json.loads(meta.read_text())
    killed = sorted(n for n, code in data["exit_code_by_key"].items() if code == 1)[:2]
    data["exit_code_by_key"].update(zip(killed, (-24, -9)))      # SIGXCPU, SIGKILL
    meta.write_text(json.dumps(data))
    proc, resumed = _run(toy, tmp_path)
    assert ("mutation: 2 earlier results that were not catches will be re-tested; 1 listed as "
            "equivalent keep theirs") in proc.stderr
    assert resumed["equivalent"] == again["equivalent"]
    assert resumed["total"] == again["total"]

    # MUTATION_ONLY: only the matching mutants are re-tested; the others keep their results.
    left_over = tmp_path / "work" / "mutants" / "left-over"
    left_over.write_text("from an earlier run")
    proc, only = _run(toy, tmp_path, MUTATION_ONLY="gate.clip.*")
    listed = re.findall(r"(gate\.\w+\.x_\w+__mutmut_\d+)", proc.stdout.split("Mutant results")[1])
    assert listed and all(n.startswith("gate.clip.") for n in listed), listed
    assert only["total"]["by_status"] == again["total"]["by_status"]
    assert only["equivalent"] == again["equivalent"]    # still "survived", not "not checked"
    assert left_over.exists()
    # MUTATION_FRESH=1: every earlier result forgotten, the same figures measured again.
    _, fresh = _run(toy, tmp_path, MUTATION_FRESH="1")
    assert not left_over.exists()
    assert fresh["total"]["by_status"] == again["total"]["by_status"]


def test_mutation_env_is_the_orchestrator_env_plus_mutmut():
    """The fast tests run under mutmut as in the orchestrator environment: same pins."""
    def pins(name):
        text = (REPO / "envs" / f"{name}.lock.txt").read_text()
        return {line.split()[0] for line in text.splitlines() if "==" in line.split(" ")[0]}

    orchestrator, mutation = pins("orchestrator"), pins("mutation")
    assert orchestrator <= mutation
    assert "mutmut==3.8.1" in mutation - orchestrator


def test_a_mutants_tests_run_cheapest_module_first_then_cheapest_test(tmp_path, monkeypatch):
    """mutation_credit's order for a mutant's run, from the stats pass's timings: modules by
    their summed time, tests by their own; a test it did not time counts as the slowest."""
    import mutation_credit
    from types import SimpleNamespace

    (tmp_path / mutation_credit.DURATIONS).write_text(json.dumps({
        "tests/test_fw.py::a": 9.0, "tests/test_fw.py::b": 0.1,
        "tests/test_unit.py::c": 0.3, "tests/test_unit.py::d": 0.2}))
    items = [SimpleNamespace(nodeid=n) for n in (
        "tests/test_fw.py::a", "tests/test_fw.py::b", "tests/test_unit.py::c",
        "tests/test_unit.py::d", "tests/test_new.py::e")]
    monkeypatch.setattr(mutation_credit, "_root", tmp_path)
    monkeypatch.setenv("MUTANT_UNDER_TEST", "gate.x_f__mutmut_1")
    mutation_credit.pytest_collection_modifyitems(items)
    # test_unit 0.5 s, test_new 9 s (its untimed test counts as the slowest), test_fw 9.1 s.
    assert [i.nodeid.split("::")[1] for i in items] == ["d", "c", "e", "b", "a"]
    # Outside a mutant's run (stats pass, or no mutmut) the order is left alone.
    for value in ("stats", None):
        if value is None:
            monkeypatch.delenv("MUTANT_UNDER_TEST")
        else:
            monkeypatch.setenv("MUTANT_UNDER_TEST", value)
        again = list(reversed(items))
        mutation_credit.pytest_collection_modifyitems(again)
        assert again == list(reversed(items))


def test_the_score_counts_crashes_as_caught_and_leaves_listed_equivalents_out():
    """Caught: killed, timed out, or the test process crashed (a segfault: the tests did not
    pass). A listed survivor leaves the denominator; a listed one that was caught stays
    caught (the report names it stale)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutation_report",
                                                  REPO / "scripts" / "mutation_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    files = {"pkg/a.py": {"k": "killed", "t": "timeout", "s": "segfault", "v1": "survived",
                          "v2": "survived", "n": "no tests", "c": "not checked"},
             "other/b.py": {"k2": "killed"}}
    got = report.score(files, {"v2": "why", "k2": "stale"})
    assert got["total"] == {"mutants": 8, "caught": 4, "equivalent": 1, "score_percent": 57.1,
                            "by_status": {"equivalent": 1, "killed": 2, "no tests": 1,
                                          "not checked": 1, "segfault": 1, "survived": 1,
                                          "timeout": 1}}
    assert got["packages"]["pkg"]["score_percent"] == 50.0          # 3 of 6 judged
    assert got["files"]["other/b.py"]["caught"] == 1


def test_under_mutmut_a_worker_killed_mid_progress_bar_stalls_no_other(monkeypatch, tmp_path):
    """mutmut forks a worker per mutant and kills one over its CPU limit. tqdm's default lock
    is a semaphore shared across fork: a worker killed holding it made every later progress
    bar wait until mutmut's clock ran out, a false "timeout" catch. Under mutmut each process
    gets its own lock."""
    import io
    import signal
    import threading

    import mutation_credit
    from tqdm import tqdm

    before = tqdm.get_lock()                 # made before the fork, as in mutmut's parent
    monkeypatch.setattr(mutation_credit, "_root", None)
    monkeypatch.setenv("MUTANT_UNDER_TEST", "gate.x_clip__mutmut_1")     # a mutant's worker
    monkeypatch.setenv("MUTATION_HITS_DIR", str(tmp_path))   # as set up by a parent already
    try:
        mutation_credit.install(REPO)
        pid = os.fork()
        if pid == 0:                          # the worker: dies holding the lock
            tqdm.get_lock().acquire()
            os.kill(os.getpid(), signal.SIGKILL)
        os.waitpid(pid, 0)
        drawn = threading.Event()

        def draw():
            with tqdm(total=1, file=io.StringIO()) as bar:
                bar.update(1)
            drawn.set()

        threading.Thread(target=draw, daemon=True).start()
        assert drawn.wait(10), "a progress bar waited on a lock a killed process held"
    finally:
        tqdm.set_lock(before)
