"""Scale-out: the Ray executor gives the local executor's figures, survives a node removed
mid-shard, reports an environment no node offers at once, and killed runs leave nothing that
the next start does not sweep. Real frameworks, real Ray (embedded and a multi-node cluster
on this machine, as `ray.cluster_utils.Cluster` runs it)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import (DATA_IMAGES, HUGE_IMAGE, REPO, SMALL_THREE, VENV_ROOT, read_report,
                      run_pipeline, shared_args, small_args)

pytestmark = pytest.mark.slow
IN_CLUSTER = pytest.mark.xdist_group("cluster")   # one worker runs the cluster's tests
def _figures(report: dict, variants: bool = True) -> dict:
    """Every measured figure of a report; not timings, dates or where things ran. Without
    `variants`, the fp32 model's alone (to compare a run of fp32 with one of fp32 and fp16)."""
    acc = {k: v for k, v in report["accuracy"].items()
           if k != "throughput" and (variants or k != "variants")}
    return {"passed": report["passed"], "accuracy": acc,
            "checks": sorted((c["name"], c["scope"].get("model"), c["measured"])
                             for c in report["checks"]),
            "variants": {p: (v["passed"], v.get("accuracy"),
                             sorted((c["name"], c["measured"]) for c in v["checks"]))
                         for p, v in (report.get("variants") or {}).items() if variants}}


def test_ray_reports_the_local_figures_on_three_sources(small_manifest, shared_data, tmp_path,
                                                       request):
    """The shared local run of a small model of each source (conftest.small_three: same
    manifest, data, threads and precisions) against the same run on Ray in shards of 4."""
    names = list(SMALL_THREE)
    ray = run_pipeline(*small_args(small_manifest, names, tmp_path / "ray", shared_data,
                                   "--executor", "ray", "--shard-size", "4"),
                       env={"MODEL_CONVERT_WORK": str(tmp_path / "work")})
    assert ray.returncode == 0, ray.stdout[-4000:] + ray.stderr[-3000:]
    assert "executor: ray (embedded local instance" in ray.stdout
    # Asked for only now: another worker may be making it meanwhile.
    local = request.getfixturevalue("small_three")
    for name in names:
        a, b = read_report(local, name), read_report(tmp_path / "ray", name)
        assert a["accuracy"]["throughput"]["shards"] == 1
        assert b["accuracy"]["throughput"]["shards"] == 3           # 12 images / 4
        assert b["accuracy"]["source"]["images"] == DATA_IMAGES          # no shard lost or doubled
        assert b["accuracy"]["unreadable"] == 2
        # Each source's own loader counted the huge image as too large, on Ray as locally.
        [huge] = [u for u in a["accuracy"]["unreadable_images"] if u["path"].endswith(HUGE_IMAGE)]
        assert huge["error"].startswith("too large: 25000 x 25000 (625,000,000 pixels"), huge
        assert b["variants"]["fp16"]["accuracy"]["images"] == DATA_IMAGES
        assert _figures(a) == _figures(b), name
        # The fingerprint of the inputs is the same wherever the run happened.
        assert a["inputs"] == b["inputs"]
        provenance = json.loads((tmp_path / "ray" / name / "provenance.json").read_text())
        internal = provenance["predicate"]["buildDefinition"]["internalParameters"]
        assert internal["inputs"]["fingerprint"] == b["inputs"]["fingerprint"]
    # Every task's work directory is gone once the run is over.
    assert not list((tmp_path / "work").glob("run-*"))


