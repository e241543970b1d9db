#!/usr/bin/env python
"""Accuracy-gate throughput: the data path alone vs inference alone, per source.

For each source it runs the source's worker (its own environment) on an ImageNet-like JPEG set
and measures, each in this run:
  - data path: the source's own decode + transforms through the pipeline's parallel loader
    (converters/data_loader.py), with 1 decode thread and with all cores;
  - source inference: the source framework's eval forward on one preprocessed batch;
  - ONNX Runtime inference: the same batch on the exported model, in this process.
During the accuracy gate both inferences run on every image, so the data path must beat their
combined rate, 1 / (1/source + 1/onnx), or the gate is data-bound.

Prints a table and writes JSON (default bench-data-path.json).

    .venvs/orchestrator/bin/python benchmarks/data_path.py [--images 128] [--data DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.registry import SOURCES, unavailable_reason  # noqa: E402
from converters.runner import WorkerFailed, run_worker  # noqa: E402
from converters.protocol import BenchJob, timed_runs  # noqa: E402
from manifests.loader import load_manifest  # noqa: E402
from verify.dataset import load_dataset  # noqa: E402
from verify.images import imagenet_like  # noqa: E402
from verify.ort_runner import OrtRunner  # noqa: E402

DEFAULT_ENTRIES = ("res2net50-w14-s8", "paddleclas-res2net50-14w-8s", "mindcv-res2net50")


def ort_rate(onnx: Path, batch: np.ndarray, threads: int, runs: int) -> dict:
    runner = OrtRunner(onnx, threads)
    times = timed_runs(lambda: runner.infer(batch, len(batch)), 1, runs)
    median = float(np.median(times))
    return {"runtime": f"onnxruntime {runner.version}", "batch_size": len(batch), "runs": runs,
            "median_s": round(median, 4), "images_per_s": round(len(batch) / median, 2),
            "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("manifests/all.yaml"))
    parser.add_argument("--entries", default=",".join(DEFAULT_ENTRIES),
                        help="comma-separated manifest entries (one per source by default)")
    parser.add_argument("--images", type=int, default=128, help="images in the data-path pass")
    parser.add_argument("--data", type=Path, default=None,
                        help="a labelled dataset to read instead of generated 500x375 JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=4, help="timed inference runs (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=Path("bench-data-path.json"))
    args = parser.parse_args()

    entries = {e.name: e for e in load_manifest(args.manifest)}
    work = Path(tempfile.mkdtemp(prefix="bench-data-path-"))
    if args.data:
        images = [str(p) for p in load_dataset(args.data).paths[:args.images]]
        image_source = str(args.data)
    else:
        # ImageNet-like: 500x375 / 375x500 JPEGs, every 8th grayscale, CMYK or PNG-as-JPEG.
        images = [str(p) for p in imagenet_like(work / "images", args.images, odd_every=8)]
        image_source = "generated 500x375 JPEGs"
    workers = sorted({1, os.cpu_count() or 1})
    rows = []
    for name in args.entries.split(","):
        entry = entries[name]
        spec = SOURCES[entry.source]
        if unavailable_reason(spec):
            print(f"skip {name}: {unavailable_reason(spec)}")
            continue
        print(f"{name}: {spec.framework} worker ...", flush=True)
        workdir = work / name
        try:
            result = run_worker(spec, BenchJob(
                entry=entry.data, images=images, batch_size=args.batch_size,
                data_workers_list=workers, threads=args.threads, inference_batches=args.runs),
                workdir)
        except WorkerFailed as exc:
            print(f"  failed: [{exc.kind}] {exc.message}")
            continue
        batch = np.load(workdir / result["files"]["batch"])
        onnx = ort_rate(workdir / result["files"]["onnx"], batch, args.threads, args.runs)
        source = result["inference"]
        both = 1.0 / (1.0 / source["images_per_s"] + 1.0 / onnx["images_per_s"])
        data_best = max(d["images_per_s"] for d in result["data"])
        rows.append({"entry": name, "source": entry.source, "versions": result["versions"],
                     "data_path": result["data"], "source_inference": source,
                     "onnx_inference": onnx, "both_inferences_images_per_s": round(both, 2),
                     "data_path_bottleneck": data_best < both,
                     "headroom": round(data_best / both, 2)})

    header = (f"{'entry':<30} {'data 1 thr':>11} {f'data {workers[-1]} thr':>11} "
              f"{'source inf':>11} {'ORT inf':>9} {'both inf':>9} {'bottleneck':>11}")
    print(f"\nimages/s, batch {args.batch_size}, {args.threads} inference threads, "
          f"{len(images)} images ({image_source})")
    print(header)
    print("-" * len(header))
    for r in rows:
        data = {d["data_workers"]: d["images_per_s"] for d in r["data_path"]}
        print(f"{r['entry']:<30} {data[1]:>11.1f} {data[workers[-1]]:>11.1f} "
              f"{r['source_inference']['images_per_s']:>11.1f} "
              f"{r['onnx_inference']['images_per_s']:>9.1f} "
              f"{r['both_inferences_images_per_s']:>9.1f} "
              f"{'DATA PATH' if r['data_path_bottleneck'] else 'inference':>11}")
    args.json.write_text(json.dumps({
        "benchmark": "accuracy-gate data path vs inference",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor()},
        "images": len(images), "image_source": image_source, "batch_size": args.batch_size,
        "threads": args.threads, "results": rows}, indent=2))
    print(f"\nwrote {args.json}")
    return 0 if rows and not any(r["data_path_bottleneck"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
