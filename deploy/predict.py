"""`pipeline.py predict`: classify images with an artifact alone.

Everything comes from the model file's own metadata (deploy/metadata.py): the preprocessing
contract, the class names. No manifest, no source framework, no network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deploy.metadata import read
from deploy.preprocess import PreprocessError, preprocess, validate


class PredictError(ValueError):
    """The artifact cannot be used for prediction; says why."""


@dataclass
class Prediction:
    image: str
    top: list[tuple[int, str, float]] = field(default_factory=list)  # index, label, probability
    error: str | None = None

    def as_dict(self) -> dict:
        if self.error:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "top": [{"index": i, "label": label, "probability": p}
                                             for i, label, p in self.top]}


def model_file(artifact: Path, precision: str) -> Path:
    path = artifact / ("model.onnx" if precision == "fp32" else f"model.{precision}.onnx")
    if not path.is_file():
        shipped = sorted(p.name for p in artifact.glob("model*.onnx"))
        raise PredictError(f"{artifact}: no {path.name} (this artifact ships "
                           f"{', '.join(shipped) or 'no model'})")
    return path


def load_contract(model: Path) -> tuple[dict, list[str]]:
    meta = read(model)
    missing = [k for k in ("preprocess", "labels") if k not in meta]
    if missing:
        raise PredictError(f"{model}: no model_convert.{missing[0]} metadata (an artifact "
                           "written before the deployable-artifact release?): convert it again")
    try:
        spec = validate(meta["preprocess"], f"{model} metadata model_convert.preprocess")
    except PreprocessError as exc:
        raise PredictError(str(exc)) from None
    return spec, list(meta["labels"])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return e / e.sum(axis=1, keepdims=True)


def predict(artifact: Path, images: list[Path], top: int = 5, runtime: str = "onnxruntime",
            precision: str = "fp32", threads: int | None = None,
            max_pixels: int | None = None) -> list[Prediction]:
    """Top-`top` classes per image; an unreadable image gets its error, the others still run."""
    from verify.runners import make_runner

    model = model_file(artifact, precision)
    spec, labels = load_contract(model)
    results, tensors = [], []
    for image in images:
        try:
            tensors.append(preprocess(image, spec, max_pixels))
            results.append(Prediction(str(image)))
        except PreprocessError as exc:
            results.append(Prediction(str(image), error=str(exc)))
    if tensors:
        runner = make_runner(runtime, model, threads)
        probs = softmax(runner.infer(np.stack(tensors), 8))
        if probs.shape[1] != len(labels):
            raise PredictError(f"{model}: {probs.shape[1]} outputs, {len(labels)} labels")
        ok = [r for r in results if r.error is None]
        for result, p in zip(ok, probs):
            best = np.argsort(-p, kind="stable")[:top]
            result.top = [(int(i), labels[i], float(p[i])) for i in best]
    return results