# --------------------------------------------------------------------------- a real cluster
@contextmanager
def _local_cluster(work: Path, nodes: int):
    """A head (no CPUs: it runs nothing) and NODES 1-CPU nodes offering only the mmpretrain
    environment, all on this machine, their work directories under WORK."""
    from ray.cluster_utils import Cluster

    from orchestrator.executor import node_resources

    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "VENV_ROOT", "MODEL_CONVERT_WORK")}
    os.environ.update(PYTHONPATH=str(REPO), VENV_ROOT=str(VENV_ROOT),
                      MODEL_CONVERT_WORK=str(work))
    offered = {k: v for k, v in node_resources().items()
               if k.startswith("code:") or k.startswith("env:mmpretrain:")}
    assert len(offered) == 2, f"mmpretrain environment not built: {node_resources()}"
    # On this host's outward address, as `ray start` puts a node: Ray rewrites a loopback
    # --ray-address to that address, so a cluster pinned to 127.0.0.1 cannot be joined.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        added = [c.add_node(num_cpus=1, resources=offered, object_store_memory=400 * 2**20)
                 for _ in range(nodes)]
        c.wait_for_nodes()
        yield c, added
    finally:
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two 1-CPU nodes, shared by the tests of the module that need one."""
    work = tmp_path_factory.mktemp("cluster-work")
    with _local_cluster(work, nodes=2) as (c, nodes):
        yield c, nodes, work


def _cluster_driver(c, manifest, name, out, data):
    """pipeline.py joining the cluster in its own process, shards of 4, its output in a log."""
    args = small_args(manifest, [name], out, data, "--executor", "ray", "--shard-size", "4",
                      "--ray-address", c.address)
    log = out.parent / f"{out.name}-driver.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(REPO / "pipeline.py"), *args], cwd=REPO,
                                stdout=sink, stderr=subprocess.STDOUT, text=True)
    return proc, log


@IN_CLUSTER
def test_node_removed_mid_shard_gives_the_same_figures(cluster, small_manifest, shared_data,
                                                       tmp_path, request):
    """A node removed while shards run: Ray reruns its shard elsewhere and the figures are
    the local run's (conftest.small_three).

    Like test_ray_reports_the_local_figures_on_three_sources, it asks for small_three only
    after its Ray run: the other worker makes `three_sources` at the start of the run
    (conftest FIRST), and whichever of the two Ray tests ends first makes small_three."""
    c, nodes, work = cluster
    name = "mm-small"
    proc, log = _cluster_driver(c, small_manifest, name, tmp_path / "ray", shared_data)
    # Every shard task works in its own run-shard-* directory: a task that Ray reruns after
    # its node died shows up as one more directory than there are shards.
    seen: set[str] = set()
    deadline = time.monotonic() + 600
    while len(running := {p.name for p in work.glob("run-shard-*")}) < 2:  # both nodes busy
        seen |= running
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, "no two shards ever ran at once"
        time.sleep(0.05)
    seen |= running
    c.remove_node(nodes[1], allow_graceful=False)
    deadline = time.monotonic() + 900
    while proc.poll() is None:
        seen |= {p.name for p in work.glob("run-shard-*")}
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)
    out = log.read_text()
    assert proc.returncode == 0, out[-4000:]
    assert len(seen) >= 4, f"no shard was rerun after its node was removed: {sorted(seen)}"
    small_three = request.getfixturevalue("small_three")
    a, b = read_report(small_three, name), read_report(tmp_path / "ray", name)
    assert b["accuracy"]["throughput"]["shards"] == 3
    assert b["accuracy"]["source"]["images"] == DATA_IMAGES and b["accuracy"]["unreadable"] == 2
    assert _figures(a, variants=False) == _figures(b, variants=False)
    # The artifact is whole: every file the report names is there, nothing half-written.
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [name]
    assert {"model.onnx", "report.json", "provenance.json"} <= {
        p.name for p in (tmp_path / "ray" / name).iterdir()}


def test_ctrl_c_cancels_the_cluster_tasks_and_writes_nothing(small_manifest, shared_data,
                                                             tmp_path):
    """A cluster of its own (one node): after a node removal in the shared cluster, this
    driver's tasks were sometimes never scheduled (issue 11 closing note). Ctrl-C while the
    entry's task converts on the node: exit 130, nothing written, and the cancelled task and
    its framework worker are gone, so the next start's sweep removes their directories."""
    from orchestrator.workdir import sweep_stale

    work = tmp_path / "work"
    name = "mm-small"
    with _local_cluster(work, nodes=1) as (c, _):
        proc, log = _cluster_driver(c, small_manifest, name, tmp_path / "out", shared_data)
        deadline = time.monotonic() + 600
        while not list(work.glob("run-entry-*/job.json")):  # the task's worker converts
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "the entry's task never started its worker"
            time.sleep(0.05)
        started = [p.parent for p in work.glob("run-entry-*/job.json")]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-4000:]
        assert "interrupted: the run's tasks were cancelled" in log.read_text()
        assert not (tmp_path / "out" / name).exists(), "an artifact of an interrupted run"
        deadline = time.monotonic() + 60
        while list(work.glob("run-entry-*")) or any(_processes_using(p) for p in started):
            sweep_stale(work)
            assert time.monotonic() < deadline, f"still running: {list(work.glob('run-*'))}"
            time.sleep(0.2)


