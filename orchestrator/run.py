"""One entry's stages, in order (each in orchestrator/stages/, one module per stage).

Per entry: fetch -> convert (worker: build, load, preprocess, reference logits, export) ->
simplify (onnx.checker + onnxsim) -> verify (ONNX Runtime vs the source's logits, the canary,
the deploy contract, the localiser on a failure) -> variants -> runtimes is one task
(`prepare_entry`), which can run on any node offering the source's environment and returns
the files it made as bytes. With --data, the accuracy gate follows as shard tasks
(orchestrator/accuracy.py). The driver (orchestrator/driver.py `run_all`) merges the shards;
`finish_entry` applies the gates, and writes, signs and names the artifact on the driver's
machine (stages/package.py): outputs never go through a shared filesystem. Every stage is
timed; whatever happens, the entry ends with a report that says which stage or check decided
it. Imports no deep-learning framework.
"""
from __future__ import annotations

import errno
import shutil
import time
import traceback
from dataclasses import replace
from pathlib import Path

from converters.protocol import PipelineError, Timer
from fetch.download import sha256_file
from manifests.loader import Entry
from orchestrator.accuracy import MergedAccuracy
from orchestrator.derive import needs_source
from orchestrator.runtimes import runtimes_line
from orchestrator.stages.accuracy import apply_accuracy
from orchestrator.stages.context import (CheckpointRef, EntryContext, EntryResult, Prepared,
                                         RunOptions, new_report)
from orchestrator.stages.convert import convert, derive
from orchestrator.stages.fetch import fetch_checkpoint, pick_inputs
from orchestrator.stages.package import decided_by, package
from orchestrator.stages.runtimes import runtimes_stage
from orchestrator.stages.simplify import simplify_stage
from orchestrator.stages.variants import build_variants, variants_report
from orchestrator.stages.verify import batch_held, deploy_stage, localize_stage, verify_stage
from orchestrator.workdir import hand_over, placed, run_dir
from verify.compare import Check, failed

# What the source itself cannot do (a config the preprocessing contract cannot express, an
# exporter or inference switch that refuses the model), at whichever stage the worker finds
# it: reported as `unsupported`, not as the pipeline's error.
UNSUPPORTED_KINDS = {"unsupported", "export"}


def prepare_entry(entry: Entry, all_entries: list[Entry], opts: RunOptions,
                  checkpoint: CheckpointRef, blob: bytes | None, header: str,
                  say=print, handoff: Path | None = None) -> Prepared:
    """The entry task: every stage up to the accuracy gate, on whichever node runs it.

    `handoff`: a folder of the driver's, given where the task runs in the driver's process
    (the local executor): the files it made are moved there and handed over as paths, so the
    model is not read into memory and written again; else (Ray) they travel back as bytes."""
    start = time.perf_counter()
    say(header)
    report = new_report(entry)
    timer = Timer()
    report.timings = timer.seconds
    out = Prepared(report)
    with run_dir(f"entry-{entry.name}", keep=opts.keep_work) as workdir:
        try:
            if needs_source(entry):
                with timer.stage("derive"):
                    entry, report.derived = derive(entry, opts, say)
                report.entry = out.entry = entry.data
            ctx = EntryContext(entry, all_entries, opts, report, timer, workdir, checkpoint,
                               blob, say)
            out.checks, variants, out.runnable = run_stages(ctx)
            for v in variants.values():
                path = v.pop("path")
                if v["passed"]:
                    v["sha256"], v["bytes"] = sha256_file(path), path.stat().st_size
                    v["onnx"] = hand_over(path, handoff)
            out.variants = variants
            if (workdir / "model.onnx").exists():   # not when the graph failed before it
                out.files["model.onnx"] = hand_over(workdir / "model.onnx", handoff)
        except PipelineError as exc:   # each stage's, named for it as it left (Timer.stage)
            status = "unsupported" if exc.kind in UNSUPPORTED_KINDS else "error"
            stage = exc.stage or timer.current
            report.fail(stage, exc.kind, exc.message, exc.details, status=status)
            say(f"  {status.upper():<9} [{stage}/{exc.kind}] {exc.message}")
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure must not stop the run
            kind, message = _unforeseen(exc, workdir)
            report.fail(timer.current, kind, message,
                        {"traceback": traceback.format_exc(limit=20)})
            report.decide("error", f"{timer.current}: {kind.replace('_', ' ')}")
            say(f"  ERROR     [{timer.current}/{kind}] {message}")
        log = workdir / "worker.log"
        if log.exists():
            out.files["worker.log"] = hand_over(log, handoff)
        if opts.keep_work:
            say(f"  work dir  kept at {workdir}")
    out.seconds = time.perf_counter() - start
    return out


