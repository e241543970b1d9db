"""Stage variants: fp16 / int8 models from the simplified fp32 one (converters/variants.py),
each checked against the source's logits with its own limits. A variant that fails is
reported and not shipped; it never fails the fp32 entry. A failed int8 says which tensors
lost the accuracy."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.simplify import OnnxCheckFailed, check
from converters.variants import VariantFailed, int8_tensor_errors, make_fp16, make_int8
from orchestrator.stages.context import EntryContext, fmt
from verify.compare import Check, check_signature, compare_variant, failed
from verify.ort_runner import OrtRunner


def build_variants(ctx: EntryContext, simplified: Path, inputs: np.ndarray,
                   reference: np.ndarray, calibration: Path | None) -> dict[str, dict]:
    """Each precision asked for besides fp32: {"passed", "checks", "error", "build", "path"
    [, "diagnosis"]}."""
    entry, opts, say = ctx.entry, ctx.opts, ctx.say
    results: dict[str, dict] = {}
    for precision in (p for p in opts.precisions if p != "fp32"):
        path = ctx.workdir / f"model.{precision}.onnx"
        gates = entry["variants"][precision]
        scope = {"model": precision, "batch": len(inputs)}
        result: dict = {"passed": False, "checks": [], "error": None}
        with ctx.timer.stage(f"variant_{precision}"):
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
        say(f"  {precision:<9} {variant_line(result)}")
        if precision == "int8" and result["checks"] and not result["passed"]:
            with ctx.timer.stage("int8_diagnosis"):
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


def variant_line(result: dict) -> str:
    if result["error"]:
        return f"NOT SHIPPED: {result['error']}"
    by = {c.name: c for c in result["checks"]}
    bad = failed(result["checks"])
    figures = ", ".join(f"{n} {fmt(by[n].measured)}" for n in ("cosine_min", "top1_agreement",
                                                                "top1_drop") if n in by)
    if bad:
        c = bad[0]
        return (f"NOT SHIPPED: {c.name} {fmt(c.measured)} vs limit {fmt(c.limit)}"
                f" ({figures})")
    return f"passed: {figures}"


def gate_on(variants: dict[str, dict], gating: dict[str, list[Check]]) -> list[Check]:
    """Required runtimes' checks per precision: a variant's join its own (and may stop it
    shipping); the fp32 ones are returned for the entry's verdict."""
    for precision, extra in gating.items():
        if precision != "fp32" and extra:
            variants[precision]["checks"] += extra
            variants[precision]["passed"] = not failed(variants[precision]["checks"])
    return gating.get("fp32", [])


def variants_report(variants: dict[str, dict], shipped: bool) -> dict:
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
                            f"{bad[0].name} {fmt(bad[0].measured)} vs limit {fmt(bad[0].limit)}"
                            "; not written (the fp32 model is unaffected)")
        out[precision] = entry
    return out
