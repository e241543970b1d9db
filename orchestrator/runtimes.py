"""The runtime matrix: each shipped model (fp32, fp16, int8) on the runtimes people deploy
with, against the source's logits with the same gates as ONNX Runtime CPU.

ONNX Runtime CPU is the pipeline's own runtime and is checked by the verify and variant stages;
here the others run: OpenVINO CPU always (it is in the orchestrator environment), ONNX
Runtime's CUDA and TensorRT execution providers where onnxruntime-gpu and a GPU are present,
else reported as skipped with the reason. The manifest's `deploy.required_runtimes` decides
which must pass for a model to ship (default ONNX Runtime only); the others are reported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from verify.compare import Check, compare_logits, compare_variant, failed
from verify.runners import make_runner, unavailable


def runtime_matrix(entry, models: dict[str, Path], inputs: np.ndarray,
                   reference: np.ndarray, threads: int | None, say=print
                   ) -> tuple[dict[str, list[Check]], dict]:
    """models: precision -> ONNX file. Returns the checks of required runtimes per precision
    (to gate on) and report['runtimes']."""
    deploy = entry["deploy"]
    required = set(deploy["required_runtimes"])
    gating: dict[str, list[Check]] = {p: [] for p in models}
    report: dict = {}
    for runtime in deploy["runtimes"]:
        if runtime == "onnxruntime":
            continue   # the verify and variant stages
        section: dict = {"required": runtime in required}
        report[runtime] = section
        why = unavailable(runtime)
        if why:
            section["skipped"] = why
            say(f"  runtime   {runtime}: skipped, {why}")
            if runtime in required:
                gating["fp32"].append(Check(
                    "runtime_available", False, runtime, "available",
                    f"{runtime} is required by the manifest but cannot run here: {why}",
                    {"runtime": runtime}))
            continue
        section["models"] = {}
        for precision, path in models.items():
            scope = {"model": precision, "runtime": runtime, "batch": len(inputs)}
            try:
                runner = make_runner(runtime, path, threads)
                section["version"] = runner.version
                out = runner.infer(inputs, len(inputs))
            except Exception as exc:  # noqa: BLE001 - a runtime's refusal is a finding
                checks = [Check("runtime_runs", False, f"{type(exc).__name__}: {exc}"[:500],
                                "runs", f"{runtime} could not run the {precision} model",
                                scope)]
            else:
                checks = (compare_logits(reference, out, entry["tolerances"], scope)
                          if precision == "fp32" else
                          compare_variant(reference, out, entry["variants"][precision], scope))
            passed = not failed(checks)
            section["models"][precision] = {"passed": passed,
                                            "checks": [c.as_dict() for c in checks]}
            if runtime in required:
                gating[precision] += checks
            bad = failed(checks)
            say(f"  runtime   {runtime} {precision}: " + (
                "passed" if passed else f"FAILED {bad[0].name} {bad[0].measured!s:.12} vs "
                f"{bad[0].limit}") + ("" if runtime in required else " (reported, not required)"))
    return gating, report


def runtimes_line(section: dict) -> str:
    """report['runtimes'] in one line for the run's summary: each runtime's models, passed
    or FAILED (with --data, the accuracy check too), required or not, or skipped."""
    parts = []
    for runtime, info in section.items():
        if "skipped" in info:
            parts.append(f"{runtime} skipped")
            continue
        models = []
        for precision, result in (info.get("models") or {}).items():
            accuracy = (info.get("accuracy") or {}).get(precision)
            ok = result["passed"] and (accuracy is None or accuracy["passed"])
            models.append(f"{precision} {'ok' if ok else 'FAILED'}")
        parts.append(f"{runtime} {', '.join(models) or 'nothing ran'}"
                     f"{' (required)' if info.get('required') else ''}")
    return "; ".join(parts)
