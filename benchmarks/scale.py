#!/usr/bin/env python
"""Scale-out benchmark: the same entry and images with the local executor and with Ray on
1 and 2 single-CPU worker nodes on this machine; prints a table and writes JSON.

Measured here, every run: accuracy-gate images/s (as the run achieved it, worker starts
included), entries per hour, Ray's scheduling overhead per task (no-op tasks with the same
placement), what a shard costs besides its images (task time minus its evaluation loop), and
whether the figures (top-1/top-5 of source and ONNX, disagreements, unreadable images, max
abs logit difference) equal the local run's. The 2-worker cluster also runs the shard sizes
of --sweep: the basis of the default shard size.

    make bench-scale [IMAGES=512] [SHARD_SIZE=256] [SWEEP=64,128]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from orchestrator.accuracy import DEFAULT_RAY_SHARD_SIZE  # noqa: E402
from orchestrator.executor import node_resources  # noqa: E402
from verify.images import imagenet_like  # noqa: E402

NAME = "res2net50-w14-s8"
DEMO = REPO / "demo" / f"{NAME}.pth"


def _pipeline(args: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return {"wall_s": time.perf_counter() - start}


def _noop(say=None):
    return None


def _ray_overhead(address: str, tasks: int = 40) -> dict:
    """Round trip of a no-op task with a shard's placement (env + code resources, 1 CPU)."""
    import ray

    from orchestrator.executor import _call
    from orchestrator.fingerprint import code_resource, env_resource

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        remote = ray.remote(_call).options(
            num_cpus=1, resources={code_resource(): 1, env_resource("mmpretrain"): 1})
        ray.get(remote.remote(_noop))       # warm: a worker process exists
        one = []
        for _ in range(tasks):
            t0 = time.perf_counter()
            ray.get(remote.remote(_noop))
            one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ray.get([remote.remote(_noop) for _ in range(tasks)])
        batch = (time.perf_counter() - t0) / tasks
    finally:
        ray.shutdown()
    one.sort()
    return {"task_roundtrip_median_s": round(one[len(one) // 2], 4),
            "task_roundtrip_p90_s": round(one[int(len(one) * 0.9)], 4),
            "task_throughput_s_per_task": round(batch, 4)}


def _figures(report: dict) -> dict:
    acc = report["accuracy"]
    return {k: acc[k] for k in ("source", "onnx", "disagree", "unreadable",
                                "max_abs_logit_diff")}


def _row(label: str, workers: int, shard_size: int | None, report: dict, wall: float) -> dict:
    acc = report["accuracy"]["throughput"]
    shards = acc["shards"]
    # What a shard costs besides its images: the task's time minus its evaluation loop
    # (task start, worker process start and imports, model build, checkpoint load, ONNX
    # Runtime sessions, the end of the worker).
    overhead = (sum(acc["shard_s"]) - acc["worker"]["evaluate"]) / shards
    return {"run": label, "workers": workers, "shard_size": shard_size,
            "images": report["accuracy"]["source"]["images"],
            "accuracy_images_per_s": acc["wall_images_per_s"],
            "loop_images_per_s_per_worker": acc["images_per_s"],
            "accuracy_s": acc["wall_s"], "entry_s": report["timings"]["total"],
            "entries_per_hour": round(3600 / wall, 1), "pipeline_wall_s": round(wall, 1),
            "shards": shards, "shard_overhead_s": round(overhead, 2),
            "figures": _figures(report)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_RAY_SHARD_SIZE,
                        help="shard size of the 1- and 2-worker runs (default: the pipeline's)")
    parser.add_argument("--sweep", default="64,128",
                        help="further shard sizes to run on 2 workers (comma list, '' for none)")
    parser.add_argument("--json", type=Path, default=REPO / "bench-scale.json")
    args = parser.parse_args()
    sweep = [int(v) for v in args.sweep.split(",") if v.strip()]
    if not DEMO.is_file():
        raise SystemExit(f"{DEMO} missing: run `make demo` once first")
    from ray.cluster_utils import Cluster

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    data = tmp / "val"
    paths = imagenet_like(data, args.images, seed=5)
    (data / "val.txt").write_text("".join(f"{p.name} {(i * 7) % 1000}\n"
                                          for i, p in enumerate(paths)))
    entry = {e["name"]: e for e in yaml.safe_load(
        (REPO / "manifests" / "all.yaml").read_text())["models"]}[NAME]
    manifest = tmp / "m.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "models": [entry]}, sort_keys=False))
    common = ["--manifest", str(manifest), "--only", NAME, "--checkpoint", f"{NAME}={DEMO}",
              "--data", str(data)]
    rows, overhead = [], {}

    def report(out: Path) -> dict:
        return json.loads((out / NAME / "report.json").read_text())

    out = tmp / "local"
    wall = _pipeline([*common, "--out", str(out)], {})["wall_s"]
    rows.append(_row(f"local ({os.cpu_count()} threads)", 1, None, report(out), wall))

    env = {"PYTHONPATH": str(REPO), "MODEL_CONVERT_WORK": str(tmp / "work")}
    os.environ.update(env)
    offered = node_resources()
    for workers in (1, 2):
        # Nodes on this host's outward address, as `make ray-head` / `ray-worker` start them.
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False})
        for _ in range(workers):
            cluster.add_node(num_cpus=1, resources=offered, object_store_memory=400 * 2**20)
        cluster.wait_for_nodes()
        try:
            for size in [args.shard_size, *(sweep if workers == 2 else [])]:
                out = tmp / f"ray{workers}-{size}"
                wall = _pipeline([*common, "--out", str(out), "--executor", "ray",
                                  "--threads", "1", "--shard-size", str(size),
                                  "--ray-address", cluster.address], env)["wall_s"]
                rows.append(_row(f"ray, {workers} x 1-CPU, shard {size}", workers, size,
                                 report(out), wall))
            if workers == 2:
                overhead = _ray_overhead(cluster.address)
        finally:
            cluster.shutdown()
    local = rows[0]
    for row in rows[1:]:
        row["vs_local"] = round(row["accuracy_images_per_s"] / local["accuracy_images_per_s"], 3)
        row["figures_equal_local"] = row["figures"] == local["figures"]
    result = {"images": args.images, "shard_size": args.shard_size, "rows": rows,
              "ray_overhead": overhead, "cpu_count": os.cpu_count()}
    args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{args.images} images, {NAME}, {os.cpu_count()} cores\n")
    print(f"{'run':<28} {'acc img/s':>9} {'vs local':>8} {'loop img/s/worker':>17} "
          f"{'entry s':>8} {'entries/h':>9} {'shards':>6} {'overhead/shard s':>16} "
          f"{'same figures':>12}")
    for row in rows:
        print(f"{row['run']:<28} {row['accuracy_images_per_s']:>9} "
              f"{row.get('vs_local', 1.0):>8} {row['loop_images_per_s_per_worker']:>17} "
              f"{row['entry_s']:>8.1f} {row['entries_per_hour']:>9} {row['shards']:>6} "
              f"{row['shard_overhead_s']:>16} {str(row.get('figures_equal_local', '-')):>12}")
    print(f"\nRay scheduling per task (no-op task, a shard's placement): {overhead}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
