"""Run manifest entries through every stage, on one machine or a Ray cluster.

Per entry: fetch -> convert (worker: build, load, preprocess, reference logits, export) ->
simplify (onnx.checker + onnxsim) -> verify (ONNX Runtime vs the source's logits) -> variants
is one task (`prepare_entry`), which can run on any node offering the source's environment
and returns the files it made as bytes. With --data, the accuracy gate follows as shard tasks
(orchestrator/accuracy.py). The driver (orchestrator/driver.py `run_all`) merges the shards;
`finish_entry` applies the gates, and writes, signs and names the artifact on the driver's
machine: outputs never go through a shared filesystem. Every stage is timed; whatever
happens, the entry ends with a report that says which stage or check decided it. Imports
no deep-learning framework.
"""
from __future__ import annotations

import datetime as dt
import functools
import subprocess
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from converters.protocol import PipelineError, Timer
from converters.registry import REPO_ROOT, SOURCES
from converters.runner import WorkerFailed, WorkerLimits, run_worker
from converters.simplify import (RETRIES, OnnxCheckFailed, check, optimizer_setting,
                                simplify)
from converters.variants import VariantFailed, int8_tensor_errors, make_fp16, make_int8
from fetch.download import (FetchError, Fetched, fetch, local_checkpoint, materialize,
                            sha256_file)
from manifests.loader import Entry
from orchestrator.accuracy import (Selection)
from orchestrator.deploy import deploy_gate
from orchestrator.derive import DeriveFailed, needs_source, resolve
from orchestrator.localize import LOCALIZE_IMAGES, VALUE_CHECKS, LocalizeFailed, localize_model
from orchestrator.runtimes import runtime_matrix, runtimes_line
from orchestrator.workdir import run_dir
from release.artifact import write_artifact
from release.deployable import make_deployable
from release.provenance import build_provenance
from release.signing import SIGNATURE, SigningError, sign_directory
from verify.batch import batch_check, refused_at_another_batch
from verify.canary import canary_check
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
    shard_size: int | None = None     # accuracy images per task (None: one shard per entry)
    mirror: str | None = None         # --mirror: checkpoints from an internal mirror
    skip_unchanged: str | None = None  # --skip-unchanged STORE: a folder or s3:// URL
    checkpoint_lock: dict = field(default_factory=dict)  # fetch/lock.py: name -> full digest
    require_lock: tuple | None = None   # --require-lock: (command that locks, lock file)
    limits: WorkerLimits = WorkerLimits()  # --worker-memory, --max-image-pixels
    localize: bool = False            # --localize: first diverging layer even when passing


@dataclass
class CheckpointRef:
    """Where a task finds the entry's checkpoint, on whichever node it runs: the manifest's
    URL (fetched, digest-checked, into that node's cache; from the mirror when set) or the
    driver's --checkpoint file (used in place when the node sees it with the same sha256,
    else written into the node's cache from the bytes the executor ships)."""
    spec: dict
    cache_dir: str
    local: str | None = None
    sha256: str | None = None
    mirror: str | None = None

    def resolve(self, blob: bytes | None) -> Fetched:
        try:
            if self.local:
                path = materialize(Path(self.local), self.sha256, blob, Path(self.cache_dir))
                return local_checkpoint(path, self.spec)
            return fetch(self.spec, Path(self.cache_dir), mirror=self.mirror)
        except FetchError as exc:
            raise StageError("fetch", exc.kind, exc.message) from None


@dataclass
class Prepared:
    """What an entry task returns: the report so far, its checks, its variants, and the
    files it made (bytes: they travel back from whichever node ran it)."""
    report: dict
    checks: list[Check] = field(default_factory=list)
    variants: dict[str, dict] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)   # model.onnx, model.P.onnx, log
    status: str | None = None      # set when decided already: "error" | "unsupported"
    entry: dict | None = None      # the entry with its derived fields (orchestrator/derive.py)
    decided: str | None = None
    runnable: bool = False         # ONNX I/O fit for the accuracy gate
    seconds: float = 0.0


@dataclass
class EntryResult:
    name: str
    status: str            # passed | failed | error | unsupported | unavailable | unchanged
    decided_by: str        # the figure or cause that decided the status
    seconds: float
    runtimes: str = ""     # the runtime matrix in one line (orchestrator/runtimes.py)


