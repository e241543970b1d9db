"""Gate power, proven per model: the logit check must catch a small known fault in this very
model. Knows nothing of frameworks: it sees an ONNX file, input tensors and reference logits.

A copy of the simplified model has one mid-network weight tensor (the Conv nearest the middle
of the graph whose perturbation changes the logits at all, else such a Gemm/MatMul) multiplied
by (1 + 1e-3 x N(0, 1)), seeded. ONNX Runtime runs the copy on the verification inputs and the same compare_logits
check as the real model is applied against the source's logits. The check must fail: the
report records by how much the canary's largest logit difference exceeds the limit (the
margin). A tolerance so loose that the canary passes is a failed check: the gate could not
have seen a real fault of that size. On the demo Res2Net50 models the margin is 10-60x.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from verify.compare import Check, compare_logits
from verify.ort_runner import OrtRunner

NOISE = 1e-3
SEED = 0
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def candidates(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, initializer name) of Convs with a constant, not all-zero weight, nearest
    the middle of the graph first; Gemm/MatMul ones when there is no such Conv. All-zero
    weights are left out: a BatchNorm with gamma 0 folded into its conv leaves zeros, which
    relative noise cannot change."""
    constants = {init.name: init for init in model.graph.initializer}
    for ops in (("Conv",), ("Gemm", "MatMul")):
        found = [(node.name or f"{node.op_type}#{k}", name)
                 for k, node in enumerate(model.graph.node) if node.op_type in ops
                 for name in node.input[1:2] if name in constants
                 and np.any(numpy_helper.to_array(constants[name]))]
        if found:
            middle = len(found) // 2
            order = sorted(range(len(found)), key=lambda i: (abs(i - middle), i))
            return [found[i] for i in order]
    return []


def pick_weight(model: onnx.ModelProto) -> tuple[str, str] | None:
    found = candidates(model)
    return found[0] if found else None


def perturbed(model: onnx.ModelProto, weight: str, noise: float = NOISE,
              seed: int = SEED) -> onnx.ModelProto:
    """A copy of `model` with initializer `weight` times (1 + noise x N(0, 1))."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rng = np.random.default_rng(seed)
    for init in copy.graph.initializer:
        if init.name == weight:
            array = numpy_helper.to_array(init)
            faulty = array * (1 + noise * rng.standard_normal(array.shape))
            init.CopyFrom(numpy_helper.from_array(faulty.astype(array.dtype), weight))
    return copy


MAX_TRIES = 8
NO_EFFECT = 1e-5   # relative to max |logit|: below this the copy computes the same function


def canary_check(model_path: Path, inputs: np.ndarray, reference: np.ndarray, tol: dict,
                 threads: int | None = None, clean: np.ndarray | None = None
                 ) -> tuple[Check, dict]:
    """The canary_caught check and report['verification']['canary'].

    The canary must change the model's function: a conv whose output does not reach the
    logits (a residual branch closed by a zero-gamma BatchNorm, as zero-init checkpoints
    have) changes nothing, so the next nearest the middle is tried, up to MAX_TRIES.
    `clean`: the unperturbed model's logits on `inputs` when the caller has them already."""
    scope = {"model": "canary", "stage": "verify"}
    model = onnx.load(str(model_path))
    if clean is None:
        clean = OrtRunner(model_path, threads).infer(inputs, len(inputs))
    scale = float(np.abs(clean).max()) or 1.0
    tried = []
    with tempfile.TemporaryDirectory(prefix="canary-", dir=model_path.parent) as tmp:
        for node, weight in candidates(model)[:MAX_TRIES]:
            path = Path(tmp) / "canary.onnx"
            onnx.save(perturbed(model, weight), str(path))
            out = OrtRunner(path, threads).infer(inputs, len(inputs))
            tried.append(node)
            if float(np.abs(out - clean).max()) > NO_EFFECT * scale:
                break
        else:
            why = ("no Conv/Gemm/MatMul weight to perturb" if not tried else
                   f"perturbing the weights of {len(tried)} node(s) near the middle "
                   f"({', '.join(tried[:3])}...) left the logits unchanged")
            return (Check("canary_caught", True, None, "> 1", f"no canary: {why}", scope),
                    {"skipped": why, "tried": tried})
    checks = {c.name: c for c in compare_logits(reference, out, tol, scope)}
    worst = checks.get("max_abs_diff")
    caught = any(not c.passed for c in checks.values())
    margin = (worst.measured / worst.limit) if worst and worst.limit else None
    info = {"node": node, "weight": weight, "noise": NOISE, "seed": SEED,
            "tried": len(tried),
            "max_abs_diff": worst.measured if worst else None,
            "limit": worst.limit if worst else None,
            "margin": round(margin, 3) if margin is not None else None,
            "failed_checks": sorted(c.name for c in checks.values() if not c.passed)}
    change = f"a copy with {node}'s weights x (1 + {NOISE:g} N(0,1))"
    if worst is None:   # non-finite logits: compare_logits stops before the difference
        detail = (f"{change} fails {', '.join(info['failed_checks'])}: the logit gate "
                  "catches a fault of that size in this model")
    elif caught:
        # A limit of 0 (atol and rtol 0 in the manifest) has no ratio to it.
        size = (f"{margin:.1f}x the limit {worst.limit:.3g}" if margin is not None else
                f"over the limit {worst.limit:.3g}")
        detail = (f"{change} differs from the source by {worst.measured:.3g}, {size}: the "
                  "logit gate catches a fault of that size in this model")
    else:
        detail = (f"{change} passes the logit check ({worst.measured:.3g} <= "
                  f"{worst.limit:.3g}): the tolerance is too loose to catch a real fault of "
                  "that size; tighten it in the manifest")
    return (Check("canary_caught", caught, round(margin, 3) if margin is not None else None,
                  "> 1", detail, scope), info)
