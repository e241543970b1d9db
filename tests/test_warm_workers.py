"""Warm workers (converters/runner.py WarmPool, converters/protocol.py `--serve`): one
framework process per source takes job after job, with each job's log its own; a failed,
killed or over-limit job ends its process, and a job from another thread, or one asking for
another thread count, never shares one. The real mmpretrain worker runs the jobs (its `list`
task: mmpretrain's own registry), so what is reused is the framework import."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from converters.protocol import ListJob
from converters.registry import SOURCES
from converters.runner import (WARM, Worker, WorkerFailed, run_worker, use_warm_workers,
                               warm_workers)

pytestmark = pytest.mark.slow
SPEC = SOURCES["mmpretrain"]


def _job(pattern: str = "resnet18", threads: int = 1) -> ListJob:
    return ListJob(pattern=pattern, threads=threads)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose: its parent has not reaped it yet
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.fixture
def warm():
    use_warm_workers(True)
    yield WARM
    WARM.close()
    use_warm_workers(False)


def test_jobs_share_one_process_and_each_keeps_its_own_log(warm, tmp_path):
    first = run_worker(SPEC, _job("resnet18"), tmp_path / "a")
    second = run_worker(SPEC, _job("mobilenet-v2"), tmp_path / "b")
    assert first["process"]["pid"] == second["process"]["pid"]
    assert (first["process"]["job"], second["process"]["job"]) == (1, 2)
    # Its idle OpenMP threads sleep, not spin (docs/environments.md): it shares the cores.
    environ = Path(f"/proc/{first['process']['pid']}/environ").read_bytes().split(b"\0")
    assert b"OMP_WAIT_POLICY=PASSIVE" in environ
    assert {m["model_id"] for m in first["models"]} and all(
        "mobilenet" in m["model_id"] for m in second["models"])
    # the same answer as a process of its own gives (the pool is off in this thread's job)
    use_warm_workers(False)
    cold = run_worker(SPEC, _job("resnet18"), tmp_path / "c")
    use_warm_workers(True)
    assert cold["process"]["job"] == 1 and cold["process"]["pid"] != first["process"]["pid"]
    assert cold["models"] == first["models"]
    # each job's log holds its own lines, not the job's before it
    logs = [(tmp_path / job / "worker.log").read_text() for job in "ab"]
    assert "job 1 " in logs[0] and "job 2 " not in logs[0]
    assert "job 2 " in logs[1] and "job 1 " not in logs[1]


def test_a_failed_or_killed_job_ends_its_process_and_the_next_gets_a_fresh_one(warm,
                                                                              tmp_path):
    pid = run_worker(SPEC, _job(), tmp_path / "a")["process"]["pid"]
    with pytest.raises(WorkerFailed) as failed:
        run_worker(SPEC, {"task": "no-such-task", "threads": 1}, tmp_path / "b")
    assert failed.value.kind == "job"
    assert not _alive(pid)
    after = run_worker(SPEC, _job(), tmp_path / "c")["process"]
    assert after["job"] == 1 and after["pid"] != pid

    # stopped before it answers, in a work dir where an earlier job left its result: that
    # result is not this job's. The warm process is held (SIGSTOP) before it is handed the
    # job, so the kill always comes first: the list task takes well under a second, and on
    # a loaded machine it had finished before the kill (the full suite failed once so).
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "result.json").write_text('{"ok": true, "models": []}')
    (held,) = WARM.idle.values()
    os.kill(held.proc.pid, signal.SIGSTOP)
    worker = Worker(SPEC, _job(), tmp_path / "d")
    assert worker.proc.pid == held.proc.pid   # the held process took the job
    worker.kill()
    assert not _alive(worker.proc.pid)
    with pytest.raises(WorkerFailed) as crashed:
        worker.result()
    assert crashed.value.kind == "worker_crashed"
    assert run_worker(SPEC, _job(), tmp_path / "e")["process"]["job"] == 1


def test_another_thread_count_or_thread_gets_its_own_process(warm, tmp_path):
    one = run_worker(SPEC, _job(), tmp_path / "a")["process"]
    two = run_worker(SPEC, _job(threads=2), tmp_path / "b")["process"]
    assert two["pid"] != one["pid"] and two["job"] == 1
    from_thread = {}
    thread = threading.Thread(target=lambda: from_thread.update(
        run_worker(SPEC, _job(), tmp_path / "c")["process"]))
    thread.start()
    thread.join()
    assert from_thread["job"] == 1 and from_thread["pid"] != one["pid"]
    assert run_worker(SPEC, _job(), tmp_path / "d")["process"] == {"pid": one["pid"],
                                                                    "job": 2}


def test_close_leaves_no_worker_and_a_job_over_its_memory_limit_is_stopped(warm, tmp_path):
    pid = run_worker(SPEC, _job(), tmp_path / "a")["process"]["pid"]
    WARM.close()
    assert not _alive(pid)
    with pytest.raises(WorkerFailed) as over:
        run_worker(SPEC, _job(), tmp_path / "b", memory_limit=50 * 2**20)
    assert over.value.kind == "resource_limit"
    assert WARM.idle == {} and WARM.busy == set()


def test_the_mode_and_its_workers_end_with_the_run(tmp_path, monkeypatch):
    """pipeline.py turns warm workers on for its local run only: afterwards no warm worker
    is left and the mode is as before, so a caller running the CLI in-process (a test, a
    notebook) does not run its own later jobs on warm workers (test_limits' stand-in worker,
    which does not serve, failed so after another test ran the CLI in its process)."""
    from click.testing import CliRunner

    import commands.convert
    import pipeline

    with warm_workers():
        pid = run_worker(SPEC, _job(), tmp_path / "a")["process"]["pid"]
        assert WARM.enabled
    assert not WARM.enabled and not _alive(pid) and WARM.idle == {}

    seen = []
    monkeypatch.setattr(commands.convert, "run_all", lambda chosen, entries, opts, runner, reporter:
                        seen.append(WARM.enabled) or [])
    args = ["--only", "res2net50-w14-s8", "--out", str(tmp_path / "out")]
    CliRunner().invoke(pipeline.cli, args, catch_exceptions=False)
    assert seen == [True] and not WARM.enabled
    CliRunner().invoke(pipeline.cli, [*args, "--fresh-workers"], catch_exceptions=False)
    assert seen == [True, False] and not WARM.enabled


def test_a_wait_policy_the_caller_set_is_kept(monkeypatch):
    from converters.runner import _worker_env

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert _worker_env()["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert _worker_env()["OMP_WAIT_POLICY"] == "PASSIVE"