class StageError(PipelineError):
    """A stage's failure as the entry's report records it: which stage, and the cause."""

    def __init__(self, stage: str, kind: str, message: str, details: dict | None = None):
        super().__init__(kind, message, details)
        self.stage = stage

    def __reduce__(self):
        return type(self), (self.stage, self.kind, self.message, self.details)


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
                    result["build"] = make_int8(simplified, path, np.load(calibration), gates,
                                                threads=opts.threads)
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
        if precision == "int8" and result["checks"] and not result["passed"]:
            with timer.stage("int8_diagnosis"):
                result["diagnosis"] = _diagnose_int8(simplified, path, calibration, say)
    return results


DIAGNOSIS_IMAGES = 2   # every activation of every image is held: ~1.5 GB for Res2Net50


def _diagnose_int8(simplified: Path, path: Path, calibration: Path, say) -> dict:
    """Which tensors lost the accuracy of a failed int8 variant (converters.variants)."""
    try:
        found = int8_tensor_errors(simplified, path, np.load(calibration)[:DIAGNOSIS_IMAGES])
    except Exception as exc:  # noqa: BLE001 - a diagnosis failure must not hide the verdict
        return {"error": f"{type(exc).__name__}: {exc}"}
    first = found["first_below"]
    if first:
        say(f"  int8      parts from fp32 first at {first['node']} ({first['tensor']}: "
            f"SQNR {first['sqnr_db']} dB < {first['threshold_db']:g}); the "
            f"{len(found['worst'])} worst tensors are in the report; keep nodes in fp32 "
            "with variants.int8.exclude_nodes")
    return found


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
            reference: np.ndarray, threads: int | None
            ) -> tuple[list[Check], dict, dict[str, np.ndarray]]:
    """Signature and logit checks for each ONNX model (path, describe() info from the
    simplify stage's onnx.checker pass), at the full batch and at batch 1; also each model's
    logits at the full batch (the canary compares its copy with them)."""
    tol = entry["tolerances"]
    # a fixed-batch graph (exported so: _run_stages) runs one image at a time: no batch check
    batch_sizes = (sorted({len(inputs), 1}, reverse=True) if entry["export"]["dynamic_batch"]
                   else [1])
    checks: list[Check] = []
    figures: dict = {"batch_sizes": batch_sizes}
    logits: dict[str, np.ndarray] = {}
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
        logits[label] = outs[batch_sizes[0]]   # all images (one at a time: fixed batch)
        # The worst batch size decides each check, so report the worst per check name.
        per_check: dict[str, Check] = {}
        agree: dict[int, bool] = {}
        for bs, out in outs.items():
            found = compare_logits(reference, out, tol, {"model": label, "batch": bs})
            agree[bs] = not failed(found)
            for c in found:
                prev = per_check.get(c.name)
                if prev is None or _worse(c, prev):
                    per_check[c.name] = c
        for c in per_check.values():
            c.scope = {"model": label, "batch_sizes": batch_sizes,
                       "worst_batch": c.scope.get("batch")}
        if len(outs) > 1:   # verify/batch.py: a batch baked into a dynamic-batch graph
            # First: when it fails, it is the cause the logit checks' failures follow from.
            checks.append(batch_check(outs, tol, path,
                                      {"model": label, "batch_sizes": batch_sizes}, agree))
        checks += per_check.values()
    return checks, figures, logits


def _simplifier_broke(checks: list[Check]) -> bool:
    """The exporter's model passed every value check and onnxsim's output failed one."""
    bad = [c for c in failed(checks) if c.name in VALUE_CHECKS]
    return bool(bad) and all(c.scope.get("model") == "simplified" for c in failed(checks))


def _trial_shape(entry: Entry) -> list[int]:
    """The input onnxsim runs the graph on: batch 2 where the graph takes any batch."""
    return [2 if entry["export"]["dynamic_batch"] else 1, *entry["input_shape"]]


def _each_retry(exported: Path, target: Path, entry: Entry):
    """onnxsim on the exporter's model into `target` with each of RETRIES' settings in turn
    (converters/simplify.py): yields (the optimizer setting, simplify()'s info or None, its
    error message or None)."""
    tol = entry["tolerances"]
    for setting in RETRIES:
        try:
            info = simplify(exported, target, _trial_shape(entry), atol=tol["atol"],
                            rtol=tol["rtol"], **setting)
        except OnnxCheckFailed as exc:
            yield optimizer_setting(**setting), None, exc.message
            continue
        yield info["optimizer"], info, None


