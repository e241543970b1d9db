"""The accuracy stage: source framework and ONNX Runtime on the same preprocessed tensors.

The selected images are cut into shards (`plan_shards`); each shard is a task
(`evaluate_shard`) that can run on any node offering the source's environment. Inside a
shard, the source's worker (its own process and environment) decodes and preprocesses the
images with its own transforms on a thread pool, runs its eval forward, and streams batches
(tensors, logits, image positions) into the shard's private work folder; the task runs ONNX
Runtime on each batch as it lands, so the two inferences overlap, and deletes it. A shard
returns per-image records (verify.accuracy.score: top-1/top-5 of each side, largest logit
difference), never labels or logits. The driver merges the shards in dataset order
(`merge_shards`) and applies the gates, so the figures do not depend on how many shards there
were or where they ran: shards start on batch boundaries, so every batch, and so every
logit, is the one a single-shard run computes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from tqdm import tqdm

from converters.protocol import EvaluateJob, PipelineError
from converters.registry import SOURCES
from converters.limits import WorkerLimits
from converters.runner import Worker, WorkerFailed
from orchestrator.contract_gate import contract_accuracy_checks, contract_batch, merge_contract
from orchestrator.workdir import placed, run_dir
from verify.accuracy import (AccuracyMeter, accuracy_checks, concat_scores, score,
                             variant_drop_check)
from verify.compare import Check
from verify.dataset import Dataset
from verify.ort_runner import OrtRunner
from verify.runners import CPU_RUNTIMES, make_runner

if TYPE_CHECKING:   # for the annotation only: stages.context imports this module
    from orchestrator.stages.context import CheckpointRef

LISTED = 50   # unreadable / disagreeing images named in the report (the count is always full)
# Accuracy images per Ray task unless --shard-size says otherwise. A shard costs about 8 s
# besides its images (task start, worker process start and imports, model build, checkpoint
# load, ONNX Runtime sessions; `make bench-scale` measures it) against about 3.7 images/s
# per 1-CPU worker on Res2Net50 here: 256 images keep that near 10 % of a shard while a
# full ImageNet val entry still makes ~200 shards to spread over the nodes (docs/usage.md,
# "One machine or a Ray cluster").
DEFAULT_RAY_SHARD_SIZE = 256


class AccuracyFailed(PipelineError):
    """The accuracy gate could not measure (a shard's worker, timeout, shape)."""


@dataclass
class Selection:
    """The dataset and which of its images this run evaluates (--limit)."""
    dataset: Dataset
    positions: list[int]
    limit: int | None

    def describe(self) -> dict:
        return {**self.dataset.describe(), "limit": self.limit, "selected": len(self.positions),
                "selected_classes": len({self.dataset.labels[i] for i in self.positions})}


def plan_shards(count: int, shard_size: int | None, batch_size: int) -> list[range]:
    """Consecutive slices of the selected images; each starts on a batch boundary (the size is
    rounded up to whole batches) so batches, and logits, equal a single-shard run's."""
    if not shard_size or shard_size >= count:
        return [range(0, count)]
    size = -(-shard_size // batch_size) * batch_size
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass
class ShardJob:
    """One accuracy shard: which images, of which entry, with which models."""
    entry: dict
    source: str
    index: int
    start: int                      # position of the first image in the selection
    paths: list[str]
    checkpoint: CheckpointRef       # resolved on the node that runs the shard
    models: list[str]               # candidate names ("onnx", "fp16", ...), blob order
    threads: int | None
    data_workers: int | None
    timeout: float
    keep_work: bool = False
    limits: WorkerLimits = WorkerLimits()
    contract: dict | None = None    # preprocess.json: also run contract + ONNX (deploy gate)


@dataclass
class ShardResult:
    index: int
    start: int
    images: int                     # requested
    used: np.ndarray                # selection positions of the decoded images, in order
    scored: dict | None             # verify.accuracy.score() records of the decoded images
    unreadable: list[dict] = field(default_factory=list)  # index = selection position
    timings: dict = field(default_factory=dict)
    loader: dict = field(default_factory=dict)
    onnx_s: float = 0.0
    seconds: float = 0.0            # the whole task, as it ran
    contract: dict | None = None    # orchestrator.contract_gate figures of this shard


class MergedAccuracy(NamedTuple):
    """The accuracy shards merged (merge_shards), what the driver's gate applies
    (orchestrator/stages/accuracy.py apply_accuracy)."""
    checks: list[Check]                        # the fp32 gates
    figures: dict                              # report['accuracy']
    variants: dict[str, tuple[Check, dict]]    # precision -> (its top1_drop check, figures)


AT = "@"   # candidate "fp16@openvino": the fp16 model on OpenVINO


def shard_runtimes(entry) -> list[str]:
    """Runtimes besides ONNX Runtime CPU that the accuracy shards run: the CPU ones of the
    entry's deploy.runtimes (a GPU runtime would make a shard's figures depend on its node)."""
    return [r for r in entry["deploy"]["runtimes"] if r in CPU_RUNTIMES and r != "onnxruntime"]


def runtime_accuracy(entry, meter: AccuracyMeter, names: list[str]) -> dict[str, dict]:
    """Per extra runtime and model: its top-1/top-5 and the check ONNX Runtime's copy gets
    (fp32: |top-1 - source| <= onnx_top1_delta; a variant: its top1_drop)."""
    out: dict[str, dict] = {}
    for name in names:
        if AT not in name:
            continue
        model, runtime = name.split(AT)
        scope = {"model": "simplified" if model == "onnx" else model, "runtime": runtime,
                 "stage": "accuracy"}
        if model == "onnx":
            limit = entry["accuracy"]["onnx_top1_delta"]
            delta = round(meter.percent(name, 1) - meter.percent("source", 1), 4)
            check = Check("onnx_top1_delta", abs(delta) <= limit + 1e-9, delta, limit,
                          f"{runtime} top-1 {meter.percent(name, 1):.3f}% vs source "
                          f"{meter.percent('source', 1):.3f}% on {meter.images} images", scope)
        else:
            check = variant_drop_check(meter, name, entry["variants"][model]["max_top1_drop"])
            check.scope = scope
        precision = "fp32" if model == "onnx" else model
        out.setdefault(runtime, {})[precision] = {
            "check": check, "figures": {**meter.side(name),
                                        "disagree": len(meter.disagreeing[name])}}
    return out


# Not mutated (`make mutation`): a shard runs a framework worker, which only the slow
# end-to-end tests reach; its arithmetic lives in the functions around it, which are.
def evaluate_shard(job: ShardJob, checkpoint_blob: bytes | None, *model_blobs: bytes | Path,
                   say=print) -> ShardResult:  # pragma: no mutate block
    """Run the source's eval forward and ONNX Runtime on this shard's images."""
    started = time.perf_counter()
    entry = job.entry
    with run_dir(f"shard-{entry['name']}-{job.index}", keep=job.keep_work) as workdir:
        got = job.checkpoint.resolve(checkpoint_blob)
        runners = {}
        for name, blob in zip(job.models, model_blobs):
            path = placed(blob, workdir / f"{name}.onnx")   # a path where it runs locally
            runners[name] = OrtRunner(path, job.threads)   # idle threads sleep (the default)
            for runtime in shard_runtimes(entry):   # the runtime matrix, on the same tensors
                runners[f"{name}{AT}{runtime}"] = make_runner(runtime, path, job.threads)
        worker_job = EvaluateJob(entry=entry, checkpoint=str(got.path), images=job.paths,
                                 threads=job.threads, data_workers=job.data_workers,
                                 batch_size=entry["accuracy"]["batch_size"],
                                 max_image_pixels=job.limits.max_image_pixels)
        eval_dir = workdir / "evaluate"
        batch_dir = eval_dir / "batches"
        worker = Worker(SOURCES[job.source], worker_job, eval_dir, job.limits.memory_limit())
        deadline = time.monotonic() + job.timeout
        onnx_s, batches, parts, used, contract = 0.0, 0, [], [], []
        bar = tqdm(total=len(job.paths), desc="  accuracy", unit="img", disable=None,
                   leave=False, dynamic_ncols=True)
        try:
            while True:
                batch = batch_dir / f"shard_{batches:06d}.npz"
                if not batch.exists():
                    if not worker.running() and not batch.exists():
                        break
                    if time.monotonic() > deadline:
                        raise AccuracyFailed("timeout", f"evaluation did not finish within "
                                                        f"{job.timeout:.0f} s ({len(used)} "
                                                        f"of {len(job.paths)} images done)")
                    time.sleep(0.01)
                    continue
                with np.load(batch) as z:
                    inputs, reference, indices = z["inputs"], z["logits"], z["indices"]
                batch.unlink()
                t0 = time.perf_counter()
                outs = {name: r.infer(inputs, len(inputs)) for name, r in runners.items()}
                onnx_s += time.perf_counter() - t0
                if job.contract is not None:
                    ours, diffs, errors = contract_batch(
                        [job.paths[int(i)] for i in indices], job.contract, inputs)
                    outs["contract"] = runners["onnx"].infer(ours, len(ours))
                    contract.append(_contract_part(job, indices, diffs, errors))
                for name, out in outs.items():
                    if out.shape != reference.shape:
                        raise AccuracyFailed("logits_shape", f"ONNX Runtime ({name}) gave "
                                                             f"{list(out.shape)}, the source "
                                                             f"{list(reference.shape)}")
                parts.append(score(reference, outs, entry["tolerances"]))
                used += [job.start + int(i) for i in indices]
                batches += 1
                bar.update(len(indices))
        finally:
            bar.close()
            worker.kill()  # no-op when it has exited; stops it on an error or Ctrl-C
        try:
            result = worker.result()
        except WorkerFailed as exc:
            raise AccuracyFailed(exc.kind, f"evaluation worker: {exc.message}",
                                 exc.details) from None
        if result["shards"] != batches:
            raise AccuracyFailed("shards", f"the worker wrote {result['shards']} batches, "
                                           f"{batches} were read")
    unreadable = [{**u, "index": job.start + u["index"]} for u in result["unreadable"]]
    return ShardResult(job.index, job.start, len(job.paths), np.asarray(used, dtype=np.int64),
                       concat_scores(parts) if parts else None, unreadable,
                       result["timings"], result["loader"], onnx_s,
                       time.perf_counter() - started,
                       merge_contract(contract) if contract else None)


def _contract_part(job: ShardJob, indices: np.ndarray, diffs: np.ndarray,
                   errors: list[dict]) -> dict:
    worst = int(np.argmax(diffs)) if len(diffs) else 0
    return {"images": len(diffs), "exact_images": int((diffs == 0).sum()),
            "max_level_diff": float(diffs.max()) if len(diffs) else 0.0,
            "worst_image": job.paths[int(indices[worst])] if len(diffs) else None,
            "errors": errors}


def _summed(dicts: list[dict]) -> dict:
    """Each key's sum over DICTS (a key one shard lacks counts 0 there), in first-seen order."""
    keys = dict.fromkeys(k for d in dicts for k in d)
    return {k: round(sum(d.get(k, 0) for d in dicts), 3) for k in keys}


def merge_shards(entry, selection: Selection, shards: list[ShardResult], pinned: bool,
                 variants: list[str], wall: float) -> MergedAccuracy:
    """The fp32 gates, report['accuracy'], and for each variant its top1_drop check and
    figures, from the shards merged in dataset order."""
    data = selection.dataset
    paths = [str(data.paths[i]) for i in selection.positions]
    labels = np.asarray([data.labels[i] for i in selection.positions], dtype=np.int64)
    limits = entry["accuracy"]
    contract = [s.contract for s in sorted(shards, key=lambda s: s.start) if s.contract]
    extra = [f"{m}{AT}{r}" for m in ("onnx", *variants) for r in shard_runtimes(entry)]
    meter = AccuracyMeter(("onnx", *variants, *(["contract"] if contract else []), *extra))
    unreadable = []
    for shard in sorted(shards, key=lambda s: s.start):
        if shard.scored is not None:
            meter.add_scored(labels[shard.used], shard.used, shard.scored)
        unreadable += shard.unreadable
    checks, published = accuracy_checks(meter, limits, len(paths), len(unreadable),
                                        entry.data.get("published"), pinned)
    summary = meter.summary()
    evaluate_s = sum(s.timings.get("evaluate", 0.0) for s in shards)
    report = {
        **{k: summary[k] for k in ("source", "onnx", "disagree")},
        "disagree_images": [paths[i] for i in meter.disagree[:LISTED]],
        # Top-1 changes between the source's top two classes when those lie within 2x the
        # logit limit (verify.accuracy.score): listed apart, not counted as disagreements.
        "near_ties": summary["near_ties"],
        "near_tie_images": [paths[i] for i in meter.near_ties["onnx"][:LISTED]],
        "max_abs_logit_diff": summary["max_abs_logit_diff"],
        "unreadable": len(unreadable),
        "unreadable_images": [{"path": u["path"], "error": u["error"]}
                              for u in unreadable[:LISTED]],
        "dataset": selection.describe(),
        "preprocess": entry["preprocess"]["pipeline"],
        "published": published,
        "limits": {k: v for k, v in limits.items() if k != "batch_size"},
        "throughput": {
            # images_per_s: the evaluation loops' rate (decode + source + ONNX Runtime
            # overlapped), summed over shards; wall_images_per_s: what the run achieved, with
            # every worker start, model build and checkpoint load, across all its nodes.
            "images_per_s": round(len(paths) / evaluate_s, 2) if evaluate_s else None,
            "wall_s": round(wall, 3),
            "wall_images_per_s": round(len(paths) / wall, 2) if wall else None,
            "onnxruntime_s": round(sum(s.onnx_s for s in shards), 3),
            "shards": len(shards),
            "shard_s": [round(s.seconds, 3) for s in sorted(shards, key=lambda s: s.start)],
            # Summed over shards: each shard's worker builds the model and loads the
            # checkpoint again, which is the fixed cost of a shard.
            "worker": _summed([s.timings for s in shards]),
            "loader": {**shards[0].loader, **_summed([
                {k: s.loader.get(k, 0) for k in ("images", "unreadable", "data_wait_s")}
                for s in shards])},
        },
    }
    if contract:
        figures = {**merge_contract(contract), **meter.side("contract"),
                   "disagree": len(meter.disagreeing["contract"])}
        checks += contract_accuracy_checks(entry, figures, meter.percent("source", 1),
                                           meter.percent("contract", 1), meter.images)
        report["contract"] = figures
    report["runtimes"] = runtime_accuracy(entry, meter, extra)
    per_variant = {}
    for name in variants:
        figures = {**meter.side(name), "disagree": len(meter.disagreeing[name]),
                   "near_ties": len(meter.near_ties[name]),
                   "max_abs_logit_diff": meter.max_diff[name]}
        per_variant[name] = (variant_drop_check(meter, name,
                                                entry["variants"][name]["max_top1_drop"]),
                             figures)
        report.setdefault("variants", {})[name] = figures
    return MergedAccuracy(checks, report, per_variant)
