"""The accuracy stage: source framework and ONNX Runtime on the same preprocessed tensors.

The source's worker (its own process and environment) decodes and preprocesses the dataset
with its own transforms on a thread pool, runs its eval forward, and streams shards (tensors,
logits, image positions) into a folder; this side runs ONNX Runtime on each shard's tensors as
it lands, so the two inferences overlap, and deletes the shard. Labels never leave this side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from converters.registry import SOURCES
from converters.runner import Worker, WorkerFailed
from manifests.loader import Entry
from verify.accuracy import AccuracyMeter, accuracy_checks, variant_drop_check
from verify.compare import Check
from verify.dataset import Dataset
from verify.ort_runner import OrtRunner

LISTED = 50   # unreadable / disagreeing images named in the report (the count is always full)


class AccuracyFailed(Exception):
    def __init__(self, kind: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.kind, self.message, self.details = kind, message, details or {}


@dataclass
class Selection:
    """The dataset and which of its images this run evaluates (--limit)."""
    dataset: Dataset
    positions: list[int]
    limit: int | None

    def describe(self) -> dict:
        return {**self.dataset.describe(), "limit": self.limit, "selected": len(self.positions),
                "selected_classes": len({self.dataset.labels[i] for i in self.positions})}


def evaluate_accuracy(entry: Entry, selection: Selection, checkpoint: Path, model: Path,
                      workdir: Path, pinned: bool, threads: int | None,
                      data_workers: int | None, timeout: float,
                      variants: dict[str, Path] | None = None
                      ) -> tuple[list[Check], dict, dict[str, tuple[Check, dict]]]:
    """Run the evaluation; returns the fp32 gates, report['accuracy'], and for each variant
    (name -> ONNX file, scored on the same tensors) its top1_drop check and figures."""
    variants = variants or {}
    data = selection.dataset
    paths = [str(data.paths[i]) for i in selection.positions]
    labels = np.asarray([data.labels[i] for i in selection.positions], dtype=np.int64)
    limits = entry["accuracy"]
    job = {"task": "evaluate", "entry": entry.data, "checkpoint": str(checkpoint),
           "images": paths, "threads": threads, "data_workers": data_workers,
           "batch_size": limits["batch_size"], "shard_dir": "shards", "max_pending_shards": 4}
    eval_dir = workdir / "evaluate"
    shard_dir = eval_dir / "shards"
    # ONNX Runtime shares the cores with the worker: idle threads sleep instead of spinning.
    runners = {"onnx": OrtRunner(model, threads, spinning=False),
               **{name: OrtRunner(path, threads, spinning=False)
                  for name, path in variants.items()}}
    meter = AccuracyMeter(tuple(runners))
    worker = Worker(SOURCES[entry.source], job, eval_dir)
    start = time.perf_counter()
    deadline = time.monotonic() + timeout
    onnx_s, shards = 0.0, 0
    bar = tqdm(total=len(paths), desc="  accuracy", unit="img", disable=None, leave=False,
               dynamic_ncols=True)
    try:
        while True:
            shard = shard_dir / f"shard_{shards:06d}.npz"
            if not shard.exists():
                if not worker.running() and not shard.exists():
                    break
                if time.monotonic() > deadline:
                    raise AccuracyFailed("timeout", f"evaluation did not finish within "
                                                    f"{timeout:.0f} s ({meter.images} of "
                                                    f"{len(paths)} images done)")
                time.sleep(0.01)
                continue
            with np.load(shard) as z:
                inputs, reference, indices = z["inputs"], z["logits"], z["indices"]
            shard.unlink()
            t0 = time.perf_counter()
            outs = {name: r.infer(inputs, len(inputs)) for name, r in runners.items()}
            onnx_s += time.perf_counter() - t0
            for name, out in outs.items():
                if out.shape != reference.shape:
                    raise AccuracyFailed("logits_shape", f"ONNX Runtime ({name}) gave "
                                                         f"{list(out.shape)}, the source "
                                                         f"{list(reference.shape)}")
            meter.add(labels[indices], indices, reference, outs)
            shards += 1
            bar.update(len(indices))
    finally:
        bar.close()
        worker.kill()  # no-op when it has exited; stops it on an error or Ctrl-C
    wall = time.perf_counter() - start
    try:
        result = worker.result()
    except WorkerFailed as exc:
        raise AccuracyFailed(exc.kind, f"evaluation worker: {exc.message}", exc.details) from None
    if result["shards"] != shards:
        raise AccuracyFailed("shards", f"the worker wrote {result['shards']} shards, "
                                       f"{shards} were read")
    unreadable = result["unreadable"]
    checks, published = accuracy_checks(meter, limits, len(paths), len(unreadable),
                                        entry.data.get("published"), pinned)
    summary = meter.summary()
    report = {
        **{k: summary[k] for k in ("source", "onnx", "disagree")},
        "disagree_images": [paths[i] for i in meter.disagree[:LISTED]],
        "max_abs_logit_diff": summary["max_abs_logit_diff"],
        "unreadable": len(unreadable),
        "unreadable_images": [{"path": u["path"], "error": u["error"]}
                              for u in unreadable[:LISTED]],
        "dataset": selection.describe(),
        "preprocess": entry["preprocess"]["pipeline"],
        "published": published,
        "limits": {k: v for k, v in limits.items() if k != "batch_size"},
        "throughput": {
            # The evaluation loop's rate (decode + source + ONNX Runtime overlapped); wall_s
            # also holds the worker's start, model build and checkpoint load.
            "images_per_s": (round(len(paths) / result["timings"]["evaluate"], 2)
                             if result["timings"].get("evaluate") else None),
            "wall_s": round(wall, 3), "onnxruntime_s": round(onnx_s, 3),
            "worker": result["timings"], "loader": result["loader"],
        },
    }
    per_variant = {}
    for name in variants:
        figures = {**meter.side(name), "disagree": len(meter.disagreeing[name]),
                   "max_abs_logit_diff": meter.max_diff[name]}
        per_variant[name] = (variant_drop_check(meter, name,
                                                entry["variants"][name]["max_top1_drop"]),
                             figures)
        report.setdefault("variants", {})[name] = figures
    return checks, report, per_variant
