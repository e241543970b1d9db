"""Stage verify: ONNX Runtime on the exporter's and the simplified model against the source's
reference logits, at the verification batch and at batch 1 (verify/compare.py,
verify/batch.py); onnxsim redone when it alone broke the logits; the canary, which shows the
gate can see a known small fault (verify/canary.py); the deploy gate, the preprocessing
contract against the source's tensors (orchestrator/contract_gate.py); and, where a value check
failed (or with --localize), the first layer where the two implementations part."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.registry import SOURCES
from fetch.download import sha256_file
from manifests.loader import Entry
from orchestrator.contract_gate import deploy_gate
from orchestrator.localize import LOCALIZE_IMAGES, VALUE_CHECKS, LocalizeFailed, localize_model
from orchestrator.stages.context import EntryContext, fmt
from orchestrator.stages.simplify import Simplified, each_retry
from verify.batch import batch_check
from verify.canary import canary_check
from verify.compare import Check, check_signature, compare_logits, failed
from verify.ort_runner import OrtRunner


def verify_stage(ctx: EntryContext, result: dict, simp: Simplified
                 ) -> tuple[list[Check], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The logit checks and the canary, into report['verification']: returns the checks, each
    model's logits, the inputs and the reference logits."""
    entry, report, say, threads = ctx.entry, ctx.report, ctx.say, ctx.opts.threads
    with ctx.timer.stage("verify"):
        inputs = np.load(ctx.workdir / result["files"]["inputs"])
        reference = np.load(ctx.workdir / result["files"]["reference_logits"])
        checks, figures, logits = verify_models(
            entry, {"exported": (simp.exported, simp.before),
                    "simplified": (simp.path, simp.after)}, inputs, reference, threads)
        if simplifier_broke(checks):
            checks, logits = resimplify(entry, simp.exported, simp.path, inputs, reference,
                                        checks, logits, threads, report.onnx, say)
        report.verification.update(figures)
        sensitivity = result.get("source_sensitivity")
        if sensitivity:
            report.verification["source_sensitivity"] = sensitivity
            for note in amplified_rounding(checks, sensitivity)[:1]:
                say(f"  note      {note}")
        form = result.get("inference_form_change")
        if form:
            report.verification["inference_form_change"] = form
            for note in switched_form_differs(checks, form)[:1]:
                say(f"  note      {note}")
        if not failed(checks):   # gate power: a known small fault must fail the same check
            canary, report.verification["canary"] = canary_check(
                simp.path, inputs, reference, entry["tolerances"], threads,
                clean=logits["simplified"])
            checks.append(canary)
            say(f"  canary    {canary.detail}")
            if report.verification["canary"].get("warning"):
                report.warn(report.verification["canary"]["warning"])
                say(f"  WARNING   {report.verification['canary']['warning']}")
    return checks, logits, inputs, reference


def _explain_failed_value_check(checks: list[Check], moved: float, why) -> list[str]:
    """Each failed max_abs_diff whose limit MOVED (a change of the source's own logits)
    exceeds: the failure stands (fail closed), its detail gains why(times the limit).
    Returns what was added, once per check."""
    notes = []
    for check in failed(checks):
        if check.name != "max_abs_diff" or not moved > check.limit:
            continue
        note = why(f"{moved / check.limit:.3g}x the limit" if check.limit else "over the limit")
        check.detail = f"{check.detail}; {note}" if check.detail else note
        notes.append(f"{check.scope.get('model')}: {note}")
    return notes


def amplified_rounding(checks: list[Check], sensitivity: dict) -> list[str]:
    """A failed max_abs_diff of a source whose own logits move by more than its limit when
    its input moves by one float32 ulp (converters/worker_tasks.py rounding_sensitivity):
    its detail says that this model amplifies rounding, so that no float32 conversion of it
    can be shown to match within the limit."""
    moved = sensitivity["max_abs_logit_change"]
    return _explain_failed_value_check(checks, moved, lambda times: (
        f"the source itself is this sensitive: a one-ulp change of its input moves its "
        f"logits by {moved:.3g} ({times}, on {sensitivity['images']} images), so it "
        "amplifies float32 rounding and this difference may be rounding, not a conversion "
        "fault; trained checkpoints rarely do this"))


def switched_form_differs(checks: list[Check], form: dict) -> list[str]:
    """A failed max_abs_diff of a model exported in the source's own inference form (its
    switch_to_deploy / re_parameterize, converters/worker_flow.py) when that form, run by the
    source itself, is already over the limit from the model as trained: the artifact would
    not compute the checkpoint's function, and the detail says that the source's own
    switch, not the exporter, moved the logits."""
    moved = form["max_abs_logit_change"]
    return _explain_failed_value_check(checks, moved, lambda times: (
        f"the source's own inference form, which is what was exported, is already "
        f"{moved:.3g} from the model as trained ({times}, run by the source on the same "
        f"{form['images']} images): its switch, not the exporter, moved the logits (a "
        "random-init checkpoint can amplify the switch's rounding)"))


def verify_models(entry: Entry, models: dict[str, tuple[Path, dict]], inputs: np.ndarray,
                  reference: np.ndarray, threads: int | None
                  ) -> tuple[list[Check], dict, dict[str, np.ndarray]]:
    """Signature and logit checks for each ONNX model (path, describe() info from the
    simplify stage's onnx.checker pass), at the full batch and at batch 1; also each model's
    logits at the full batch (the canary compares its copy with them)."""
    tol = entry["tolerances"]
    # a fixed-batch graph (exported so: orchestrator/run.py) runs one image at a time: no
    # batch check
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


