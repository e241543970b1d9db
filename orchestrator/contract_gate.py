"""The deploy gate: the artifact's preprocessing contract, run without any framework, against
the source's own transforms.

The logit gate compares source and ONNX on the same tensors, so it cannot see a wrong colour
order, resize rule or mean/std in what a deployer will do. Here the contract
(deploy/preprocess.py) is computed from the entry, run on the logit check's images with numpy,
OpenCV and Pillow only, and compared with the tensors the source's own transforms made for
those images in the worker (max difference per image, in 8-bit pixel levels); the ONNX model
then runs on the contract's tensors and its top-1 is compared with the source's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.simplify import graph_batch
from deploy.preprocess import PreprocessError, contract, preprocess
from verify.compare import Check
from verify.ort_runner import OrtRunner

LISTED = 5   # worst images named in the report


def level_diffs(ours: np.ndarray, source: np.ndarray, spec: dict) -> np.ndarray:
    """Per image: max |ours - source| in 8-bit levels (normalised units x std / scale)."""
    std = np.asarray(spec["normalize"]["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    levels = np.abs(ours.astype(np.float64) - source.astype(np.float64)) * std \
        / spec["normalize"]["scale"]
    # Rounded to a thousandth of a level: float32 normalisation alone leaves ~1e-5, which
    # must not turn a one-level difference into "1.00001 > 1".
    return np.round(levels.reshape(len(levels), -1).max(axis=1), 3)


def libraries() -> dict:
    import cv2
    import PIL

    return {"opencv": cv2.__version__, "pillow": PIL.__version__}


def deploy_gate(entry, images: list[Path], source_inputs: np.ndarray,
                source_logits: np.ndarray, model: Path, threads: int | None,
                spec: dict | None = None) -> tuple[list[Check], dict]:
    """Checks and report['deploy'] for the decoded logit-check images (`images`, in the order
    of `source_inputs`); `spec`: the contract to check (default: the entry's)."""
    if spec is None:
        spec = contract(entry["preprocess"], entry["input_shape"])
        held = graph_batch(model)
        if held:   # exported at a fixed batch (orchestrator/run.py): the graph takes it only
            spec["input"]["batch"] = held
    limit = entry["deploy"]["max_level_diff"]
    figures = {"contract": spec, "libraries": libraries(), "images": len(images)}
    scope = {"stage": "deploy", "model": "contract", "images": len(images)}
    try:
        ours, diffs, errors = contract_batch([str(p) for p in images], spec, source_inputs)
    except PreprocessError as exc:     # tensors of another shape than the source's
        figures["error"] = str(exc)
        return [Check("contract_preprocess", False, None, limit, str(exc), scope)], figures
    if errors:
        figures["error"] = errors[0]["error"]
        return [Check("contract_preprocess", False, None, limit,
                      f"the contract's preprocessing could not read {len(errors)} image(s) "
                      f"the source read: {errors[0]['error']}", scope)], figures
    order = np.argsort(-diffs, kind="stable")
    worst = float(diffs[order[0]])
    figures["max_level_diff"] = worst
    figures["mean_level_diff"] = float(diffs.mean())
    figures["exact_images"] = int((diffs == 0).sum())
    figures["worst"] = [{"image": Path(images[i]).name, "level_diff": float(diffs[i])}
                        for i in order[:LISTED] if diffs[i] > 0]
    passed = worst <= limit
    detail = "" if passed else (
        f"the contract's tensors differ from {entry['source']}'s own by up to {worst:.3g} pixel "
        f"levels ({Path(images[order[0]]).name}): preprocess.json would not reproduce the "
        "source's preprocessing")
    checks = [Check("contract_preprocess", passed, worst, limit, detail, scope)]

    logits = OrtRunner(model, threads).infer(ours, len(ours))
    agree = float(np.mean(logits.argmax(1) == source_logits.argmax(1)))
    figures["top1_agreement"] = agree   # contract + ONNX vs the source's own pipeline
    return checks, figures


def contract_batch(paths: list[str], spec: dict, source_inputs: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """An accuracy batch through the contract: tensors (the source's tensor stands in for an
    image the contract cannot read, which is recorded as an error), per-image level
    differences, errors."""
    tensors, errors = [], []
    for path, theirs in zip(paths, source_inputs):
        try:
            tensors.append(preprocess(path, spec))
        except PreprocessError as exc:
            errors.append({"path": path, "error": str(exc)})
            tensors.append(theirs)
    ours = np.stack(tensors)   # a batch has images: the worker writes no empty one
    if ours.shape != source_inputs.shape:
        raise PreprocessError(f"the contract makes tensors of {list(ours.shape[1:])}, the "
                              f"source {list(source_inputs.shape[1:])}")
    return ours, level_diffs(ours, source_inputs, spec), errors


def merge_contract(parts: list[dict]) -> dict:
    """Shards' contract figures as one (shards in dataset order)."""
    worst = max(parts, key=lambda p: p["max_level_diff"])
    return {"images": sum(p["images"] for p in parts),
            "exact_images": sum(p["exact_images"] for p in parts),
            "max_level_diff": worst["max_level_diff"], "worst_image": worst["worst_image"],
            "errors": [e for p in parts for e in p["errors"]]}


def contract_accuracy_checks(entry, figures: dict, source_top1: float, contract_top1: float,
                             images: int) -> list[Check]:
    """With --data: the contract's tensors against the source's on every evaluated image, and
    top-1 of contract + ONNX against the source's own pipeline + model (both ways)."""
    limits = entry["deploy"]
    scope = {"stage": "accuracy", "model": "contract", "images": images}
    worst = figures["max_level_diff"] if not figures["errors"] else float("inf")
    checks = [Check(
        "contract_preprocess", worst <= limits["max_level_diff"], worst,
        limits["max_level_diff"],
        (f"{len(figures['errors'])} image(s) the source reads, the contract cannot "
         f"(first: {figures['errors'][0]['path']}: {figures['errors'][0]['error']})"
         if figures["errors"] else
         f"max over {images} images, worst {figures['worst_image']}; "
         f"{figures['exact_images']} bit-exact"), scope)]
    delta = round(contract_top1 - source_top1, 4)
    checks.append(Check(
        "contract_top1_delta", abs(delta) <= limits["max_top1_delta"] + 1e-9, delta,
        limits["max_top1_delta"],
        f"top-1 {contract_top1:.3f}% with preprocess.json + ONNX vs {source_top1:.3f}% with "
        f"{entry['source']}'s own preprocessing + model on {images} images (two-sided)",
        scope))
    return checks
