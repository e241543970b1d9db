"""Stage runtimes: the fp32 model and each shipped variant on every runtime of the entry's
matrix (orchestrator/runtimes.py: OpenVINO, and CUDA / TensorRT where present), against the
source's logits; with --data, each runtime's top-1 too (`runtime_accuracy`, on the driver).
A required runtime's checks gate its model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.runtimes import runtime_matrix
from orchestrator.stages.context import EntryContext, fmt
from orchestrator.stages.variants import gate_on
from verify.compare import Check


def runtimes_stage(ctx: EntryContext, simplified: Path, variants: dict[str, dict],
                   inputs: np.ndarray, reference: np.ndarray) -> list[Check]:
    """Into report['runtimes']; returns the fp32 checks that gate the entry."""
    models = {"fp32": simplified, **{p: v["path"] for p, v in variants.items() if v["passed"]}}
    with ctx.timer.stage("runtimes"):
        gating, ctx.report.runtimes = runtime_matrix(ctx.entry, models, inputs, reference,
                                                     ctx.opts.threads, ctx.say)
    return gate_on(variants, gating)


def runtime_accuracy(matrix: dict, variants: dict[str, dict], runtimes: dict,
                     say) -> list[Check]:
    """The runtime matrix with --data: each runtime's top-1 on the accuracy images
    (orchestrator.accuracy.runtime_accuracy), into `matrix` (the report's runtimes: each
    runtime's section); a required runtime's check gates its model. Returns the fp32 checks
    to gate on."""
    gating: dict[str, list[Check]] = {}
    for runtime, per_model in runtimes.items():
        section = matrix.setdefault(runtime, {})
        required = section.get("required", False)
        for precision, result in per_model.items():
            check = result["check"]
            section.setdefault("accuracy", {})[precision] = {
                "passed": check.passed, "check": check.as_dict(), **result["figures"]}
            if required:
                gating.setdefault(precision, []).append(check)
            say(f"  runtime   {runtime} {precision} top-1 {result['figures']['top1']:.2f}%: "
                f"{check.name} {fmt(check.measured)} vs limit {fmt(check.limit)} "
                f"{'passed' if check.passed else 'FAILED'}"
                f"{'' if required else ' (reported, not required)'}")
    return gate_on(variants, gating)