def _resimplify(entry: Entry, exported: Path, simplified: Path, inputs: np.ndarray,
                reference: np.ndarray, checks: list[Check], logits: dict, threads: int | None,
                report: dict, say) -> tuple[list[Check], dict]:
    """onnxsim changed what the exporter wrote: simplify again with its fragile passes off, then
    with no optimisation (converters/simplify.py RETRIES), each result through the same
    logit checks against the source; the first that passes replaces model.onnx. None passing
    leaves the first model and its failed checks. Recorded in report['onnx']['onnxsim_repair']."""
    first = next(c for c in failed(checks) if c.name in VALUE_CHECKS)
    repair = {"first": {"check": first.name, "measured": first.measured, "limit": first.limit},
              "tried": [], "used": None}
    report["onnx"]["onnxsim_repair"] = repair
    say(f"  simplify  onnxsim changed the exporter's logits ({first.name} {_fmt(first.measured)}"
        f" vs limit {_fmt(first.limit)}; the exporter's model passes): simplifying again")
    retry = simplified.with_name("model.retry.onnx")
    for setting, info, error in _each_retry(exported, retry, entry):
        if info is None:
            repair["tried"].append({"optimizer": setting, "error": error})
            continue
        again, _, outs = _verify(entry, {"simplified": (retry, info)}, inputs, reference,
                                 threads)
        bad = failed(again)
        repair["tried"].append({"optimizer": info["optimizer"], "nodes": info["nodes"],
                                "passed": not bad})
        if bad:
            continue
        retry.replace(simplified)
        repair["used"] = info["optimizer"]
        report["onnx"].update(nodes_simplified=info["nodes"], sha256=sha256_file(simplified),
                              bytes=simplified.stat().st_size)
        say(f"  simplify  onnxsim optimizer {info['optimizer']}: {info['nodes']} nodes, "
            "the logit checks pass")
        return [c for c in checks if c.scope.get("model") != "simplified"] + again, \
            {**logits, **outs}
    retry.unlink(missing_ok=True)
    say("  simplify  no onnxsim setting kept the exporter's logits: the first result stands")
    return checks, logits


def _worse(a: Check, b: Check) -> bool:
    if a.passed != b.passed:
        return not a.passed
    if a.name == "max_abs_diff":
        return a.measured > b.measured
    if isinstance(a.measured, (int, float)) and isinstance(b.measured, (int, float)):
        return a.measured < b.measured
    return False


def _decided_by(checks: list[Check], passed: bool, accuracy: dict | None = None,
                warnings: list[str] | None = None) -> str:
    bad = failed(checks)
    if bad:
        c = bad[0]
        where = (f"; first diverging layer {c.scope['first_diverging_layer']}"
                 if c.scope.get("first_diverging_layer") else "")
        return (f"{c.name} ({c.scope.get('model', '')}) {_fmt(c.measured)} vs limit "
                f"{_fmt(c.limit)}{where}")
    worst = max((c for c in checks if c.name == "max_abs_diff"), key=lambda c: c.measured,
                default=None)
    text = (f"max|diff| {_fmt(worst.measured)} <= {_fmt(worst.limit)}" if worst and passed
            else "no logit check ran")
    if accuracy:
        text += (f"; top-1 source {accuracy['source']['top1']:.2f}% / ONNX "
                 f"{accuracy['onnx']['top1']:.2f}% ({accuracy['source']['images']} images)")
    if passed and warnings:   # a pass whose gate power is not shown says so (verify/canary.py)
        text += f"; WARNING: {warnings[0]}"
    return text


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _unsimplifiable(failure: OnnxCheckFailed, exported: Path, entry: Entry,
                    opts: RunOptions) -> Check | None:
    """The failed check an onnx.checker or onnxsim failure of the exporter's graph is, or
    None where it is not the conversion's fault."""
    if failure.kind == "onnxsim" and entry["export"]["dynamic_batch"]:
        # onnxsim runs the graph at batch 2: a graph that runs at batch 1 only is a failed
        # check that names the nodes holding the traced batch, not a pipeline error.
        return refused_at_another_batch(exported, entry["input_shape"], {"model": "exported"},
                                        opts.threads)
    if failure.kind == "onnx_checker":
        # The exporter wrote a graph that is not valid ONNX (mindcv convit's declared shapes):
        # the conversion's fault, a failed check, not a pipeline error.
        return Check("onnx_valid", False, "rejected by onnx.checker", "valid ONNX",
                     f"the exporter's graph is not valid ONNX: {failure.message}",
                     {"model": "exported"})
    return None


