"""Run one manifest entry through every stage. Imports no deep-learning framework.

fetch -> convert (worker: build, load, preprocess, reference logits, export) -> simplify
(onnx.checker + onnxsim) -> verify (ONNX Runtime vs the source's logits) -> artifact.
Every stage is timed; whatever happens, the entry ends with a report that says which stage
or check decided it.
"""
from __future__ import annotations

import datetime as dt
import functools
import shutil
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters.protocol import Timer
from converters.registry import REPO_ROOT, SOURCES, unavailable_reason
from converters.runner import WorkerFailed, run_worker
from converters.simplify import OnnxCheckFailed, check, simplify
from converters.variants import VariantFailed, make_fp16, make_int8
from fetch.download import FetchError, Fetched, fetch, local_checkpoint, sha256_file
from manifests.loader import Entry
from orchestrator.accuracy import AccuracyFailed, Selection, evaluate_accuracy
from release.artifact import write_artifact
from release.provenance import build_provenance
from release.signing import SIGNATURE, SigningError, sign_directory
from verify.compare import Check, check_signature, compare_logits, compare_variant, failed
from verify.dataset import spread_pick, spread_subset
from verify.images import generate_images
from verify.ort_runner import OrtRunner

@dataclass
class RunOptions:
    out_dir: Path
    cache_dir: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    data: Selection | None = None     # --data (+ --limit): logit-check images and accuracy
    threads: int | None = None
    data_workers: int | None = None   # decode threads in the worker (default: all cores)
    keep_work: bool = False
    worker_timeout: float = 3600.0
    signing_key: Path | None = None   # EC private key (PEM); passed artifacts get model.sig
    signing_key_id: str | None = None
    precisions: tuple[str, ...] = ("fp32",)   # fp32 always; fp16 / int8 variants on request


@dataclass
class EntryResult:
    name: str
    status: str            # passed | failed | error | unavailable
    decided_by: str        # the figure or cause that decided the status
    seconds: float


