"""Stage simplify: onnx.checker on the exporter's graph, then onnxsim (converters/simplify.py),
again with fewer optimizer passes where onnxsim's optimizer fails on a graph that runs. A
graph the conversion got wrong (not valid ONNX, or one that runs only at its traced batch)
is a failed check, not the pipeline's error."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.simplify import RETRIES, OnnxCheckFailed, check, optimizer_setting, simplify
from fetch.download import sha256_file
from manifests.loader import Entry
from orchestrator.stages.context import EntryContext, RunOptions
from verify.batch import refused_at_another_batch
from verify.compare import Check


@dataclass
class Simplified:
    exported: Path            # the exporter's model
    path: Path                # model.onnx, onnxsim's output (written unless finding is set)
    before: dict | None       # describe() of the exporter's model (converters/simplify.py)
    after: dict | None        # ... of the simplified one
    finding: Check | None = None   # the failed check that ends the entry here


def simplify_stage(ctx: EntryContext, result: dict) -> Simplified:
    """model.onnx from the worker's export, into report['onnx']."""
    entry, report, say = ctx.entry, ctx.report, ctx.say
    exported = ctx.workdir / result["files"]["onnx"]
    simplified = ctx.workdir / "model.onnx"
    with ctx.timer.stage("simplify"):
        before, after, failure = None, None, None
        tol = entry["tolerances"]
        try:
            before = check(exported)
            after = simplify(exported, simplified, trial_shape(entry),
                             atol=tol["atol"], rtol=tol["rtol"])
        except OnnxCheckFailed as exc:
            failure = exc
        if failure is not None:
            finding = _unsimplifiable(failure, exported, entry, ctx.opts)
            if finding is None and failure.kind == "onnxsim":
                after = _simplify_without_optimizer_passes(exported, simplified, entry,
                                                           failure, say)
            if after is None:
                if finding is None:
                    raise failure
                report.onnx = {"nodes_exported": before.get("nodes") if before else None,
                               "simplify_error": failure.message}
                say(f"  simplify  FAILED: {finding.detail}")
                return Simplified(exported, simplified, before, None, finding)
    report.onnx = {
        "opset": after["opset"], "nodes_exported": before["nodes"],
        "nodes_simplified": after["nodes"], "inputs": after["inputs"],
        "outputs": after["outputs"], "sha256": sha256_file(simplified),
        "bytes": simplified.stat().st_size, "onnxsim_check": after["onnxsim_check"]}
    if after.get("onnxsim_failed"):
        report.onnx["onnxsim_failed"] = after["onnxsim_failed"]
        report.onnx["optimizer"] = after["optimizer"]
    say(f"  simplify  onnx.checker ok; onnxsim {before['nodes']} -> {after['nodes']} nodes")
    if not after["onnxsim_check"]["passed"]:
        say(f"  simplify  note: {after['onnxsim_check']['note']}")
    return Simplified(exported, simplified, before, after)


def trial_shape(entry: Entry) -> list[int]:
    """The input onnxsim runs the graph on: batch 2 where the graph takes any batch."""
    return [2 if entry["export"]["dynamic_batch"] else 1, *entry["input_shape"]]


def each_retry(exported: Path, target: Path, entry: Entry):
    """onnxsim on the exporter's model into `target` with each of RETRIES' settings in turn
    (converters/simplify.py): yields (the optimizer setting, simplify()'s info or None, its
    error message or None)."""
    tol = entry["tolerances"]
    for setting in RETRIES:
        try:
            info = simplify(exported, target, trial_shape(entry), atol=tol["atol"],
                            rtol=tol["rtol"], **setting)
        except OnnxCheckFailed as exc:
            yield optimizer_setting(**setting), None, exc.message
            continue
        yield info["optimizer"], info, None


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
    for setting, info, error in each_retry(exported, simplified, entry):
        if info is None:
            tried.append({"optimizer": setting, "error": error[:400]})
            continue
        say(f"  simplify  onnxsim failed with its optimizer on "
            f"({' '.join(failure.message.split())[:160]}); "
            f"simplified with its optimizer {info['optimizer']}")
        info["onnxsim_failed"] = tried
        return info
    return None