def _simplify_without_optimizer_passes(exported: Path, simplified: Path, entry: Entry,
                                       failure: OnnxCheckFailed, say) -> dict | None:
    """onnxsim again with RETRIES' settings, in order, after its optimizer raised on a graph
    that runs: PaddleClas SwinTransformer_tiny's paddle2onnx graph (If nodes) makes onnxsim's
    optimizer write an unsorted graph ("Nodes in a graph must be topologically sorted"), and
    with the optimizer off it simplifies (5930 -> 2091 nodes). The logit gate then checks the
    model as it checks any simplified one. None when every setting fails."""
    tried = [{"optimizer": optimizer_setting(), "error": failure.message[:400]}]
    for setting, info, error in _each_retry(exported, simplified, entry):
        if info is None:
            tried.append({"optimizer": setting, "error": error[:400]})
            continue
        say(f"  simplify  onnxsim failed with its optimizer on "
            f"({' '.join(failure.message.split())[:160]}); "
            f"simplified with its optimizer {info['optimizer']}")
        info["onnxsim_failed"] = tried
        return info
    return None


def _batch_held(checks: list[Check]) -> Check | None:
    """The failed batch check: the graph holds the batch it was traced at."""
    return next((c for c in failed(checks) if c.name == "batch_independent"), None)


def _run_stages(entry: Entry, all_entries: list[Entry], opts: RunOptions, report: dict,
                timer: Timer, workdir: Path, checkpoint: CheckpointRef, blob: bytes | None,
                say) -> tuple[list[Check], dict[str, dict], bool]:
    """fetch -> convert -> simplify -> verify -> variants; fills `report`, returns the checks,
    the variants and whether the ONNX model is fit for the accuracy gate.

    A dynamic-batch entry whose exporter cannot write a dynamic batch (it raises: PaddleClas
    MobileViTV3's F.fold asserts on a batch of -1), or writes a graph that holds the batch
    it traced (a failed batch check), is exported again at a fixed batch 1 and gated as
    such (export.fixed_batch_fallback, on by default): report['onnx']['batch'] says so and
    why, the contract's input says batch 1, and every check runs one image at a time."""
    args = (all_entries, opts, report, timer, workdir, checkpoint, blob, say)
    export = entry["export"]
    if not (export["dynamic_batch"] and export.get("fixed_batch_fallback", True)):
        return _stages(entry, *args)
    try:
        checks, variants, runnable = _stages(entry, *args, batch_fallback=True)
    except StageError as exc:
        if (exc.stage, exc.kind) != ("convert", "export"):
            raise
        first, why = exc, {"stage": "convert", "error": exc.message[:600]}
    else:
        held = _batch_held(checks)
        if held is None:
            return checks, variants, runnable
        first, why = None, {"check": held.as_dict()}
    reason = " ".join((why.get("error") or why["check"]["detail"]).split())
    say(f"  batch     no dynamic-batch model ({reason[:160]}): exporting at a fixed batch 1")
    fixed = replace(entry, data={**entry.data, "export": {**export, "dynamic_batch": False}})
    try:
        checks, variants, runnable = _stages(fixed, *args)
    except StageError as again:
        if first is None:
            raise
        # it fails at a fixed batch too: the entry's own error stands, with the second's
        said = next((ln for ln in again.message.splitlines() if ln.strip()), "")[:300]
        raise StageError(first.stage, first.kind, f"{first.message}\nexported at a fixed "
                         f"batch 1 instead: {again.stage}/{again.kind}: {said}",
                         first.details) from None
    report["onnx"]["batch"] = {"fixed": 1, "dynamic_batch_tried": why,
                               "note": "exported at a fixed batch 1: the dynamic-batch export "
                                       "failed; runtimes take one image per run"}
    report.setdefault("warnings", []).append(
        "fixed batch 1: " + ("the exporter refused a dynamic batch" if first is not None else
                             "the dynamic-batch graph held its traced batch")
        + " (report: onnx.batch)")
    return checks, variants, runnable


