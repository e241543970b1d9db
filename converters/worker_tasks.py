"""The worker's tasks besides convert, whatever the framework: describe and list (what the
source says about its models, for orchestrator/derive.py), capture (the source's layer
outputs for the localiser), evaluate (the accuracy pass, streamed as shards), bench (the data
path's speed) and latency (the framework's forward). worker_flow.run dispatches to them; each
uses the adapter as convert does.

Imported inside worker environments only.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import time
from pathlib import Path

import numpy as np

from converters.data_loader import LoaderStats, batches
from converters.protocol import (BenchJob, CaptureJob, DescribeJob, EvaluateJob, LatencyJob,
                                  ListJob, Timer, WorkerError, log, timed_runs)
from converters.worker_flow import (Adapter, _data_workers, _max_pixels, _shapes_ok,
                                    build_with_source, preprocess_all)


# --------------------------------------------------------------------------- the zoo
def closest_ids(wanted: str, ids: list[str], limit: int = 5) -> list[str]:
    """Ids a typo probably meant: those starting with it (case-insensitive), then the most
    similar by difflib's ratio."""
    folded = {i.lower(): i for i in ids}
    prefix = [i for low, i in folded.items() if low.startswith(wanted.lower())]
    similar = [folded[m] for m in difflib.get_close_matches(wanted.lower(), list(folded),
                                                            n=limit, cutoff=0.6)]
    return list(dict.fromkeys(prefix[:limit] + similar))[:limit]


def known_model(adapter: Adapter, model_id: str):
    """The source's derive module, once the id is proven to be in the source's registry;
    an unknown id is a WorkerError naming the closest ones."""
    derive = importlib.import_module(adapter.derive_module)
    ids = derive.model_ids()
    if model_id not in ids:
        close = closest_ids(model_id, ids)
        raise WorkerError("model_id", f"{adapter.framework} has no model {model_id!r}"
                          + (f"; closest: {', '.join(close)}" if close else ""),
                          {"closest": close})
    return derive


def describe(adapter: Adapter, job: DescribeJob, workdir: Path) -> dict:
    """What the source says about one model: preprocess, input_shape, num_classes, family,
    published figures and checkpoint where it publishes them, and the files they came from."""
    if job.model_ids is not None:   # many at once (the zoo sweep): one error per model
        described = {}
        for model_id in job.model_ids:
            try:
                described[model_id] = known_model(adapter, model_id).describe(model_id)
            except WorkerError as exc:
                described[model_id] = {"error": {"kind": exc.kind, "message": exc.message}}
        return {"models": described, "versions": adapter.versions()}
    if job.model_id is None:
        raise WorkerError("job", "describe job: neither model_id nor model_ids")
    derive = known_model(adapter, job.model_id)
    out = derive.describe(job.model_id)
    out["versions"] = adapter.versions()
    return out


def list_models(adapter: Adapter, job: ListJob, workdir: Path) -> dict:
    """The source's classifier ids (matching a shell-style or substring pattern, any case),
    each with its family, and the dataset its results are on where the source says (None
    where it does not: PaddleClas's and MindCV's registries are ImageNet-1k models)."""
    derive = importlib.import_module(adapter.derive_module)
    pattern = job.pattern.lower()
    ids = [i for i in derive.model_ids() if not pattern or pattern in i.lower()
           or fnmatch.fnmatch(i.lower(), pattern)]
    dataset = getattr(derive, "dataset", lambda _: None)
    return {"models": [{"model_id": i, "family": derive.family(i), "dataset": dataset(i)}
                       for i in ids],
            "versions": adapter.versions()}