class StageError(Exception):
    def __init__(self, stage: str, kind: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.stage, self.kind, self.message, self.details = stage, kind, message, details or {}


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The project's commit (+dirty), asked once per run."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 \
            else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pick_images(entry: Entry, opts: RunOptions, workdir: Path) -> tuple[list[Path], dict]:
    """The logit check's images: generated, or spread over the evaluated dataset images."""
    count, seed = entry["verify"]["images"], entry["verify"]["seed"]
    if opts.data is None:
        paths = generate_images(workdir / "images", count, seed)
        return paths, {"kind": "generated", "count": count, "seed": seed}
    positions = opts.data.positions
    picks = [opts.data.dataset.paths[positions[i]]
             for i in spread_pick(count, len(positions))]
    return picks, {"kind": "data", "dir": str(opts.data.dataset.root), "count": len(picks),
                   "available": len(positions)}


def pick_calibration(entry: Entry, opts: RunOptions, workdir: Path) -> tuple[list[Path], dict]:
    """int8 calibration images: spread over the classes of --data, else generated."""
    count = entry["variants"]["int8"]["calibration_images"]
    if opts.data is None:
        seed = entry["verify"]["seed"] + 1000   # not the logit check's images
        return (generate_images(workdir / "calibration", count, seed),
                {"kind": "generated", "count": count, "seed": seed,
                 "note": "no --data: calibrated on generated images, not ImageNet"})
    dataset, positions = opts.data.dataset, opts.data.positions
    chosen = [positions[i] for i in
              spread_subset([dataset.labels[p] for p in positions], count)]
    return [dataset.paths[p] for p in chosen], {
        "kind": "data", "dir": str(dataset.root), "count": len(chosen),
        "classes": len({dataset.labels[p] for p in chosen})}


def _build_variants(entry: Entry, opts: RunOptions, simplified: Path, workdir: Path,
                    inputs: np.ndarray, reference: np.ndarray, calibration: Path | None,
                    timer: Timer, say) -> dict[str, dict]:
    """fp16 / int8 from the simplified fp32 model, each checked against the source's logits.
    A variant that fails is reported and not shipped; it never fails the fp32 entry."""
    results: dict[str, dict] = {}
    for precision in (p for p in opts.precisions if p != "fp32"):
        path = workdir / f"model.{precision}.onnx"
        gates = entry["variants"][precision]
        scope = {"model": precision, "batch": len(inputs)}
        result: dict = {"passed": False, "checks": [], "error": None}
        with timer.stage(f"variant_{precision}"):
            try:
                if precision == "fp16":
                    result["build"] = make_fp16(simplified, path)
                else:
                    result["build"] = make_int8(simplified, path, np.load(calibration), gates)
                info = check(path)
                checks = check_signature(info, entry["num_classes"], entry["input_shape"],
                                         entry["export"]["dynamic_batch"], scope)
                if not failed(checks):
                    out = OrtRunner(path, opts.threads).infer(inputs, len(inputs))
                    checks += compare_variant(reference, out, gates, scope)
                result["checks"] = checks
                result["passed"] = not failed(checks)
            except (VariantFailed, OnnxCheckFailed) as exc:
                result["error"] = str(exc)
        result["path"] = path
        results[precision] = result
        say(f"  {precision:<9} {_variant_line(result)}")
    return results


def _variant_line(result: dict) -> str:
    if result["error"]:
        return f"NOT SHIPPED: {result['error']}"
    by = {c.name: c for c in result["checks"]}
    bad = failed(result["checks"])
    figures = ", ".join(f"{n} {_fmt(by[n].measured)}" for n in ("cosine_min", "top1_agreement",
                                                                 "top1_drop") if n in by)
    if bad:
        c = bad[0]
        return (f"NOT SHIPPED: {c.name} {_fmt(c.measured)} vs limit {_fmt(c.limit)}"
                f" ({figures})")
    return f"passed: {figures}"


def _candidates(entry: Entry, all_entries: list[Entry]) -> list[dict]:
    """Other entries of the same source, for naming the one a mismatched checkpoint fits."""
    return [{"name": e.name, "model_id": e["model_id"], "num_classes": e["num_classes"]}
            for e in all_entries if e.source == entry.source and e.name != entry.name]


def _checkpoint_report(got: Fetched) -> dict:
    return {"url": got.url, "path": str(got.path), "sha256": got.sha256, "bytes": got.bytes,
            "pinned": got.pinned, "digest_check": got.digest_check,
            "downloaded": got.downloaded}


def _verify(entry: Entry, models: dict[str, tuple[Path, dict]], inputs: np.ndarray,
            reference: np.ndarray, threads: int | None) -> tuple[list[Check], dict]:
    """Signature and logit checks for each ONNX model (path, describe() info from the
    simplify stage's onnx.checker pass), at the full batch and at batch 1."""
    tol = entry["tolerances"]
    batch_sizes = sorted({len(inputs), 1}, reverse=True)
    checks: list[Check] = []
    figures: dict = {"batch_sizes": batch_sizes}
    for label, (path, info) in models.items():
        sig = check_signature(info, entry["num_classes"], entry["input_shape"],
                              entry["export"]["dynamic_batch"], {"model": label},
                              opset=entry["export"]["opset"])
        checks += sig
        if failed(sig):
            continue
        runner = OrtRunner(path, threads)
        figures["onnxruntime"] = runner.version
        outs = {bs: runner.infer(inputs, bs) for bs in batch_sizes}
        # The worst batch size decides each check, so report the worst per check name.
        per_check: dict[str, Check] = {}
        for bs, out in outs.items():
            for c in compare_logits(reference, out, tol, {"model": label, "batch": bs}):
                prev = per_check.get(c.name)
                if prev is None or _worse(c, prev):
                    per_check[c.name] = c
        for c in per_check.values():
            c.scope = {"model": label, "batch_sizes": batch_sizes,
                       "worst_batch": c.scope.get("batch")}
        checks += per_check.values()
    return checks, figures


def _worse(a: Check, b: Check) -> bool:
    if a.passed != b.passed:
        return not a.passed
    if a.name == "max_abs_diff":
        return a.measured > b.measured
    if isinstance(a.measured, (int, float)) and isinstance(b.measured, (int, float)):
        return a.measured < b.measured
    return False


def _decided_by(checks: list[Check], passed: bool, accuracy: dict | None = None) -> str:
    bad = failed(checks)
    if bad:
        c = bad[0]
        return f"{c.name} ({c.scope.get('model', '')}) {_fmt(c.measured)} vs limit {_fmt(c.limit)}"
    worst = max((c for c in checks if c.name == "max_abs_diff"), key=lambda c: c.measured,
                default=None)
    text = (f"max|diff| {_fmt(worst.measured)} <= {_fmt(worst.limit)}" if worst and passed
            else "no logit check ran")
    if accuracy:
        text += (f"; top-1 source {accuracy['source']['top1']:.2f}% / ONNX "
                 f"{accuracy['onnx']['top1']:.2f}% ({accuracy['source']['images']} images)")
    return text


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _run_stages(entry: Entry, all_entries: list[Entry], opts: RunOptions, report: dict,
                timer: Timer, workdir: Path, say) -> list[Check]:
    """fetch -> convert -> simplify -> verify; fills `report`, returns the checks."""
    spec = SOURCES[entry.source]
    with timer.stage("fetch"):
        try:
            if entry.name in opts.checkpoints:
                got = local_checkpoint(opts.checkpoints[entry.name], entry["checkpoint"])
            else:
                got = fetch(entry["checkpoint"], opts.cache_dir)
        except FetchError as exc:
            raise StageError("fetch", exc.kind, exc.message) from None
        report["source"]["checkpoint"] = _checkpoint_report(got)
        pin = ("the pinned file" if got.pinned else
               "digest not published" if got.digest_check == "unpublished" else
               "NOT the pinned file")
        say(f"  fetch     {got.path.name}: sha256 {got.sha256[:12]}..., {pin}")

    with timer.stage("images"):
        images, image_info = pick_images(entry, opts, workdir)
        calibration, calibration_info = (pick_calibration(entry, opts, workdir)
                                         if "int8" in opts.precisions else ([], None))
    report["verification"] = {"images": image_info}
    if calibration_info:
        report["verification"]["int8_calibration"] = calibration_info

    with timer.stage("convert"):
        say(f"  convert   {spec.framework} worker: build, load, preprocess, export ...")
        try:
            result = run_worker(spec, {
                "entry": entry.data, "checkpoint": str(got.path),
                "images": [str(p) for p in images],
                "candidates": _candidates(entry, all_entries),
                "calibration_images": [str(p) for p in calibration],
                "threads": opts.threads, "batch_size": len(images),
            }, workdir, timeout=opts.worker_timeout)
        except WorkerFailed as exc:
            raise StageError("convert", exc.kind, exc.message, exc.details) from None
    report["source"]["versions"] = result["versions"]
    if result.get("unreadable"):
        report["verification"]["images"]["unreadable"] = result["unreadable"]
        report["verification"]["images"]["count"] = len(result["images_used"])
    report["source"]["checkpoint"].update(result.get("checkpoint", {}))
    report["timings"]["worker"] = result.get("timings", {})
    if result.get("export_fixups"):
        report["source"]["export_fixups"] = result["export_fixups"]
        for note in result["export_fixups"]:
            say(f"  fix-up    {note}")
    if result.get("checkpoint", {}).get("demo"):
        report["source"]["checkpoint"]["note"] = (
            "DEMO checkpoint: seeded random init made by the pipeline, not trained weights")
        say("  note      this is a demo checkpoint (random init), not trained weights")
    say("  convert   done in " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                           result.get("timings", {}).items()))

    exported = workdir / result["files"]["onnx"]
    simplified = workdir / "model.onnx"
    with timer.stage("simplify"):
        try:
            before = check(exported)
            tol = entry["tolerances"]
            after = simplify(exported, simplified, [2, *entry["input_shape"]],
                             atol=tol["atol"], rtol=tol["rtol"])
        except OnnxCheckFailed as exc:
            raise StageError("simplify", exc.kind, exc.message) from None
    report["onnx"] = {
        "opset": after["opset"], "nodes_exported": before["nodes"],
        "nodes_simplified": after["nodes"], "inputs": after["inputs"],
        "outputs": after["outputs"], "sha256": sha256_file(simplified),
        "bytes": simplified.stat().st_size, "onnxsim_check": after["onnxsim_check"]}
    say(f"  simplify  onnx.checker ok; onnxsim {before['nodes']} -> {after['nodes']} nodes")

    with timer.stage("verify"):
        inputs = np.load(workdir / result["files"]["inputs"])
        reference = np.load(workdir / result["files"]["reference_logits"])
        checks, figures = _verify(entry, {"exported": (exported, before),
                                          "simplified": (simplified, after)},
                                  inputs, reference, opts.threads)
        report["verification"].update(figures)

    runnable = not any(not c.passed and c.name in ("opset", "io_names", "io_shapes")
                       for c in checks)
    variants = {}
    if runnable and len(opts.precisions) > 1:
        calibration = (workdir / result["files"]["calibration"]
                       if "calibration" in result["files"] else None)
        variants = _build_variants(entry, opts, simplified, workdir, inputs, reference,
                                   calibration, timer, say)
    if opts.data is not None and runnable:
        with timer.stage("accuracy"):
            say(f"  accuracy  {len(opts.data.positions)} images, {spec.framework} and ONNX "
                f"Runtime on the same {entry['preprocess']['pipeline']}-preprocessed tensors")
            try:
                acc_checks, accuracy, per_variant = evaluate_accuracy(
                    entry, opts.data, got.path, simplified, workdir, got.pinned, opts.threads,
                    opts.data_workers, opts.worker_timeout,
                    variants={p: v["path"] for p, v in variants.items() if v["passed"]})
            except AccuracyFailed as exc:
                raise StageError("accuracy", exc.kind, exc.message, exc.details) from None
        report["accuracy"] = accuracy
        checks += acc_checks
        for precision, (drop, figures) in per_variant.items():
            variants[precision]["checks"].append(drop)
            variants[precision]["accuracy"] = figures
            variants[precision]["passed"] = not failed(variants[precision]["checks"])
            say(f"  {precision:<9} top-1/top-5 {figures['top1']:.2f}/{figures['top5']:.2f}; "
                f"{_variant_line(variants[precision])}")
        src, onx = accuracy["source"], accuracy["onnx"]
        say(f"  accuracy  source top-1/top-5 {src['top1']:.2f}/{src['top5']:.2f}, ONNX "
            f"{onx['top1']:.2f}/{onx['top5']:.2f} on {src['images']} images; "
            f"{accuracy['disagree']} disagree; {accuracy['unreadable']} unreadable; "
            f"{accuracy['throughput']['images_per_s']} images/s")
    return checks, variants


