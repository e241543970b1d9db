"""What every framework worker does, in order, whatever the framework.

A source plugs in an adapter (one small class per framework, as Polygraphy has one runner per
backend); this module owns the order of the stages, their timings, the files written, and the
strict state-dict comparison with its "this checkpoint fits entry X" hint.

Imported inside worker environments only (needs numpy, which every worker env has).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from converters.protocol import Timer, WorkerError, log


class Adapter(Protocol):
    framework: str

    def versions(self) -> dict: ...

    def build(self, model_id: str, num_classes: int): ...

    def state_shapes(self, model) -> dict[str, tuple]: ...

    def load(self, model, checkpoint: Path, candidates: list[dict],
             num_classes: int) -> dict: ...

    def preprocess(self, images: list[str], cfg: dict) -> np.ndarray: ...

    def forward(self, model, inputs: np.ndarray, batch_size: int) -> np.ndarray: ...

    def export(self, model, sample: np.ndarray, path: Path, opset: int,
               dynamic_batch: bool, workdir: Path) -> list[str] | None:
        """Write ONNX to `path`; return notes on any fix-up applied to the exported graph."""


# --------------------------------------------------------------------------- checkpoints
def require_file(path: Path) -> int:
    """Size of a checkpoint file; a missing or empty one is a WorkerError naming it."""
    path = Path(path)
    if not path.is_file():
        raise WorkerError("checkpoint_missing", f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise WorkerError("checkpoint_format", f"checkpoint {path.name} is empty (0 bytes)")
    return size


# --------------------------------------------------------------------------- strict keys
def compare_shapes(state: dict[str, tuple], model: dict[str, tuple],
                   ignore=lambda key: False) -> dict:
    """Missing / unexpected / shape-mismatched keys of a checkpoint against a model."""
    missing = sorted(k for k in model if k not in state and not ignore(k))
    unexpected = sorted(k for k in state if k not in model and not ignore(k))
    shapes = sorted((k, list(state[k]), list(model[k]))
                    for k in state if k in model and tuple(state[k]) != tuple(model[k]))
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shapes}


def is_clean(diff: dict) -> bool:
    return not (diff["missing"] or diff["unexpected"] or diff["shape_mismatch"])


def mismatch_text(diff: dict, limit: int = 5) -> str:
    parts = []
    for label in ("missing", "unexpected"):
        items = diff[label]
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label} keys: {', '.join(items[:limit])}{more}")
    items = diff["shape_mismatch"]
    if items:
        shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in items[:limit])
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        parts.append(f"{len(items)} shape mismatches: {shown}{more}")
    return "; ".join(parts)


def _class_count_hint(diff: dict, num_classes: int | None) -> str:
    """'The checkpoint has 1001 classes' when only the classifier's class dimension differs."""
    if num_classes is None or diff["missing"] or diff["unexpected"]:
        return ""
    seen = set()
    for _key, ck_shape, model_shape in diff["shape_mismatch"]:
        if num_classes not in model_shape or len(ck_shape) != len(model_shape):
            return ""
        axis = model_shape.index(num_classes)
        others = [a == b for i, (a, b) in enumerate(zip(ck_shape, model_shape)) if i != axis]
        if not all(others):
            return ""
        seen.add(ck_shape[axis])
    if len(seen) != 1:
        return ""
    return (f"Only the classifier differs: the checkpoint has {seen.pop()} classes, the entry "
            f"says num_classes: {num_classes}.")


def require_fit(adapter: Adapter, state: dict[str, tuple], model_shapes: dict[str, tuple],
                candidates: list[dict], layout: str, ignore=lambda key: False,
                num_classes: int | None = None) -> None:
    """Raise checkpoint_mismatch, naming the manifest entries whose models the state fits."""
    diff = compare_shapes(state, model_shapes, ignore)
    if is_clean(diff):
        return
    fits, built = [], {}
    for cand in candidates:
        key = (cand["model_id"], cand["num_classes"])
        if key not in built:
            try:
                built[key] = adapter.state_shapes(adapter.build(*key))
            except WorkerError:
                continue
        if is_clean(compare_shapes(state, built[key], ignore)):
            fits.append(cand["name"])
    hint = (f" The checkpoint's keys and shapes fit manifest entry "
            f"{', '.join(map(repr, fits))}: use that entry." if fits else
            f" No other {adapter.framework} entry in the manifest fits it either.")
    classes = _class_count_hint(diff, num_classes)
    if classes:
        hint = f" {classes}" + hint
    raise WorkerError(
        "checkpoint_mismatch",
        f"checkpoint does not fit the model (layout detected: {layout}): "
        f"{mismatch_text(diff)}.{hint}",
        {"missing": diff["missing"][:20], "unexpected": diff["unexpected"][:20],
         "shape_mismatch": diff["shape_mismatch"][:20],
         "counts": {k: len(v) for k, v in diff.items()}, "fits_entries": fits})


# --------------------------------------------------------------------------- the flow
def run(adapter: Adapter, job: dict, workdir: Path) -> dict:
    """build -> load -> preprocess -> reference logits -> export; returns result fields."""
    entry, timer = job["entry"], Timer()
    threads = int(job.get("threads") or os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # adapters size their thread pools from it
    result: dict = {"versions": adapter.versions(), "files": {}}

    with timer.stage("build"):
        log(f"building {entry['model_id']} with {adapter.framework}")
        model = adapter.build(entry["model_id"], entry["num_classes"])
    with timer.stage("load"):
        log(f"loading {job['checkpoint']}")
        result["checkpoint"] = adapter.load(model, Path(job["checkpoint"]),
                                            job.get("candidates", []), entry["num_classes"])
    with timer.stage("preprocess"):
        log(f"preprocessing {len(job['images'])} images with {adapter.framework}'s transforms")
        inputs = np.ascontiguousarray(adapter.preprocess(job["images"], entry["preprocess"]),
                                      dtype=np.float32)
        expected = [len(job["images"]), *entry["input_shape"]]
        if list(inputs.shape) != expected:
            raise WorkerError("preprocess", f"preprocessed tensor has shape "
                                            f"{list(inputs.shape)}, manifest says {expected}")
        np.save(workdir / "inputs.npy", inputs)
        result["files"]["inputs"] = "inputs.npy"
    with timer.stage("reference"):
        log(f"running {adapter.framework} eval forward")
        logits = adapter.forward(model, inputs, int(job.get("batch_size", 16)))
        np.save(workdir / "reference_logits.npy", np.asarray(logits, dtype=np.float32))
        result["files"]["reference_logits"] = "reference_logits.npy"
    with timer.stage("export"):
        opset, dynamic = entry["export"]["opset"], entry["export"]["dynamic_batch"]
        log(f"exporting ONNX opset {opset}, dynamic batch {dynamic}")
        notes = adapter.export(model, inputs[:1], workdir / "exported.onnx", opset, dynamic,
                               workdir)
        result["files"]["onnx"] = "exported.onnx"
        if notes:
            result["export_fixups"] = notes
    result["timings"] = timer.seconds
    return result
