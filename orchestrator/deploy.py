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

from deploy.preprocess import PreprocessError, contract, preprocess
from verify.compare import Check
from verify.ort_runner import OrtRunner

LISTED = 5   # worst images named in the report


def level_diffs(ours: np.ndarray, source: np.ndarray, spec: dict) -> np.ndarray:
    """Per image: max |ours - source| in 8-bit levels (normalised units x std / scale)."""
    std = np.asarray(spec["normalize"]["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    levels = np.abs(ours.astype(np.float64) - source.astype(np.float64)) * std \
        / spec["normalize"]["scale"]
    return levels.reshape(len(levels), -1).max(axis=1)


def libraries() -> dict:
    import cv2
    import PIL

    return {"opencv": cv2.__version__, "pillow": PIL.__version__}


def deploy_gate(entry, images: list[Path], source_inputs: np.ndarray,
                source_logits: np.ndarray, model: Path, threads: int | None
                ) -> tuple[list[Check], dict]:
    """Checks and report['deploy'] for the decoded logit-check images (`images`, in the order
    of `source_inputs`)."""
    spec = contract(entry["preprocess"], entry["input_shape"])
    limit = entry["deploy"]["max_level_diff"]
    figures = {"contract": spec, "libraries": libraries(), "images": len(images)}
    scope = {"stage": "deploy", "images": len(images)}
    try:
        ours = np.stack([preprocess(p, spec) for p in images])
    except PreprocessError as exc:
        figures["error"] = str(exc)
        return [Check("contract_preprocess", False, None, limit,
                      f"the contract's preprocessing could not run: {exc}", scope)], figures
    if ours.shape != source_inputs.shape:
        detail = (f"the contract makes tensors of {list(ours.shape[1:])}, the source "
                  f"{list(source_inputs.shape[1:])}")
        return [Check("contract_preprocess", False, list(ours.shape[1:]),
                      list(source_inputs.shape[1:]), detail, scope)], figures
    diffs = level_diffs(ours, source_inputs, spec)
    order = np.argsort(-diffs, kind="stable")
    worst = float(diffs[order[0]])
    figures["max_level_diff"] = worst
    figures["mean_level_diff"] = float(diffs.mean())
    figures["exact_images"] = int((diffs == 0).sum())
    figures["worst"] = [{"image": Path(images[i]).name, "level_diff": float(diffs[i])}
                        for i in order[:LISTED] if diffs[i] > 0]
    passed = worst <= limit
    detail = "" if passed else (
        f"the contract's tensors differ from {entry.source}'s own by up to {worst:.3g} pixel "
        f"levels ({Path(images[order[0]]).name}): preprocess.json would not reproduce the "
        "source's preprocessing")
    checks = [Check("contract_preprocess", passed, worst, limit, detail, scope)]

    logits = OrtRunner(model, threads).infer(ours, len(ours))
    agree = float(np.mean(logits.argmax(1) == source_logits.argmax(1)))
    figures["top1_agreement"] = agree   # contract + ONNX vs the source's own pipeline
    return checks, figures