def capture(adapter: Adapter, job: CaptureJob, workdir: Path) -> dict:
    """The source's own layer outputs on the job's images as one batch (the orchestrator
    sends several: a graph that holds the trace batch is right on one image alone), for
    verify/localize.py.

    Each hooked layer's output goes to its own .npy file as soon as the hook fires, so the
    worker never holds more than one layer's output beyond what the framework keeps."""
    entry, timer = job.entry, Timer()
    out_dir = workdir / "activations"
    out_dir.mkdir(parents=True, exist_ok=True)
    with timer.stage("build"):
        model = build_with_source(adapter, entry["model_id"], entry["num_classes"])
    with timer.stage("load"):
        adapter.load(model, Path(job.checkpoint), [], entry["num_classes"])
    # The form the pipeline exports (convert: for_inference before export), so that a fused
    # or re-parameterised layer is compared with its like: RepVGG's trained branches against
    # the exported branch_reparam conv would be a false "first diverging layer".
    form = adapter.for_inference(model)
    per_image, collate = adapter.transform(entry["preprocess"])
    inputs, used, unreadable = preprocess_all(job.images, per_image, collate, 1,
                                              _max_pixels(job))
    if inputs is None:
        raise WorkerError("preprocess", f"could not decode {unreadable[0]['path']}: "
                                        f"{unreadable[0]['error']}")
    _shapes_ok(inputs, len(used), entry)
    np.save(workdir / "inputs.npy", inputs)
    layers: list[dict] = []
    seen: dict[str, int] = {}

    def record(name: str, kind: str, weight_shape, output) -> None:
        calls = seen.get(name, 0)       # a layer called twice is recorded as name#2
        seen[name] = calls + 1
        array = np.ascontiguousarray(np.asarray(output, dtype=np.float32))
        file = f"{len(layers):05d}.npy"
        np.save(out_dir / file, array)
        layers.append({"name": name if not calls else f"{name}#{calls + 1}", "kind": kind,
                       "weight_shape": [int(d) for d in weight_shape or []],
                       "shape": list(array.shape), "file": f"activations/{file}"})

    with timer.stage("capture"):
        log(f"capturing {adapter.framework}'s layer outputs on {len(used)} image(s) at once")
        adapter.capture(model, inputs, record)
    log(f"captured {len(layers)} layer outputs")
    return {"versions": adapter.versions(), "layers": layers, "timings": timer.seconds,
            "files": {"inputs": "inputs.npy"}, "images_used": used, "source_form": form}


SHARD_GLOB = "shard_*.npz"


def write_shard(shard_dir: Path, number: int, **arrays) -> None:
    """shard_NNNNNN.npz, renamed into place only when complete (the reader never sees half)."""
    final = shard_dir / f"shard_{number:06d}.npz"
    tmp = shard_dir / f".{final.name}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, final)


def evaluate(adapter: Adapter, job: EvaluateJob, workdir: Path) -> dict:
    """Accuracy pass: the source's logits on every dataset image, streamed as shards.

    Each shard holds the preprocessed tensors, the source's logits and the images' positions,
    so the orchestrator runs ONNX Runtime on exactly the same tensors. At most
    `max_pending` wait on disk; the orchestrator deletes each shard once read.
    """
    entry, timer = job.entry, Timer()
    batch_size = job.batch_size
    shard_dir = workdir / job.batch_dir
    shard_dir.mkdir(parents=True, exist_ok=True)
    max_pending = job.max_pending
    with timer.stage("build"):
        model = build_with_source(adapter, entry["model_id"], entry["num_classes"])
    with timer.stage("load"):
        adapter.load(model, Path(job.checkpoint), [], entry["num_classes"])
    per_image, collate = adapter.transform(entry["preprocess"])
    images = job.images
    log(f"evaluating {len(images)} images, batch {batch_size}, "
        f"{_data_workers(job)} decode threads")
    stats, unreadable, shards = LoaderStats(), [], 0
    forward_s = backpressure_s = 0.0
    start = time.perf_counter()
    for batch in batches(images, per_image, collate, batch_size, _data_workers(job),
                         job.prefetch, stats, max_pixels=_max_pixels(job)):
        unreadable += batch.unreadable
        if batch.array is None:
            continue
        _shapes_ok(batch.array, len(batch.indices), entry)
        t0 = time.perf_counter()
        logits = np.asarray(adapter.forward(model, batch.array, batch_size), dtype=np.float32)
        forward_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        # At most max_pending batches wait for the orchestrator side. If it dies, the kernel
        # ends this process too (converters/runner.py starts workers with PR_SET_PDEATHSIG).
        while len(list(shard_dir.glob(SHARD_GLOB))) >= max_pending:
            time.sleep(0.01)
        backpressure_s += time.perf_counter() - t0
        write_shard(shard_dir, shards, inputs=batch.array, logits=logits,
                    indices=np.asarray(batch.indices, dtype=np.int64))
        shards += 1
    total = time.perf_counter() - start
    return {"versions": adapter.versions(), "shards": shards, "unreadable": unreadable,
            "loader": {**stats.as_dict(), "data_workers": _data_workers(job),
                       "batch_size": batch_size},
            "timings": {**timer.seconds, "evaluate": round(total, 3),
                        "forward": round(forward_s, 3),
                        "data_wait": round(stats.wait_s, 3),
                        "consumer_wait": round(backpressure_s, 3)}}


