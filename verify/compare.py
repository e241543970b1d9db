"""Compare a candidate's logits with a reference's. Knows nothing of frameworks.

Order as in optimum's validate_model_outputs: names, then shapes, then values; each failure is
its own check with the measured value, the limit and a sentence saying why.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Check:
    name: str
    passed: bool
    measured: object
    limit: object
    detail: str = ""
    scope: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ({}, "")}


def check_signature(info: dict, num_classes: int, input_shape: list[int],
                    dynamic_batch: bool, scope: dict, opset: int | None = None) -> list[Check]:
    """ONNX opset, I/O names and shapes as the product promises: input (N,C,H,W), logits (N,K)."""
    names = ([i["name"] for i in info["inputs"]], [o["name"] for o in info["outputs"]])
    checks = []
    if opset is not None:
        checks.append(Check("opset", info["opset"] == opset, info["opset"], opset,
                            "" if info["opset"] == opset else
                            "the exporter wrote another opset than the manifest asks", scope))
    checks.append(Check("io_names", names == (["input"], ["logits"]),
                    {"inputs": names[0], "outputs": names[1]},
                    {"inputs": ["input"], "outputs": ["logits"]},
                    "" if names == (["input"], ["logits"]) else
                    "downstream users rely on one interface: input 'input', output 'logits'",
                    scope))
    if checks[-1].passed:
        in_shape, out_shape = info["inputs"][0]["shape"], info["outputs"][0]["shape"]
        batch_ok = (isinstance(in_shape[0], str) and isinstance(out_shape[0], str)
                    if dynamic_batch else True)
        ok = batch_ok and in_shape[1:] == input_shape and out_shape[1:] == [num_classes]
        checks.append(Check("io_shapes", ok, {"input": in_shape, "logits": out_shape},
                            {"input": ["N", *input_shape], "logits": ["N", num_classes]},
                            "" if ok else "shapes differ from the manifest "
                            "(N must be symbolic when dynamic_batch is on)", scope))
    return checks


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    """Each row's k largest, largest first; equal values by the lower index, as argmax."""
    return np.argsort(-x, axis=1, kind="stable")[:, :k]


def compare_logits(ref: np.ndarray, out: np.ndarray, tol: dict, scope: dict) -> list[Check]:
    """Value checks of `out` against `ref` (both N x K), limits from `tol`."""
    if ref.shape != out.shape:
        return [Check("logits_shape", False, list(out.shape), list(ref.shape),
                      "candidate and reference logits differ in shape", scope)]
    finite = bool(np.isfinite(out).all() and np.isfinite(ref).all())
    checks = [Check("finite", finite, finite, True,
                    "" if finite else "NaN or Inf in the logits", scope)]
    if not finite:
        return checks
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    scale = float(np.abs(ref64).max())
    limit = tol["atol"] + tol["rtol"] * scale
    diff = np.abs(out64 - ref64)
    worst = float(diff.max())
    where = np.unravel_index(int(diff.argmax()), diff.shape)
    checks.append(Check(
        "max_abs_diff", worst <= limit, worst, limit,
        f"limit = atol {tol['atol']:g} + rtol {tol['rtol']:g} x max|ref| {scale:.4g}; worst at "
        f"image {where[0]}, class {where[1]}; mean abs diff {float(diff.mean()):.3g}", scope))

    dots = (ref64 * out64).sum(1)
    norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1)
    cosine = float(np.min(np.where(norms > 0, dots / np.maximum(norms, 1e-300), 1.0)))
    checks.append(Check("cosine_min", cosine >= tol["min_cosine"], cosine, tol["min_cosine"],
                        "smallest per-image cosine similarity", scope))

    for k, key in ((1, "min_top1_agreement"), (5, "min_top5_agreement")):
        k = min(k, ref.shape[1])
        ref_top, out_top = _topk(ref64, k), _topk(out64, k)
        same = np.array([set(a) == set(b) for a, b in zip(ref_top, out_top)])
        agreement = float(same.mean())
        # A swap between classes whose reference logits lie within 2 x limit of each other is
        # a tie the tolerance allows; it is counted and named, not failed.
        ties = 0
        for i in np.flatnonzero(~same):
            boundary = ref64[i, ref_top[i, -1]]
            swapped_in = set(out_top[i]) - set(ref_top[i])
            if all(boundary - ref64[i, c] <= 2 * limit for c in swapped_in):
                ties += 1
        unexplained = int((~same).sum()) - ties
        passed = agreement >= tol[key] or unexplained == 0
        detail = f"{int(same.sum())}/{len(same)} images agree on the top-{k} set"
        if ties:
            detail += f"; {ties} disagreement(s) are near-ties within 2x the logit limit"
        checks.append(Check(f"top{k}_agreement", passed, agreement, tol[key], detail, scope))
    return checks


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


def compare_variant(ref: np.ndarray, out: np.ndarray, gates: dict, scope: dict) -> list[Check]:
    """A reduced-precision model against the fp32 source: finite, smallest per-image cosine,
    top-1 agreement (gated), and max abs diff (reported, not gated: fp16/int8 error is
    expected; whether it matters is what cosine, agreement and accuracy decide)."""
    if ref.shape != out.shape:
        return [Check("logits_shape", False, list(out.shape), list(ref.shape),
                      "variant and reference logits differ in shape", scope)]
    finite = bool(np.isfinite(out).all())
    checks = [Check("finite", finite, finite, True,
                    "" if finite else "NaN or Inf in the logits", scope)]
    if not finite:
        return checks
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    dots = (ref64 * out64).sum(1)
    norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1)
    cosine = float(np.min(np.where(norms > 0, dots / np.maximum(norms, 1e-300), 1.0)))
    checks.append(Check("cosine_min", cosine >= gates["min_cosine"], cosine, gates["min_cosine"],
                        "smallest per-image cosine similarity to the fp32 source's logits",
                        scope))
    same = ref64.argmax(1) == out64.argmax(1)
    agreement = float(same.mean())
    checks.append(Check("top1_agreement", agreement >= gates["min_top1_agreement"], agreement,
                        gates["min_top1_agreement"],
                        f"{int(same.sum())}/{len(same)} images have the fp32 source's top-1",
                        scope))
    diff = float(np.abs(out64 - ref64).max())
    checks.append(Check("max_abs_diff", True, diff, None,
                        f"reported, not gated (max|ref| {float(np.abs(ref64).max()):.4g})",
                        scope))
    return checks
