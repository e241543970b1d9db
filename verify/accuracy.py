"""Top-1/top-5 of a reference and a candidate on the same tensors, and the accuracy gates.

Knows nothing of frameworks: it sees logits, labels and limits (percent points).
"""
from __future__ import annotations

import math

import numpy as np

from verify.compare import Check
from verify.dataset import FULL_IMAGENET_VAL


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(logits, part, 1).argsort(axis=1, kind="stable")[:, ::-1]
    return np.take_along_axis(part, order, 1)


def score(source: np.ndarray, outputs: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per-image figures of one batch: for the source and each candidate its top-1 (argmax)
    and top-5 classes, and for each candidate the largest |logit difference| to the source.

    This is all the merge needs, so a shard run anywhere returns these (a few bytes per image)
    instead of logits, and every figure of the merged run equals a single-process run's."""
    src = source.astype(np.float64)
    out = {"source": {"top1": source.argmax(1), "top5": _topk(src, 5)}}
    for name, logits in outputs.items():
        out[name] = {"top1": logits.argmax(1), "top5": _topk(logits.astype(np.float64), 5),
                     "max_diff": (np.abs(src - logits.astype(np.float64)).max(axis=1)
                                  if len(src) else np.zeros(0))}
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
        self.disagreeing = {name: [] for name in candidates}   # positions whose top-1 differ
        self.max_diff = {name: 0.0 for name in candidates}

    @property
    def disagree(self) -> list[int]:
        return self.disagreeing["onnx"]

    @property
    def max_abs_diff(self) -> float:
        return self.max_diff["onnx"]

    def add(self, labels: np.ndarray, positions: np.ndarray, source: np.ndarray,
            outputs: dict[str, np.ndarray] | np.ndarray) -> None:
        if not isinstance(outputs, dict):
            outputs = {"onnx": outputs}
        self.add_scored(labels, positions, score(source, outputs))

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
            self.disagreeing[name] += [int(p) for p in np.asarray(positions)[differ]]
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
                "disagree": len(self.disagree), "max_abs_logit_diff": self.max_abs_diff}


def variant_drop_check(meter: AccuracyMeter, name: str, limit: float) -> Check:
    """source top-1 - variant top-1 (percent points; a gain passes)."""
    drop = meter.percent("source", 1) - meter.percent(name, 1)
    return Check("top1_drop", drop <= limit + 1e-9, round(drop, 4), limit,
                 f"{name} top-1 {meter.percent(name, 1):.3f}% vs fp32 source "
                 f"{meter.percent('source', 1):.3f}% on {meter.images} images "
                 f"({len(meter.disagreeing[name])} images change top-1)",
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
                        "(percent points)", scope))
    rate = 100.0 * len(meter.disagree) / n
    checks.append(Check("top1_disagreement", rate <= limits["disagreement"] + 1e-9,
                        round(rate, 4), limits["disagreement"],
                        f"{len(meter.disagree)} of {n} images have a different top-1 "
                        "(percent of images)", scope))
    bad_rate = 100.0 * unreadable / requested if requested else 0.0
    checks.append(Check("unreadable_images", bad_rate <= limits["unreadable"] + 1e-9,
                        round(bad_rate, 4), limits["unreadable"],
                        f"{unreadable} of {requested} images could not be decoded by the "
                        "source's decoder (percent of images)", {**scope, "model": "dataset"}))
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