def _variants_report(variants: dict[str, dict], shipped: bool) -> dict:
    """report['variants']: per precision, whether it ships, its file, checks, build info."""
    out = {}
    for precision, v in variants.items():
        entry = {"passed": v["passed"],
                 "checks": [c.as_dict() for c in v["checks"]],
                 "build": v.get("build"), "error": v["error"]}
        if v.get("accuracy"):
            entry["accuracy"] = v["accuracy"]
        if entry["passed"] and shipped:
            entry["file"] = f"model.{precision}.onnx"
            entry["sha256"] = sha256_file(v["path"])
            entry["bytes"] = v["path"].stat().st_size
        elif not entry["passed"]:
            bad = failed(v["checks"])
            entry["why"] = (v["error"] or
                            f"{bad[0].name} {_fmt(bad[0].measured)} vs limit {_fmt(bad[0].limit)}"
                            "; not written (the fp32 model is unaffected)")
        out[precision] = entry
    return out


def _write_passed(entry: Entry, report: dict, files: dict[str, Path], opts: RunOptions) -> Path:
    """model.onnx + report.json + provenance.json, signed in staging when a key is given."""
    report["signature"] = ({"file": SIGNATURE, "public_key_sha256": opts.signing_key_id}
                           if opts.signing_key else None)
    provenance = build_provenance(report, opts.signing_key_id)
    finalize = ((lambda staging: sign_directory(staging, opts.signing_key))
                if opts.signing_key else None)
    return write_artifact(opts.out_dir, entry.name, report, files,
                          documents={"provenance.json": provenance}, finalize=finalize)