@IN_CLUSTER
def test_environment_no_node_offers_is_reported_at_once(cluster, checkpoints, shared_manifest,
                                                        shared_data, tmp_path):
    c, _, _ = cluster
    name = "paddleclas-res2net50-14w-8s"
    start = time.monotonic()
    proc = run_pipeline(*shared_args(shared_manifest, checkpoints, [name], tmp_path / "out",
                                     shared_data, "--executor", "ray", "--ray-address",
                                     c.address), timeout=120)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "UNAVAILABLE" in proc.stdout
    assert "no node of the Ray cluster offers the paddle environment" in proc.stdout
    assert took < 60, f"took {took:.0f} s to say so"
    assert not (tmp_path / "out" / name / "model.onnx").exists()
    # Without --ray-address the run starts its own instance, even while this cluster (the
    # last one started on the machine) is up: Ray would otherwise join it.
    embedded = run_pipeline("--only", name, "--checkpoint", f"{name}={tmp_path / 'no.pdparams'}",
                            "--executor", "ray", "--out", str(tmp_path / "e"), timeout=300)
    assert "executor: ray (embedded local instance: 1 node(s)" in embedded.stdout, (
        embedded.stdout[-3000:] + embedded.stderr[-3000:])


# --------------------------------------------------------------------------- killed runs
def test_killed_run_leaves_a_work_dir_that_the_next_start_sweeps(checkpoints, tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "MODEL_CONVERT_WORK": str(work)}
    name = "res2net50-w14-s8"
    proc = subprocess.Popen([sys.executable, str(REPO / "pipeline.py"), "--only", name,
                             "--checkpoint", f"{name}={checkpoints('w14')}", "--out",
                             str(tmp_path / "out")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    job = None
    while job is None:  # the framework worker has started: mid-convert
        job = next(iter(work.glob("run-entry-*/job.json")), None)
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    left = job.parent
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert left.is_dir() and list(work.glob("run-driver-*")), "nothing was left to sweep"
    time.sleep(1)  # the worker, started with PDEATHSIG, is gone with its parent
    assert not _processes_using(left), "a framework worker outlived the killed run"

    # The next start on this machine (here a run that fails at once) sweeps both.
    again = run_pipeline("--only", name, "--checkpoint", f"{name}={tmp_path / 'missing.pth'}",
                         "--out", str(tmp_path / "out2"), env={"MODEL_CONVERT_WORK": str(work)})
    assert again.returncode == 1 and "checkpoint file not found" in again.stdout
    assert not left.exists()
    assert not list(work.glob("run-*")), list(work.iterdir())
    assert not (tmp_path / "out" / name).exists(), "a half-written artifact is visible"


def test_ctrl_c_of_a_local_run_exits_130_and_leaves_nothing(checkpoints, tmp_path):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group (the run and its
    framework worker) while the worker converts. Exit 130, the message, no artifact, no
    worker left, no work directory left (nothing for a later sweep)."""
    work = tmp_path / "work"
    name = "res2net50-w14-s8"
    proc = subprocess.Popen([sys.executable, str(REPO / "pipeline.py"), "--only", name,
                             "--checkpoint", f"{name}={checkpoints('w14')}", "--out",
                             str(tmp_path / "out")], cwd=REPO,
                            env={**os.environ, "MODEL_CONVERT_WORK": str(work)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    job = None
    while job is None:  # the framework worker has started: mid-convert
        job = next(iter(work.glob("run-entry-*/job.json")), None)
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-4000:]
    assert "interrupted: the run's tasks were cancelled" in out
    assert not (tmp_path / "out" / name).exists(), "an artifact of an interrupted run"
    assert not _processes_using(job), "a framework worker outlived the interrupted run"
    assert not list(work.glob("run-*")), list(work.iterdir())


def _processes_using(path: Path) -> list[int]:
    """Pids whose command line names `path` (the worker's job.json)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids
