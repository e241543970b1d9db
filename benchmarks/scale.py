#!/usr/bin/env python
"""Scale-out benchmark: the same entry and images with the local executor and with Ray on
1 and 2 single-CPU worker nodes on this machine; prints a table and writes JSON.

Measured here, every run: accuracy-gate images/s (as the run achieved it, worker starts
included), entries per hour, Ray's scheduling overhead per task (no-op tasks with the same
placement), the fixed cost of a shard (its worker's model build and checkpoint load), and
whether the figures (top-1/top-5 of source and ONNX, disagreements, unreadable images) equal
the local run's.

    make bench-scale [IMAGES=96] [SHARD_SIZE=32]
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
    return {k: acc[k] for k in ("source", "onnx", "disagree", "unreadable")}


def _row(label: str, report: dict, wall: float) -> dict:
    acc = report["accuracy"]["throughput"]
    worker = acc["worker"]
    shards = acc["shards"]
    return {"run": label, "images": report["accuracy"]["source"]["images"],
            "accuracy_images_per_s": acc["wall_images_per_s"],
            "entry_s": report["timings"]["total"],
            "entries_per_hour": round(3600 / wall, 1), "pipeline_wall_s": round(wall, 1),
            "shards": shards,
            "shard_fixed_cost_s": round((worker.get("build", 0) + worker.get("load", 0))
                                        / shards, 2),
            "figures": _figures(report)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=REPO / "bench-scale.json")
    args = parser.parse_args()
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

    out = tmp / "local"
    wall = _pipeline([*common, "--out", str(out)], {})["wall_s"]
    rows.append(_row(f"local ({os.cpu_count()} threads)", json.loads(
        (out / NAME / "report.json").read_text()), wall))

    env = {"PYTHONPATH": str(REPO), "MODEL_CONVERT_WORK": str(tmp / "work")}
    os.environ.update(env)
    offered = node_resources()
    for workers in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        for _ in range(workers):
            cluster.add_node(num_cpus=1, resources=offered, node_ip_address="127.0.0.1",
                             object_store_memory=400 * 2**20)
        cluster.wait_for_nodes()
        try:
            out = tmp / f"ray{workers}"
            wall = _pipeline([*common, "--out", str(out), "--executor", "ray", "--threads", "1",
                              "--shard-size", str(args.shard_size), "--ray-address",
                              cluster.address], env)["wall_s"]
            rows.append(_row(f"ray, {workers} x 1-CPU worker", json.loads(
                (out / NAME / "report.json").read_text()), wall))
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

    print(f"\n{args.images} images, shard size {args.shard_size}, {os.cpu_count()} cores\n")
    print(f"{'run':<26} {'acc img/s':>9} {'vs local':>8} {'entry s':>8} {'entries/h':>9} "
          f"{'shards':>6} {'shard fixed s':>13} {'same figures':>12}")
    for row in rows:
        print(f"{row['run']:<26} {row['accuracy_images_per_s']:>9} "
              f"{row.get('vs_local', 1.0):>8} {row['entry_s']:>8.1f} "
              f"{row['entries_per_hour']:>9} {row['shards']:>6} "
              f"{row['shard_fixed_cost_s']:>13} {str(row.get('figures_equal_local', '-')):>12}")
    print(f"\nRay overhead per task (no-op, same placement): {overhead}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