def convert_entry(entry: Entry, all_entries: list[Entry], opts: RunOptions,
                  say=print) -> EntryResult:
    start = time.perf_counter()
    spec = SOURCES[entry.source]
    reason = unavailable_reason(spec)
    if reason:
        say(f"  skipped: {reason}")
        return EntryResult(entry.name, "unavailable", reason, 0.0)

    report: dict = {
        "name": entry.name, "passed": False,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pipeline": {"git_commit": git_commit()},
        "entry": entry.data,
        "source": {"framework": entry.source, "model_id": entry["model_id"]},
        "checks": [], "timings": {}, "error": None,
    }
    timer = Timer()
    timings = report["timings"] = timer.seconds
    workdir = Path(tempfile.mkdtemp(prefix=f"convert-{entry.name}-"))
    files: dict[str, Path] = {}
    try:
        try:
            checks, variants = _run_stages(entry, all_entries, opts, report, timer, workdir,
                                           say)
            report["checks"] = [c.as_dict() for c in checks]
            report["passed"] = bool(checks) and not failed(checks)
            if variants:
                report["variants"] = _variants_report(variants, report["passed"])
                for precision, v in report["variants"].items():
                    if "file" in v:
                        files[v["file"]] = variants[precision]["path"]
            decided = _decided_by(checks, report["passed"], report.get("accuracy"))
            say(f"  verify    {'all checks passed' if report['passed'] else 'FAILED'}: "
                f"{decided}")
            status = "passed" if report["passed"] else "failed"
            if report["passed"]:
                files["model.onnx"] = workdir / "model.onnx"
        except StageError as exc:
            report["error"] = {"stage": exc.stage, "kind": exc.kind, "message": exc.message,
                               "details": exc.details}
            status, decided = "error", f"{exc.stage}: {exc.kind}"
            say(f"  ERROR     [{exc.stage}/{exc.kind}] {exc.message}")
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure must not stop the run
            report["error"] = {"stage": timer.current, "kind": "internal",
                               "message": f"{type(exc).__name__}: {exc}",
                               "details": {"traceback": traceback.format_exc(limit=20)}}
            status, decided = "error", f"{timer.current}: internal error"
            say(f"  ERROR     [{timer.current}/internal] {type(exc).__name__}: {exc}")
        report["decided_by"] = decided
        timings["total"] = round(time.perf_counter() - start, 3)
        if report["passed"]:
            try:
                artifact = _write_passed(entry, report, files, opts)
                if opts.signing_key:
                    say(f"  sign      {artifact / 'model.sig'} (key {opts.signing_key_id[:12]})")
            except SigningError as exc:  # fail closed: no unsigned model when signing was asked
                report["passed"] = False
                report["error"] = {"stage": "sign", "kind": "signing", "message": str(exc),
                                   "details": {}}
                status, decided = "error", "sign: signing"
                report["decided_by"] = decided
                files.clear()  # nothing unsigned ships: no fp32 model, no variant
                say(f"  ERROR     [sign/signing] {exc}")
        if not report["passed"]:
            if (workdir / "worker.log").exists():
                files["worker.log"] = workdir / "worker.log"
            write_artifact(opts.out_dir, entry.name, report, files)
    finally:
        if opts.keep_work:
            say(f"  work dir  kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return EntryResult(entry.name, status, decided, timings["total"])