def _worse(a: Check, b: Check) -> bool:
    if a.passed != b.passed:
        return not a.passed
    if a.name == "max_abs_diff":
        return a.measured > b.measured
    if isinstance(a.measured, (int, float)) and isinstance(b.measured, (int, float)):
        return a.measured < b.measured
    return False


def simplifier_broke(checks: list[Check]) -> bool:
    """The exporter's model passed every value check and onnxsim's output failed one."""
    bad = [c for c in failed(checks) if c.name in VALUE_CHECKS]
    return bool(bad) and all(c.scope.get("model") == "simplified" for c in failed(checks))


def batch_held(checks: list[Check]) -> Check | None:
    """The failed batch check: the graph holds the batch it was traced at."""
    return next((c for c in failed(checks) if c.name == "batch_independent"), None)


def resimplify(entry: Entry, exported: Path, simplified: Path, inputs: np.ndarray,
               reference: np.ndarray, checks: list[Check], logits: dict, threads: int | None,
               onnx_section: dict, say) -> tuple[list[Check], dict]:
    """onnxsim changed what the exporter wrote: simplify again with its fragile passes off, then
    with no optimisation (converters/simplify.py RETRIES), each result through the same
    logit checks against the source; the first that passes replaces model.onnx. None passing
    leaves the first model and its failed checks. Recorded in `onnx_section` (the report's
    onnx) as onnxsim_repair."""
    first = next(c for c in failed(checks) if c.name in VALUE_CHECKS)
    repair = {"first": {"check": first.name, "measured": first.measured, "limit": first.limit},
              "tried": [], "used": None}
    onnx_section["onnxsim_repair"] = repair
    say(f"  simplify  onnxsim changed the exporter's logits ({first.name} {fmt(first.measured)}"
        f" vs limit {fmt(first.limit)}; the exporter's model passes): simplifying again")
    retry = simplified.with_name("model.retry.onnx")
    for setting, info, error in each_retry(exported, retry, entry):
        if info is None:
            repair["tried"].append({"optimizer": setting, "error": error})
            continue
        again, _, outs = verify_models(entry, {"simplified": (retry, info)}, inputs, reference,
                                       threads)
        bad = failed(again)
        repair["tried"].append({"optimizer": info["optimizer"], "nodes": info["nodes"],
                                "passed": not bad})
        if bad:
            continue
        retry.replace(simplified)
        repair["used"] = info["optimizer"]
        onnx_section.update(nodes_simplified=info["nodes"], sha256=sha256_file(simplified),
                            bytes=simplified.stat().st_size)
        say(f"  simplify  onnxsim optimizer {info['optimizer']}: {info['nodes']} nodes, "
            "the logit checks pass")
        return [c for c in checks if c.scope.get("model") != "simplified"] + again, \
            {**logits, **outs}
    retry.unlink(missing_ok=True)
    say("  simplify  no onnxsim setting kept the exporter's logits: the first result stands")
    return checks, logits


def deploy_stage(ctx: EntryContext, result: dict, images: list[Path], inputs: np.ndarray,
                 reference: np.ndarray, simplified: Path) -> list[Check]:
    """The preprocessing contract against the source's tensors, into report['deploy']."""
    with ctx.timer.stage("deploy"):
        used = [images[i] for i in result.get("images_used", range(len(images)))]
        checks, ctx.report.deploy = deploy_gate(ctx.entry, used, inputs, reference,
                                                simplified, ctx.opts.threads)
        ctx.say(f"  deploy    {_deploy_line(ctx.report.deploy, checks[0])}")
    return checks


def _deploy_line(figures: dict, check: Check) -> str:
    if "max_level_diff" not in figures:
        return f"contract preprocessing FAILED: {check.detail}"
    libs = ", ".join(f"{k} {v}" for k, v in figures["libraries"].items())
    exact = figures["exact_images"] == figures["images"]
    how = ("bit-exact" if exact else f"max {figures['max_level_diff']:.3g} pixel levels")
    return (f"contract preprocessing ({libs}) vs the source's: {how} on "
            f"{figures['images']} images{'' if check.passed else ' - FAILED'}; contract + "
            f"ONNX top-1 agrees on {figures['top1_agreement']:.0%}")


def localize_stage(ctx: EntryContext, checks: list[Check], checkpoint: Path,
                   images: list[Path], simp: Simplified) -> None:
    """Where a value check failed, or with --localize: the first layer where the source and
    the ONNX model part (orchestrator/localize.py), into report['verification'] and the failed
    checks' scope. A diagnosis: it never changes the verdict."""
    value_failed = [c for c in failed(checks) if c.name in VALUE_CHECKS]
    if not (value_failed or ctx.opts.localize):
        return
    opts, say = ctx.opts, ctx.say
    # The model whose check failed first: the exporter's output before onnxsim's.
    label = value_failed[0].scope.get("model", "simplified") if value_failed else "simplified"
    with ctx.timer.stage("localize"):
        say(f"  localize  {label} model: capturing {SOURCES[ctx.entry.source].framework}'s "
            "layer outputs ...")
        try:
            found = localize_model(ctx.entry, simp.exported if label == "exported" else
                                   simp.path, checkpoint, images[:LOCALIZE_IMAGES],
                                   ctx.workdir, opts.threads, opts.worker_timeout, opts.limits)
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
        ctx.report.verification["localization"] = found
        layer = (found.get("first_diverging") or {}).get("layer")
        for c in value_failed:
            c.scope["first_diverging_layer"] = layer