def _stages(entry: Entry, all_entries: list[Entry], opts: RunOptions, report: dict,
            timer: Timer, workdir: Path, checkpoint: CheckpointRef, blob: bytes | None,
            say, batch_fallback: bool = False) -> tuple[list[Check], dict[str, dict], bool]:
    """_run_stages once, at the entry's export settings; with `batch_fallback`, it stops
    after verify when the batch check failed (the fixed-batch export follows)."""
    spec = SOURCES[entry.source]
    with timer.stage("fetch"):
        got = checkpoint.resolve(blob)
        report["source"]["checkpoint"] = _checkpoint_report(got)
        if checkpoint.local:  # the driver's path, wherever the node kept its copy
            report["source"]["checkpoint"]["path"] = checkpoint.local
        pin = ("the pinned file (prefix only, 32 bits: lock it with `pipeline.py "
               "lock-checkpoints`)" if got.pinned and "prefix only" in got.digest_check else
               "the pinned file" if got.pinned else
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
                "max_image_pixels": opts.limits.max_image_pixels,
            }, workdir, timeout=opts.worker_timeout, memory_limit=opts.limits.memory_limit())
        except WorkerFailed as exc:
            raise StageError("convert", exc.kind, exc.message, exc.details) from None
    report["source"]["versions"] = result["versions"]
    if result.get("unreadable"):
        report["verification"]["images"]["unreadable"] = result["unreadable"]
        report["verification"]["images"]["count"] = len(result["images_used"])
    report["source"]["checkpoint"].update(result.get("checkpoint", {}))
    report["timings"]["worker"] = result.get("timings", {})
    # which process converted it, and its how-manieth job (a warm worker's: converters/runner.py)
    report["source"]["worker"] = result.get("process")
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
        before, after, failure = None, None, None
        tol = entry["tolerances"]
        try:
            before = check(exported)
            after = simplify(exported, simplified, _trial_shape(entry),
                             atol=tol["atol"], rtol=tol["rtol"])
        except OnnxCheckFailed as exc:
            failure = exc
        if failure is not None:
            finding = _unsimplifiable(failure, exported, entry, opts)
            if finding is None and failure.kind == "onnxsim":
                after = _simplify_without_optimizer_passes(exported, simplified, entry,
                                                           failure, say)
            if after is None:
                if finding is None:
                    raise StageError("simplify", failure.kind, failure.message) from None
                report["onnx"] = {"nodes_exported": before.get("nodes") if before else None,
                                  "simplify_error": failure.message}
                say(f"  simplify  FAILED: {finding.detail}")
                return [finding], {}, False
    report["onnx"] = {
        "opset": after["opset"], "nodes_exported": before["nodes"],
        "nodes_simplified": after["nodes"], "inputs": after["inputs"],
        "outputs": after["outputs"], "sha256": sha256_file(simplified),
        "bytes": simplified.stat().st_size, "onnxsim_check": after["onnxsim_check"]}
    if after.get("onnxsim_failed"):
        report["onnx"]["onnxsim_failed"] = after["onnxsim_failed"]
        report["onnx"]["optimizer"] = after["optimizer"]
    say(f"  simplify  onnx.checker ok; onnxsim {before['nodes']} -> {after['nodes']} nodes")
    if not after["onnxsim_check"]["passed"]:
        say(f"  simplify  note: {after['onnxsim_check']['note']}")

    with timer.stage("verify"):
        inputs = np.load(workdir / result["files"]["inputs"])
        reference = np.load(workdir / result["files"]["reference_logits"])
        checks, figures, logits = _verify(entry, {"exported": (exported, before),
                                                  "simplified": (simplified, after)},
                                          inputs, reference, opts.threads)
        if _simplifier_broke(checks):
            checks, logits = _resimplify(entry, exported, simplified, inputs, reference,
                                         checks, logits, opts.threads, report, say)
        report["verification"].update(figures)
        if not failed(checks):   # gate power: a known small fault must fail the same check
            canary, report["verification"]["canary"] = canary_check(
                simplified, inputs, reference, entry["tolerances"], opts.threads,
                clean=logits["simplified"])
            checks.append(canary)
            say(f"  canary    {canary.detail}")
            if report["verification"]["canary"].get("warning"):
                report.setdefault("warnings", []).append(
                    report["verification"]["canary"]["warning"])
                say(f"  WARNING   {report['verification']['canary']['warning']}")

    if batch_fallback and _batch_held(checks):
        return checks, {}, False
    if "simplified" in logits:   # the model passed its signature checks and ran
        with timer.stage("deploy"):
            used = [images[i] for i in result.get("images_used", range(len(images)))]
            deploy_checks, report["deploy"] = deploy_gate(entry, used, inputs, reference,
                                                          simplified, opts.threads)
            checks += deploy_checks
            say(f"  deploy    {_deploy_line(report['deploy'], deploy_checks[0])}")

    value_failed = [c for c in failed(checks) if c.name in VALUE_CHECKS]
    if value_failed or opts.localize:
        # The model whose check failed first: the exporter's output before onnxsim's.
        label = value_failed[0].scope.get("model", "simplified") if value_failed \
            else "simplified"
        with timer.stage("localize"):
            say(f"  localize  {label} model: capturing {spec.framework}'s layer outputs ...")
            try:
                found = localize_model(entry, exported if label == "exported" else simplified,
                                       got.path, images[:LOCALIZE_IMAGES], workdir,
                                       opts.threads, opts.worker_timeout, opts.limits)
                found["model"] = label
            except LocalizeFailed as exc:
                found = {"model": label, "error": {"kind": exc.kind, "message": exc.message}}
                say(f"  localize  could not localise: {exc.message}")
            except Exception as exc:  # noqa: BLE001 - a diagnosis never changes the verdict
                found = {"model": label, "error": {"kind": "internal",
                                                   "message": f"{type(exc).__name__}: {exc}"}}
                say(f"  localize  could not localise: {type(exc).__name__}: {exc}")
            else:
                say(f"  localize  {found['summary']}")
            report["verification"]["localization"] = found
            layer = (found.get("first_diverging") or {}).get("layer")
            for c in value_failed:
                c.scope["first_diverging_layer"] = layer

    runnable = not any(not c.passed and c.name in ("opset", "io_names", "io_shapes")
                       for c in checks)
    variants = {}
    if runnable and len(opts.precisions) > 1:
        calibration = (workdir / result["files"]["calibration"]
                       if "calibration" in result["files"] else None)
        variants = _build_variants(entry, opts, simplified, workdir, inputs, reference,
                                   calibration, timer, say)
    if runnable and "simplified" in logits:
        models = {"fp32": simplified,
                  **{p: v["path"] for p, v in variants.items() if v["passed"]}}
        with timer.stage("runtimes"):
            gating, report["runtimes"] = runtime_matrix(entry, models, inputs, reference,
                                                        opts.threads, say)
        checks += _gate_on(variants, gating)
    return checks, variants, runnable


