"""The localize stage: which layer of the network an ONNX model first parts from its source.

Runs the source's worker once more (task `capture`: build, load, the source's own
preprocessing of LOCALIZE_IMAGES images as one batch, forward hooks on every conv / linear /
norm layer), then verify/localize.py aligns those layers with the ONNX model's weighted nodes
and compares their outputs a chunk at a time. Used by the pipeline when an fp32 logit check
fails (and with --localize on every entry), and by `pipeline.py localize` for any ONNX file.
Imports no deep-learning framework.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.protocol import CaptureJob, PipelineError
from converters.registry import SOURCES
from converters.limits import WorkerLimits
from converters.runner import WorkerFailed, run_worker
from manifests.loader import Entry
from verify.localize import LAYER_RTOL, localize

# fp32 value checks whose failure calls for a localisation (the signature checks do not:
# there the model cannot even be run on the same inputs).
VALUE_CHECKS = ("finite", "max_abs_diff", "cosine_min", "top1_agreement", "top5_agreement",
                "logits_shape", "batch_independent")


# Images the localiser compares at once. More than one, so that a graph that holds the batch
# it was traced at (right on one image, wrong on the others of a batch) shows where it parts.
LOCALIZE_IMAGES = 4


class LocalizeFailed(PipelineError):
    """The localisation could not run (the capture worker failed)."""


def localize_model(entry: Entry, model_path: Path, checkpoint: Path, images: list[Path],
                   workdir: Path, threads: int | None = None, timeout: float = 1800,
                   limits: WorkerLimits | None = None, rtol: float = LAYER_RTOL) -> dict:
    """report['verification']['localization'] for `model_path` against the entry's source,
    on IMAGES as one batch. `limits`: the worker's (default: read from the environment now,
    not when this module was imported)."""
    limits = limits or WorkerLimits()
    capture_dir = workdir / "localize"
    capture_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_worker(SOURCES[entry.source], CaptureJob(
            entry=entry.data, checkpoint=str(checkpoint),
            images=[str(image) for image in images], threads=threads,
            max_image_pixels=limits.max_image_pixels,
        ), capture_dir, timeout=timeout, memory_limit=limits.memory_limit())
    except WorkerFailed as exc:
        raise LocalizeFailed(exc.kind, f"capturing the source's layer outputs failed: "
                                       f"{exc.message}") from None
    inputs = np.load(capture_dir / result["files"]["inputs"])
    found = localize(model_path, inputs, result["layers"], capture_dir, rtol=rtol,
                     threads=threads)
    found["image_names"] = [images[i].name for i in result["images_used"]]
    found["image"] = found["image_names"][0]   # the first (reports before several images)
    found["timings"] = result.get("timings", {})
    # The source's layers are those of the form the pipeline exports (its own inference
    # switch, as in convert); said, so that a reader knows what "agrees" was measured against.
    found["source_form"] = result.get("source_form") or []
    if found["source_form"]:
        form = found["source_form"][0].split(";")[0].removeprefix("exported ")
        found["summary"] += f" (source layers in the form exported: {form})"
    return found
