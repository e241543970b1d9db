"""Top-1/top-5 of a reference and a candidate on the same tensors, and the accuracy gates.

Knows nothing of frameworks: it sees logits, labels and limits (percent points).
"""
from __future__ import annotations

import math

import numpy as np

# Top-k as the logit check ranks it: equal logits by the lower class index, as argmax picks
# top-1 (so top-5[0] is top-1 and a near-tie's 'second class' is never top-1 itself).
from verify.compare import Check, _topk
from verify.dataset import FULL_IMAGENET_VAL


def near_tie_margin(source: np.ndarray, tol: dict | None) -> np.ndarray:
    """Per image, twice the logit gate's limit (atol + rtol x max|logit| of that image): two
    source classes closer than this may swap within the tolerance the logit gate allows
    (verify/compare.py counts such swaps as near-ties too). Per image, so that it does not
    depend on which other images share a batch or a shard."""
    if not tol:
        return np.zeros(len(source))
    scale = np.abs(source).max(axis=1) if len(source) else np.zeros(0)
    return 2.0 * (tol["atol"] + tol["rtol"] * scale)


def score(source: np.ndarray, outputs: dict[str, np.ndarray],
          tol: dict | None = None) -> dict[str, dict]:
    """Per-image figures of one batch: for the source and each candidate its top-1 (argmax)
    and top-5 classes; for each candidate the largest |logit difference| to the source and
    whether a top-1 change is a near-tie: the candidate picked the source's second class, and
    the source's top two lie within near_tie_margin (tolerances `tol`) of each other.

    This is all the merge needs, so a shard run anywhere returns these (a few bytes per image)
    instead of logits, and every figure of the merged run equals a single-process run's."""
    src = source.astype(np.float64)
    top5 = _topk(src, 5)
    out = {"source": {"top1": source.argmax(1), "top5": top5}}
    rows = np.arange(len(src))
    if src.shape[1] > 1 and len(src):
        gap = src[rows, top5[:, 0]] - src[rows, top5[:, 1]]
        close = gap <= near_tie_margin(src, tol)
        second = top5[:, 1]
    else:
        close, second = np.zeros(len(src), bool), np.full(len(src), -1)
    for name, logits in outputs.items():
        top1 = logits.argmax(1)
        out[name] = {"top1": top1, "top5": _topk(logits.astype(np.float64), 5),
                     "max_diff": (np.abs(src - logits.astype(np.float64)).max(axis=1)
                                  if len(src) else np.zeros(0)),
                     "near_tie": (top1 != out["source"]["top1"]) & (top1 == second) & close}
    return out


def concat_scores(parts: list[dict[str, dict]]) -> dict[str, dict]:
    """score() results of consecutive batches as one."""
    return {side: {key: np.concatenate([p[side][key] for p in parts])
                   for key in parts[0][side]} for side in parts[0]}


class AccuracyMeter:
    """Accumulates hits batch by batch (the dataset never has to fit in memory).

    `source` is the reference; candidates are ONNX models by name ("onnx" is the fp32 one,
    "fp16"/"int8" the variants). Disagreement and logit difference are counted for each."""

    def __init__(self, candidates: tuple[str, ...] = ("onnx",)):
        self.images = 0
        self.names = ("source", *candidates)
        self.hits = {name: {1: 0, 5: 0} for name in self.names}
        # Positions whose top-1 differs from the source's: real disagreements, and near-ties
        # (see score()), which are listed and counted apart and do not fail the gate.
        self.disagreeing = {name: [] for name in candidates}
        self.near_ties = {name: [] for name in candidates}
        self.max_diff = {name: 0.0 for name in candidates}

    @property
    def disagree(self) -> list[int]:
        return self.disagreeing["onnx"]

    @property
    def max_abs_diff(self) -> float:
        return self.max_diff["onnx"]

    def add(self, labels: np.ndarray, positions: np.ndarray, source: np.ndarray,
            outputs: dict[str, np.ndarray] | np.ndarray, tol: dict | None = None) -> None:
        if not isinstance(outputs, dict):
            outputs = {"onnx": outputs}
        self.add_scored(labels, positions, score(source, outputs, tol))

    def add_scored(self, labels: np.ndarray, positions: np.ndarray,
                   scored: dict[str, dict]) -> None:
        """Count one batch (or a merged shard) from its score() records."""
        labels = np.asarray(labels)
        for name in self.names:
            top5 = scored[name]["top5"]
            self.hits[name][1] += int((top5[:, 0] == labels).sum())
            self.hits[name][5] += int((top5 == labels[:, None]).any(axis=1).sum())
        for name in self.disagreeing:
            differ = scored["source"]["top1"] != scored[name]["top1"]
            tie = scored[name]["near_tie"]
            self.disagreeing[name] += [int(p) for p in np.asarray(positions)[differ & ~tie]]
            self.near_ties[name] += [int(p) for p in np.asarray(positions)[differ & tie]]
            if len(labels):
                self.max_diff[name] = max(self.max_diff[name],
                                          float(scored[name]["max_diff"].max()))
        self.images += len(labels)

    def percent(self, name: str, k: int) -> float:
        return 100.0 * self.hits[name][k] / self.images if self.images else 0.0

    def side(self, name: str) -> dict:
        return {"top1": round(self.percent(name, 1), 4), "top5": round(self.percent(name, 5), 4),
                "images": self.images}

    def summary(self) -> dict:
        return {"source": self.side("source"), "onnx": self.side("onnx"),
                "disagree": len(self.disagree), "near_ties": len(self.near_ties["onnx"]),
                "max_abs_logit_diff": self.max_abs_diff}