def _gate_on(variants: dict[str, dict], gating: dict[str, list[Check]]) -> list[Check]:
    """Required runtimes' checks per precision: a variant's join its own (and may stop it
    shipping); the fp32 ones are returned for the entry's verdict."""
    for precision, extra in gating.items():
        if precision != "fp32" and extra:
            variants[precision]["checks"] += extra
            variants[precision]["passed"] = not failed(variants[precision]["checks"])
    return gating.get("fp32", [])


def _deploy_line(figures: dict, check: Check) -> str:
    if "max_level_diff" not in figures:
        return f"contract preprocessing FAILED: {check.detail}"
    libs = ", ".join(f"{k} {v}" for k, v in figures["libraries"].items())
    exact = figures["exact_images"] == figures["images"]
    how = ("bit-exact" if exact else f"max {figures['max_level_diff']:.3g} pixel levels")
    return (f"contract preprocessing ({libs}) vs the source's: {how} on "
            f"{figures['images']} images{'' if check.passed else ' - FAILED'}; contract + "
            f"ONNX top-1 agrees on {figures['top1_agreement']:.0%}")


def _variants_report(variants: dict[str, dict], shipped: bool) -> dict:
    """report['variants']: per precision, whether it ships, its file, checks, build info."""
    out = {}
    for precision, v in variants.items():
        entry = {"passed": v["passed"],
                 "checks": [c.as_dict() for c in v["checks"]],
                 "build": v.get("build"), "error": v["error"]}
        if v.get("accuracy"):
            entry["accuracy"] = v["accuracy"]
        if v.get("diagnosis"):
            entry["diagnosis"] = v["diagnosis"]
        if entry["passed"] and shipped:
            entry["file"] = f"model.{precision}.onnx"
            entry["sha256"] = v["sha256"]
            entry["bytes"] = v["bytes"]
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


def new_report(entry: Entry) -> dict:
    return {
        "name": entry.name, "passed": False,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run_id": uuid.uuid4().hex,   # provenance's invocationId
        "pipeline": {"git_commit": git_commit()},
        "entry": entry.data,
        "source": {"framework": entry.source, "model_id": entry["model_id"]},
        "checks": [], "timings": {}, "error": None,
    }


def _error(report: dict, stage: str, kind: str, message: str, details: dict | None = None
           ) -> str:
    report["error"] = {"stage": stage, "kind": kind, "message": message,
                       "details": details or {}}
    return f"{stage}: {kind}"