def bench(adapter: Adapter, job: BenchJob, workdir: Path) -> dict:
    """Data path alone vs source inference alone (random-init model: weights do not change
    speed), and an exported ONNX for the caller to time ONNX Runtime on the same batch."""
    entry = job.entry
    batch_size = job.batch_size
    images = job.images
    model = build_with_source(adapter, entry["model_id"], entry["num_classes"])
    per_image, collate = adapter.transform(entry["preprocess"])
    data = []
    first = None
    for workers in job.data_workers_list or [_data_workers(job)]:
        for _ in batches(images[:batch_size], per_image, collate, batch_size, workers):
            pass  # warm-up: imports, thread pool, decoder tables
        stats = LoaderStats()
        t0 = time.perf_counter()
        for batch in batches(images, per_image, collate, batch_size, workers, stats=stats):
            if first is None and batch.array is not None and len(batch.indices) == batch_size:
                first = batch.array
        seconds = time.perf_counter() - t0
        data.append({"data_workers": workers, "images": stats.images, "seconds": round(seconds, 3),
                     "images_per_s": round(stats.images / seconds, 2)})
        log(f"data path, {workers} decode threads: {stats.images / seconds:.1f} images/s")
    if first is None:
        raise WorkerError("preprocess", f"bench needs at least {batch_size} readable images")
    runs = max(1, job.inference_batches)
    # One warm-up run (graph compile for MindSpore).
    times = timed_runs(lambda: adapter.forward(model, first, batch_size), 1, runs)
    median = float(np.median(times))
    log(f"{adapter.framework} inference: {batch_size / median:.1f} images/s")
    np.save(workdir / "batch.npy", first)
    entry_export = entry["export"]
    adapter.export(model, first[:1], workdir / "bench.onnx", entry_export["opset"],
                   entry_export["dynamic_batch"], workdir)
    return {"versions": adapter.versions(), "data": data,
            "inference": {"framework": adapter.framework, "batch_size": batch_size,
                          "runs": runs, "median_s": round(median, 4),
                          "images_per_s": round(batch_size / median, 2),
                          "threads": int(os.environ["OMP_NUM_THREADS"])},
            "files": {"onnx": "bench.onnx", "batch": "batch.npy"}}


def latency(adapter: Adapter, job: LatencyJob, workdir: Path) -> dict:
    """The source framework's eval forward at each batch size (random-init weights: speed does
    not depend on their values), warm runs only."""
    entry = job.entry
    model = build_with_source(adapter, entry["model_id"], entry["num_classes"])
    rng = np.random.default_rng(0)
    rows = []
    for batch in job.batch_sizes:
        x = rng.standard_normal((batch, *entry["input_shape"])).astype(np.float32)
        times = timed_runs(lambda x=x, batch=batch: adapter.forward(model, x, batch),
                           job.warmup, job.runs)
        rows.append({"batch_size": batch, "times_s": [round(t, 6) for t in times]})
        log(f"{adapter.framework} batch {batch}: median {np.median(times) * 1000:.1f} ms")
    return {"versions": adapter.versions(), "rows": rows,
            "threads": int(os.environ["OMP_NUM_THREADS"])}


SENSITIVITY_IMAGES = 2


def rounding_sensitivity(adapter: Adapter, model, inputs: np.ndarray) -> dict:
    """How far the source's own logits move when every input value moves by one float32 ulp
    (its sign at random, seed 0), on the first SENSITIVITY_IMAGES images, both at that batch:
    the least rounding any other implementation differs by. A trained-like model moves by
    about what ONNX Runtime differs by (the demo models, measured: 2.2e-5 to 4.3e-5 on
    logits of about 1.6); one that amplifies it (a random-init deep
    ResNeSt here: 8,700 on logits of 11,000) cannot be matched by any float32 conversion
    within the logit limit, and the verify stage says so when its value check fails."""
    x = inputs[:SENSITIVITY_IMAGES]
    sign = np.random.default_rng(0).choice(np.array([-1.0, 1.0], dtype=np.float32), x.shape)
    nudged = np.nextafter(x, np.where(sign > 0, np.inf, -np.inf).astype(np.float32))
    base = np.asarray(adapter.forward(model, x, len(x)), dtype=np.float64)
    moved = np.asarray(adapter.forward(model, nudged, len(x)), dtype=np.float64)
    return {"images": int(len(x)), "max_abs_logit_change": float(np.abs(moved - base).max()),
            "max_abs_logit": float(np.abs(base).max()),
            "nudge": "each input value moved by one float32 ulp, its sign at random (seed 0)"}