def images_allowed(limit_percent: float, images: int) -> str:
    """'N image(s)': how many of `images` a limit in percent lets through."""
    count = math.floor(limit_percent * images / 100.0 + 1e-9)
    return f"{count} image{'s' if count != 1 else ''}"


def variant_drop_check(meter: AccuracyMeter, name: str, limit: float) -> Check:
    """source top-1 - variant top-1 (percent points; a gain passes)."""
    drop = meter.percent("source", 1) - meter.percent(name, 1)
    return Check("top1_drop", drop <= limit + 1e-9, round(drop, 4), limit,
                 f"{name} top-1 {meter.percent(name, 1):.3f}% vs fp32 source "
                 f"{meter.percent('source', 1):.3f}% on {meter.images} images "
                 f"({len(meter.disagreeing[name])} images change top-1, "
                 f"{len(meter.near_ties[name])} more between near-tied classes; the limit "
                 f"allows {images_allowed(limit, meter.images)})",
                 {"model": name, "stage": "accuracy"})


def sampling_allowance(published_top1: float, images: int) -> float:
    """3 standard errors (percent points) of a top-1 measured on `images` of the 50000 ImageNet
    val images, with the finite-population correction: 0 on the full set."""
    if images >= FULL_IMAGENET_VAL or images <= 0:
        return 0.0
    p = published_top1 / 100.0
    fpc = (FULL_IMAGENET_VAL - images) / (FULL_IMAGENET_VAL - 1)
    return 300.0 * math.sqrt(p * (1 - p) / images * fpc)


def accuracy_checks(meter: AccuracyMeter, limits: dict, requested: int, unreadable: int,
                    published: dict | None, pinned: bool) -> tuple[list[Check], dict]:
    """The gates, each with measured value and limit; plus what the report says about the
    published figure (applied or not, and why)."""
    scope = {"model": "simplified", "stage": "accuracy"}
    checks: list[Check] = []
    n = meter.images
    if n == 0:
        checks.append(Check("accuracy_images", False, 0, ">= 1",
                            f"none of the {requested} dataset images could be decoded", scope))
        return checks, {"applied": False, "why": "no image decoded"}
    src, onx = meter.percent("source", 1), meter.percent("onnx", 1)
    delta = abs(onx - src)
    checks.append(Check("onnx_top1_delta", delta <= limits["onnx_top1_delta"] + 1e-9,
                        round(delta, 4), limits["onnx_top1_delta"],
                        f"ONNX top-1 {onx:.3f}% vs source top-1 {src:.3f}% on {n} images "
                        f"(percent points; the limit allows "
                        f"{images_allowed(limits['onnx_top1_delta'], n)})", scope))
    rate = 100.0 * len(meter.disagree) / n
    ties = len(meter.near_ties["onnx"])
    detail = (f"{len(meter.disagree)} of {n} images have a different top-1 (percent of "
              f"images; the limit allows {images_allowed(limits['disagreement'], n)})")
    if ties:
        detail += (f"; {ties} more changed between the source's top two classes, which lie "
                   "within 2x the logit limit of each other: near-ties, listed, not counted")
    checks.append(Check("top1_disagreement", rate <= limits["disagreement"] + 1e-9,
                        round(rate, 4), limits["disagreement"], detail, scope))
    bad_rate = 100.0 * unreadable / requested if requested else 0.0
    checks.append(Check("unreadable_images", bad_rate <= limits["unreadable"] + 1e-9,
                        round(bad_rate, 4), limits["unreadable"],
                        f"{unreadable} of {requested} images could not be decoded by the "
                        f"source's decoder (percent of images; the limit allows "
                        f"{images_allowed(limits['unreadable'], requested)})",
                        {**scope, "model": "dataset"}))
    info: dict = {"applied": False}
    if published:
        info["top1"] = published["top1"]
        info["top5"] = published["top5"]
        info["delta"] = round(src - published["top1"], 4)
    if not published:
        info["why"] = "the entry names no published accuracy"
    elif not pinned:
        info["why"] = ("the checkpoint is not the pinned published file (local file or "
                       "digest not published), so the publisher's figure does not apply")
    else:
        allowance = sampling_allowance(published["top1"], n)
        limit = limits["published_top1_delta"] + allowance
        measured = abs(src - published["top1"])
        detail = (f"source top-1 {src:.3f}% vs published {published['top1']}% "
                  f"({published.get('reference', '')}); limit {limits['published_top1_delta']} "
                  "pt")
        if allowance:
            detail += (f" + {allowance:.2f} pt sampling allowance (3 standard errors for "
                       f"{n} of {FULL_IMAGENET_VAL} images)")
        checks.append(Check("published_top1_delta", measured <= limit + 1e-9,
                            round(measured, 4), round(limit, 4), detail,
                            {**scope, "model": "source"}))
        info.update(applied=True, limit=round(limit, 4), sampling_allowance=round(allowance, 4))
    return checks, info