def prepare_entry(entry: Entry, all_entries: list[Entry], opts: RunOptions,
                  checkpoint: CheckpointRef, blob: bytes | None, header: str,
                  say=print) -> Prepared:
    """The entry task: every stage up to the accuracy gate, on whichever node runs it."""
    start = time.perf_counter()
    say(header)
    report = new_report(entry)
    timer = Timer()
    report["timings"] = timer.seconds
    out = Prepared(report)
    with run_dir(f"entry-{entry.name}", keep=opts.keep_work) as workdir:
        try:
            if needs_source(entry):
                with timer.stage("derive"):
                    entry, report["derived"] = _derive(entry, opts, say)
                report["entry"] = out.entry = entry.data
            out.checks, variants, out.runnable = _run_stages(
                entry, all_entries, opts, report, timer, workdir, checkpoint, blob, say)
            for v in variants.values():
                path = v.pop("path")
                if v["passed"]:
                    v["onnx"] = path.read_bytes()
                    v["sha256"], v["bytes"] = sha256_file(path), path.stat().st_size
            out.variants = variants
            if (workdir / "model.onnx").exists():   # not when the graph failed before it
                out.files["model.onnx"] = (workdir / "model.onnx").read_bytes()
        except StageError as exc:
            out.status = "unsupported" if exc.kind in UNSUPPORTED_KINDS else "error"
            out.decided = _error(report, exc.stage, exc.kind, exc.message, exc.details)
            say(f"  {out.status.upper():<9} [{exc.stage}/{exc.kind}] {exc.message}")
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure must not stop the run
            out.status = "error"
            out.decided = _error(report, timer.current, "internal",
                                 f"{type(exc).__name__}: {exc}",
                                 {"traceback": traceback.format_exc(limit=20)})
            out.decided = f"{timer.current}: internal error"
            say(f"  ERROR     [{timer.current}/internal] {type(exc).__name__}: {exc}")
        log = workdir / "worker.log"
        if log.exists():
            out.files["worker.log"] = log.read_bytes()
        if opts.keep_work:
            say(f"  work dir  kept at {workdir}")
    out.seconds = time.perf_counter() - start
    return out


# What the source itself cannot do (a config the preprocessing contract cannot express, an
# exporter or inference switch that refuses the model), at whichever stage the worker finds
# it: reported as `unsupported`, not as the pipeline's error.
UNSUPPORTED_KINDS = {"unsupported", "export"}


def _derive(entry: Entry, opts: RunOptions, say) -> tuple[Entry, dict]:
    """orchestrator/derive.py on this node; its failure is the entry's (StageError)."""
    say(f"  derive    asking {SOURCES[entry.source].framework} for the fields the manifest "
        "left out ...")
    try:
        entry, section = resolve(entry, opts.limits.memory_limit(), opts.threads)
    except DeriveFailed as exc:
        raise StageError("derive", exc.kind, exc.message, exc.details) from None
    for key, origin in section["fields"].items():
        say(f"  derive    {key} from {origin}")
    for note in section["notes"]:
        say(f"  derive    note: {note}")
    return entry, section


def _apply_accuracy(report: dict, checks: list[Check], variants: dict[str, dict], merged,
                    say) -> list[Check]:
    acc_checks, accuracy, per_variant = merged
    runtimes = accuracy.pop("runtimes", {})
    report["accuracy"] = accuracy
    for precision, (drop, figures) in per_variant.items():
        variants[precision]["checks"].append(drop)
        variants[precision]["accuracy"] = figures
        variants[precision]["passed"] = not failed(variants[precision]["checks"])
        say(f"  {precision:<9} top-1/top-5 {figures['top1']:.2f}/{figures['top5']:.2f}; "
            f"{_variant_line(variants[precision])}")
    acc_checks = acc_checks + _runtime_accuracy(report, variants, runtimes, say)
    if "contract" in accuracy:
        c = accuracy["contract"]
        say(f"  deploy    preprocess.json + ONNX top-1 {c['top1']:.2f}% vs the source's "
            f"{accuracy['source']['top1']:.2f}%; tensors within {c['max_level_diff']:.3g} "
            f"pixel levels ({c['exact_images']}/{c['images']} bit-exact"
            f"{', %d unreadable by the contract' % len(c['errors']) if c['errors'] else ''})")
    src, onx = accuracy["source"], accuracy["onnx"]
    say(f"  accuracy  source top-1/top-5 {src['top1']:.2f}/{src['top5']:.2f}, ONNX "
        f"{onx['top1']:.2f}/{onx['top5']:.2f} on {src['images']} images; "
        f"{accuracy['disagree']} disagree{_near_ties(accuracy)}; "
        f"{accuracy['unreadable']} unreadable; "
        f"{accuracy['throughput']['wall_images_per_s']} images/s "
        f"({accuracy['throughput']['shards']} shard(s))")
    return checks + acc_checks


