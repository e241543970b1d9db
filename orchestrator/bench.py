"""`pipeline.py bench`: the source framework, ONNX Runtime and OpenVINO (each shipped
precision) on the same machine in the same run: median and p90 latency and images/s over warm
runs.

The source runs in its worker (eval mode, no grad; MindCV in graph mode, as the pipeline runs
it), with random-init weights (speed does not depend on their values); ONNX Runtime runs the
artifact's model files. Threads: all cores unless --threads.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from converters.registry import SOURCES, unavailable_reason
from converters.runner import WorkerFailed, run_worker
from converters.protocol import LatencyJob, timed_runs
from manifests.loader import Entry

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


class BenchError(Exception):
    pass


def _stats(times: list[float], batch: int) -> dict:
    median = float(np.median(times))
    return {"median_ms": round(median * 1000, 3),
            "p90_ms": round(float(np.percentile(times, 90)) * 1000, 3),
            "images_per_s": round(batch / median, 2), "runs": len(times)}


def providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
              if p in available]
    if not wanted:
        raise BenchError(f"--device cuda: this onnxruntime has no CUDA provider (available: "
                         f"{', '.join(available)}); install onnxruntime-gpu")
    return [*wanted, "CPUExecutionProvider"]


def ort_latency(path: Path, batch_sizes: list[int], input_shape: list[int], threads: int,
                device: str, warmup: int, runs: int) -> tuple[list[dict], str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=providers(device))
    used = session.get_providers()[0]
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        times = timed_runs(lambda x=x: session.run(None, {name: x}), warmup, runs)
        rows.append({"batch_size": batch, **_stats(times, batch)})
    return rows, f"onnxruntime {ort.__version__} {used.replace('ExecutionProvider', '')}"


def ov_latency(path: Path, batch_sizes: list[int], input_shape: list[int], threads: int,
               warmup: int, runs: int) -> tuple[list[dict], str]:
    """OpenVINO CPU, one compiled model, as verify/ov_runner.py runs it."""
    from verify.ov_runner import OpenVinoRunner

    runner = OpenVinoRunner(path, threads)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
        times = timed_runs(lambda x=x: runner.request.infer({0: x}), warmup, runs)
        rows.append({"batch_size": batch, **_stats(times, batch)})
    return rows, f"openvino {runner.version} CPU"


def run_bench(entry: Entry, artifact: Path, batch_sizes: list[int], precisions: list[str],
              device: str, threads: int | None, warmup: int, runs: int, say=print) -> dict:
    threads = threads or os.cpu_count() or 1
    missing = [FILES[p] for p in precisions if not (artifact / FILES[p]).is_file()]
    if missing:
        raise BenchError(
            f"{artifact} has no {', '.join(missing)}: convert first, e.g. `make convert "
            f"MODEL={entry.name} PRECISIONS={','.join(precisions)} OUT={artifact.parent}`")
    from converters.simplify import graph_batch

    held = graph_batch(artifact / FILES[precisions[0]])
    if held and batch_sizes != [held]:
        # exported at a fixed batch (report['onnx']['batch']): it runs at that batch only
        say(f"  the model holds a fixed batch {held}: timed at batch {held} only "
            f"(asked {batch_sizes})")
        batch_sizes = [held]
    rows: list[dict] = []
    spec = SOURCES[entry.source]
    reason = unavailable_reason(spec)
    if reason:
        say(f"  source framework skipped: {reason}")
    else:
        say(f"  {spec.framework}: eval forward at batch {batch_sizes} ...")
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            try:
                result = run_worker(spec, LatencyJob(entry=entry.data,
                                                     batch_sizes=batch_sizes, warmup=warmup,
                                                     runs=runs, threads=threads), Path(tmp))
            except WorkerFailed as exc:
                raise BenchError(f"{spec.framework} worker: [{exc.kind}] {exc.message}") from None
        runtime = (f"{spec.framework} (" + ", ".join(
            f"{k} {v}" for k, v in result["versions"].items()
            if k in ("torch", "paddlepaddle", "mindspore", "mode")) + ")")
        for row in result["rows"]:
            rows.append({"model": entry.name, "batch_size": row["batch_size"],
                         "precision": "fp32", "runtime": runtime, "device": "cpu",
                         **_stats(row["times_s"], row["batch_size"])})
    for precision in precisions:
        say(f"  onnxruntime {precision} ({FILES[precision]}) ...")
        ort_rows, runtime = ort_latency(artifact / FILES[precision], batch_sizes,
                                        entry["input_shape"], threads, device, warmup, runs)
        rows += [{"model": entry.name, "batch_size": r.pop("batch_size"),
                  "precision": precision, "runtime": runtime, "device": device, **r}
                 for r in ort_rows]
        if device == "cpu":
            say(f"  openvino {precision} ({FILES[precision]}) ...")
            ov_rows, runtime = ov_latency(artifact / FILES[precision], batch_sizes,
                                          entry["input_shape"], threads, warmup, runs)
            rows += [{"model": entry.name, "batch_size": r.pop("batch_size"),
                      "precision": precision, "runtime": runtime, "device": "cpu", **r}
                     for r in ov_rows]
    rows.sort(key=lambda r: (r["batch_size"], RUNTIME_ORDER.get(_family(r), 0),
                             list(FILES).index(r["precision"])))
    report = artifact / "report.json"
    return {"model": entry.name, "artifact": str(artifact),
            "artifact_sha256": (json.loads(report.read_text()).get("onnx", {}).get("sha256")
                                if report.is_file() else None),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "cpu_flags": _cpu_flags()},
            "threads": threads, "warmup": warmup, "runs": runs, "rows": rows,
            "ratios": _ratios(rows)}


def _cpu_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split()
    except (OSError, IndexError):
        return []
    return sorted(f for f in flags if f.startswith(("avx512", "avx_vnni", "amx")))


RUNTIME_ORDER = {"onnxruntime": 1, "openvino": 2}   # the source framework first


def _family(row: dict) -> str:
    name = row["runtime"].split()[0]
    return name if name in RUNTIME_ORDER else "source"


def _ratios(rows: list[dict]) -> list[dict]:
    """Per batch size: ONNX Runtime fp32 vs source, each variant vs ONNX Runtime fp32, and
    OpenVINO vs ONNX Runtime at each precision."""
    out = []
    for batch in sorted({r["batch_size"] for r in rows}):
        at = {(_family(r), r["precision"]): r["images_per_s"]
              for r in rows if r["batch_size"] == batch}
        ort32 = at.get(("onnxruntime", "fp32"))
        entry = {"batch_size": batch}
        if ort32 and at.get(("source", "fp32")):
            entry["onnxruntime_fp32_vs_source"] = round(ort32 / at[("source", "fp32")], 2)
        for precision in ("fp16", "int8"):
            if ort32 and at.get(("onnxruntime", precision)):
                entry[f"{precision}_vs_onnxruntime_fp32"] = round(
                    at[("onnxruntime", precision)] / ort32, 2)
        for precision in FILES:
            ours, theirs = at.get(("openvino", precision)), at.get(("onnxruntime", precision))
            if ours and theirs:
                entry[f"openvino_{precision}_vs_onnxruntime_{precision}"] = round(
                    ours / theirs, 2)
        out.append(entry)
    return out


def format_table(result: dict) -> str:
    head = f"{'model':<20} {'batch':>5} {'precision':<9} {'runtime':<44} {'FPS':>9} " \
           f"{'median ms':>10} {'p90 ms':>9}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(f"{r['model']:<20} {r['batch_size']:>5} {r['precision']:<9} "
                     f"{r['runtime'][:44]:<44} {r['images_per_s']:>9.1f} {r['median_ms']:>10.1f} "
                     f"{r['p90_ms']:>9.1f}")
    for ratio in result["ratios"]:
        parts = [f"{k.replace('_', ' ')} {v}x" for k, v in ratio.items() if k != "batch_size"]
        if parts:
            lines.append(f"batch {ratio['batch_size']}: " + "; ".join(parts))
    return "\n".join(lines)