def _unforeseen(exc: Exception, workdir: Path) -> tuple[str, str]:
    """The kind and message of an exception that is no PipelineError: `disk_full`
    for a full disk (a zoo sweep's models once filled this machine's, and every later entry
    failed as an internal error at whatever file it was writing), else `internal`."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(workdir if workdir.exists() else workdir.parent).free
        return "disk_full", (f"no space left on the device writing {exc.filename or 'a file'} "
                             f"({free / 2**20:.0f} MiB free where the work directory "
                             f"{workdir} is); free some, or set MODEL_CONVERT_WORK to a "
                             "larger disk")
    return "internal", f"{type(exc).__name__}: {exc}"


def run_stages(ctx: EntryContext) -> tuple[list[Check], dict[str, dict], bool]:
    """fetch -> convert -> simplify -> verify -> variants -> runtimes; fills the report,
    returns the checks, the variants and whether the ONNX model is fit for the accuracy gate.

    A dynamic-batch entry whose exporter cannot write a dynamic batch (it raises: PaddleClas
    MobileViTV3's F.fold asserts on a batch of -1), or writes a graph that holds the batch
    it traced (a failed batch check), is exported again at a fixed batch 1 and gated as
    such (export.fixed_batch_fallback, on by default): report['onnx']['batch'] says so and
    why, the contract's input says batch 1, and every check runs one image at a time."""
    export = ctx.entry["export"]
    if not (export["dynamic_batch"] and export.get("fixed_batch_fallback", True)):
        return _stages(ctx)
    try:
        checks, variants, runnable = _stages(ctx, batch_fallback=True)
    except PipelineError as exc:
        if (exc.stage, exc.kind) != ("convert", "export"):
            raise
        first, why = exc, {"stage": "convert", "error": exc.message[:600]}
    else:
        held = batch_held(checks)
        if held is None:
            return checks, variants, runnable
        first, why = None, {"check": held.as_dict()}
    reason = " ".join((why.get("error") or why["check"]["detail"]).split())
    ctx.say(f"  batch     no dynamic-batch model ({reason[:160]}): exporting at a fixed batch 1")
    fixed = replace(ctx.entry, data={**ctx.entry.data,
                                     "export": {**export, "dynamic_batch": False}})
    try:
        checks, variants, runnable = _stages(replace(ctx, entry=fixed))
    except PipelineError as again:
        if first is None:
            raise
        # it fails at a fixed batch too: the entry's own error stands, with the second's
        said = next((ln for ln in again.message.splitlines() if ln.strip()), "")[:300]
        raise PipelineError(first.kind, f"{first.message}\nexported at a fixed batch 1 "
                            f"instead: {again.stage}/{again.kind}: {said}", first.details,
                            stage=first.stage) from None
    ctx.report.onnx["batch"] = {
        "fixed": 1, "dynamic_batch_tried": why,
        "note": "exported at a fixed batch 1: the dynamic-batch export failed; runtimes take "
                "one image per run"}
    ctx.report.warn(
        "fixed batch 1: " + ("the exporter refused a dynamic batch" if first is not None else
                             "the dynamic-batch graph held its traced batch")
        + " (report: onnx.batch)")
    return checks, variants, runnable


def _stages(ctx: EntryContext, batch_fallback: bool = False
            ) -> tuple[list[Check], dict[str, dict], bool]:
    """run_stages once, at the entry's export settings; with `batch_fallback`, it stops
    after verify when the batch check failed (the fixed-batch export follows)."""
    got = fetch_checkpoint(ctx)
    images, calibration = pick_inputs(ctx)
    result = convert(ctx, got, images, calibration)
    simp = simplify_stage(ctx, result)
    if simp.finding is not None:
        return [simp.finding], {}, False
    checks, logits, inputs, reference = verify_stage(ctx, result, simp)
    if batch_fallback and batch_held(checks):
        return checks, {}, False
    if "simplified" in logits:   # the model passed its signature checks and ran
        checks += deploy_stage(ctx, result, images, inputs, reference, simp.path)
    localize_stage(ctx, checks, got.path, images, simp)

    runnable = not any(not c.passed and c.name in ("opset", "io_names", "io_shapes")
                       for c in checks)
    variants = {}
    if runnable and len(ctx.opts.precisions) > 1:
        files = result["files"]
        variants = build_variants(ctx, simp.path, inputs, reference,
                                  ctx.workdir / files["calibration"]
                                  if "calibration" in files else None)
    if runnable and "simplified" in logits:
        checks += runtimes_stage(ctx, simp.path, variants, inputs, reference)
    return checks, variants, runnable


def finish_entry(entry: Entry, prepared: Prepared, opts: RunOptions, workdir: Path,
                 accuracy: MergedAccuracy | None = None,
                 accuracy_error: PipelineError | None = None,
                 inputs: dict | None = None, say=print) -> EntryResult:
    """On the driver: apply the accuracy gate, decide, write (and sign) the artifact."""
    report, checks, variants = prepared.report, list(prepared.checks), prepared.variants
    if inputs is not None:
        report.inputs = inputs
    files: dict[str, Path] = {}
    for name, data in prepared.files.items():
        files[name] = placed(data, workdir / name)
    if report.status is None and accuracy_error is not None:
        report.fail(accuracy_error.stage, accuracy_error.kind, accuracy_error.message,
                    accuracy_error.details, status="error")
        say(f"  ERROR     [{accuracy_error.stage}/{accuracy_error.kind}] "
            f"{accuracy_error.message}")
    artifact_files: dict[str, Path] = {}
    if report.status is None:
        if accuracy is not None:
            checks = apply_accuracy(report, checks, variants, accuracy, say)
        report.checks = [c.as_dict() for c in checks]
        passed = bool(checks) and not failed(checks)
        if variants:
            report.variants = variants_report(variants, passed)
            for precision, v in report.variants.items():
                if "file" in v:
                    artifact_files[v["file"]] = placed(variants[precision]["onnx"],
                                                       workdir / v["file"])
        decided = decided_by(checks, passed, report.accuracy, report.warnings)
        say(f"  verify    {'all checks passed' if passed else 'FAILED'}: {decided}")
        report.decide("passed" if passed else "failed", decided)
        if passed:
            artifact_files["model.onnx"] = files["model.onnx"]
    report.timings["total"] = round(prepared.seconds + report.timings.get("accuracy", 0.0), 3)
    package(entry, report, artifact_files, files, workdir, opts, say)
    return EntryResult(entry.name, report.status, report.decided_by, report.timings["total"],
                       runtimes_line(report.runtimes or {}))