def _runtime_accuracy(report: dict, variants: dict[str, dict], runtimes: dict,
                      say) -> list[Check]:
    """The runtime matrix with --data: each runtime's top-1 on the accuracy images
    (orchestrator.accuracy.runtime_accuracy), into report['runtimes']; a required runtime's
    check gates its model. Returns the fp32 checks to gate on."""
    gating: dict[str, list[Check]] = {}
    for runtime, per_model in runtimes.items():
        section = report.setdefault("runtimes", {}).setdefault(runtime, {})
        required = section.get("required", False)
        for precision, result in per_model.items():
            check = result["check"]
            section.setdefault("accuracy", {})[precision] = {
                "passed": check.passed, "check": check.as_dict(), **result["figures"]}
            if required:
                gating.setdefault(precision, []).append(check)
            say(f"  runtime   {runtime} {precision} top-1 {result['figures']['top1']:.2f}%: "
                f"{check.name} {_fmt(check.measured)} vs limit {_fmt(check.limit)} "
                f"{'passed' if check.passed else 'FAILED'}"
                f"{'' if required else ' (reported, not required)'}")
    return _gate_on(variants, gating)


def _near_ties(accuracy: dict) -> str:
    ties = accuracy.get("near_ties", 0)
    return f" (+{ties} near-tie{'s' if ties != 1 else ''}, not counted)" if ties else ""


def finish_entry(entry: Entry, prepared: Prepared, opts: RunOptions, workdir: Path,
                 accuracy=None, accuracy_error: StageError | None = None,
                 inputs: dict | None = None, say=print) -> EntryResult:
    """On the driver: apply the accuracy gate, decide, write (and sign) the artifact."""
    report, checks, variants = prepared.report, list(prepared.checks), prepared.variants
    timings = report["timings"]
    status, decided = prepared.status, prepared.decided
    if inputs is not None:
        report["inputs"] = inputs
    files: dict[str, Path] = {}
    for name, data in prepared.files.items():
        (workdir / name).write_bytes(data)
        files[name] = workdir / name
    if status is None and accuracy_error is not None:
        status = "error"
        decided = _error(report, accuracy_error.stage, accuracy_error.kind,
                         accuracy_error.message, accuracy_error.details)
        say(f"  ERROR     [{accuracy_error.stage}/{accuracy_error.kind}] "
            f"{accuracy_error.message}")
    artifact_files: dict[str, Path] = {}
    if status is None:
        if accuracy is not None:
            checks = _apply_accuracy(report, checks, variants, accuracy, say)
        report["checks"] = [c.as_dict() for c in checks]
        report["passed"] = bool(checks) and not failed(checks)
        if variants:
            report["variants"] = _variants_report(variants, report["passed"])
            for precision, v in report["variants"].items():
                if "file" in v:
                    (workdir / v["file"]).write_bytes(variants[precision]["onnx"])
                    artifact_files[v["file"]] = workdir / v["file"]
        decided = _decided_by(checks, report["passed"], report.get("accuracy"),
                              report.get("warnings"))
        say(f"  verify    {'all checks passed' if report['passed'] else 'FAILED'}: {decided}")
        status = "passed" if report["passed"] else "failed"
        if report["passed"]:
            artifact_files["model.onnx"] = files["model.onnx"]
    report["decided_by"] = decided
    report["status"] = status   # passed | failed | error | unsupported
    timings["total"] = round(prepared.seconds + timings.get("accuracy", 0.0), 3)
    if report["passed"]:
        try:
            artifact_files = make_deployable(entry, report, artifact_files, workdir)
        except (OSError, ValueError) as exc:  # fail closed: nothing ships without its metadata
            report["passed"] = False
            status = report["status"] = "error"
            decided = report["decided_by"] = _error(report, "package", "metadata",
                                                    f"{type(exc).__name__}: {exc}")
            say(f"  ERROR     [package/metadata] {exc}")
    if report["passed"]:
        try:
            artifact = _write_passed(entry, report, artifact_files, opts)
            if opts.signing_key:
                say(f"  sign      {artifact / 'model.sig'} (key {opts.signing_key_id[:12]})")
        except SigningError as exc:  # fail closed: no unsigned model when signing was asked
            report["passed"] = False
            status = report["status"] = "error"
            decided = report["decided_by"] = _error(report, "sign", "signing", str(exc))
            artifact_files.clear()  # nothing unsigned ships: no fp32 model, no variant
            say(f"  ERROR     [sign/signing] {exc}")
    if not report["passed"]:
        artifact_files = {k: v for k, v in files.items() if k == "worker.log"}
        write_artifact(opts.out_dir, entry.name, report, artifact_files)
    return EntryResult(entry.name, status, decided, timings["total"],
                       runtimes_line(report.get("runtimes") or {}))
