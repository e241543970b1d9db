"""mmpretrain worker: build with mmpretrain's code, load strictly, export with torch.onnx.

Runs only in the mmpretrain environment:
    .venvs/mmpretrain/bin/python -m converters.mmpretrain.worker WORKDIR/job.json

Tasks (job["tasks"]):
  export     build + load + torch.onnx.export -> WORKDIR/exported.onnx
  reference  preprocess job["images"] with mmpretrain's test transforms -> inputs.npy,
             then the model's eval forward on those tensors -> reference_logits.npy
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from converters.protocol import Timer, WorkerError, log, worker_main

warnings.filterwarnings("ignore")  # mmcv-lite warns about ops it does not ship


def versions() -> dict:
    import mmcv
    import mmengine
    import mmpretrain
    import numpy
    import onnx
    import torch
    import torchvision

    return {"framework": "mmpretrain", "mmpretrain": mmpretrain.__version__,
            "mmengine": mmengine.__version__, "mmcv-lite": mmcv.__version__,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "onnx": onnx.__version__, "numpy": numpy.__version__}


def build_model(model_id: str, num_classes: int):
    """An mmpretrain ImageClassifier from its model-index name, random init, eval mode."""
    from mmpretrain import get_model

    try:
        model = get_model(model_id, pretrained=False, head=dict(num_classes=num_classes))
    except (ValueError, KeyError) as exc:
        raise WorkerError("model_id", f"mmpretrain does not know model {model_id!r}: {exc}")
    return model.eval()


def build_preprocess(cfg: dict):
    """mmpretrain's own test pipeline + data preprocessor, configured from the manifest."""
    from mmengine.dataset import Compose
    from mmpretrain.models import ClsDataPreprocessor
    from mmpretrain.registry import TRANSFORMS
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    if cfg.get("decode", "cv2") != "cv2":
        raise WorkerError("preprocess", f"mmpretrain decodes with cv2, manifest asks "
                                        f"{cfg['decode']!r}")
    pipeline = Compose([TRANSFORMS.build(t) for t in (
        dict(type="LoadImageFromFile", imdecode_backend="cv2"),
        dict(type="ResizeEdge", scale=cfg["resize_short"], edge="short",
             backend=cfg.get("resize_backend", "pillow"), interpolation=cfg["interpolation"]),
        dict(type="CenterCrop", crop_size=cfg["crop"]),
        dict(type="PackInputs"),
    )])
    scale = float(cfg.get("scale", 1.0))
    data_preprocessor = ClsDataPreprocessor(
        mean=[m / scale for m in cfg["mean"]], std=[s / scale for s in cfg["std"]],
        to_rgb=bool(cfg.get("to_rgb", True)))
    return pipeline, data_preprocessor


def preprocess(images: list[str], cfg: dict):
    import torch

    pipeline, data_preprocessor = build_preprocess(cfg)
    tensors = []
    for path in images:
        packed = pipeline(dict(img_path=path))
        tensors.append(packed["inputs"])
    with torch.no_grad():
        batch = data_preprocessor({"inputs": tensors}, training=False)["inputs"]
    return batch.float().contiguous()


def load_weights(model, checkpoint: str, candidates: list[dict]) -> dict:
    """Strictly load `checkpoint` into `model`; on mismatch name the entry that fits."""
    from converters.mmpretrain import checkpoint as ck

    state, info = ck.load_checkpoint(Path(checkpoint))
    model_state = model.state_dict()
    mapped, layout = ck.map_keys(state, set(model_state))
    info["layout"] = layout
    diff = ck.compare(mapped, model_state)
    if not ck.is_clean(diff):
        fits = _entries_that_fit(mapped, candidates)
        hint = (f" The checkpoint's keys and shapes fit manifest entry "
                f"{', '.join(map(repr, fits))}: use that entry." if fits else
                " No other mmpretrain entry in the manifest fits it either.")
        raise WorkerError(
            "checkpoint_mismatch",
            f"checkpoint does not fit the model (layout detected: {layout}): "
            f"{ck.mismatch_text(diff)}.{hint}",
            {"missing": diff["missing"][:20], "unexpected": diff["unexpected"][:20],
             "shape_mismatch": diff["shape_mismatch"][:20],
             "counts": {k: len(v) for k, v in diff.items()}, "fits_entries": fits})
    # Files from before BatchNorm tracked batches lack num_batches_tracked: keep the model's.
    for key, value in model_state.items():
        if key.endswith("num_batches_tracked") and key not in mapped:
            mapped[key] = value
    model.load_state_dict(mapped, strict=True)
    return info


def _entries_that_fit(mapped: dict, candidates: list[dict]) -> list[str]:
    from converters.mmpretrain import checkpoint as ck

    fits, built = [], {}
    for cand in candidates:
        key = (cand["model_id"], cand["num_classes"])
        if key not in built:
            try:
                built[key] = build_model(*key).state_dict()
            except WorkerError:
                continue
        if ck.is_clean(ck.compare(mapped, built[key])):
            fits.append(cand["name"])
    return fits


class _Logits:
    """Wraps ImageClassifier so the traced graph is tensor in -> logits out."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input):  # noqa: A002 - the ONNX input name
                return self.inner(input, mode="tensor")

        return Wrapper(model).eval()


def export_onnx(model, sample, path: Path, opset: int, dynamic_batch: bool) -> None:
    import torch

    dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with torch.no_grad():
            torch.onnx.export(_Logits(model), (sample,), str(path), dynamo=False,
                              opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is an export error
        raise WorkerError("export", f"torch.onnx.export failed at opset {opset}: "
                                    f"{type(exc).__name__}: {exc}") from exc


def forward(model, inputs, batch_size: int):
    import torch

    outs = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            outs.append(model(inputs[start:start + batch_size], mode="tensor"))
    return torch.cat(outs).numpy()


def handle(job: dict, workdir: Path) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(int(job.get("threads") or os.cpu_count() or 1))
    entry, timer = job["entry"], Timer()
    result: dict = {"versions": versions(), "files": {}}

    with timer.stage("build"):
        log(f"building {entry['model_id']} with mmpretrain")
        model = build_model(entry["model_id"], entry["num_classes"])
    with timer.stage("load"):
        log(f"loading {job['checkpoint']}")
        result["checkpoint"] = load_weights(model, job["checkpoint"], job.get("candidates", []))
    with timer.stage("preprocess"):
        log(f"preprocessing {len(job['images'])} images with mmpretrain's test pipeline")
        inputs = preprocess(job["images"], entry["preprocess"])
        expected = [len(job["images"]), *entry["input_shape"]]
        if list(inputs.shape) != expected:
            raise WorkerError("preprocess", f"preprocessed tensor has shape "
                                            f"{list(inputs.shape)}, manifest says {expected}")
        np.save(workdir / "inputs.npy", inputs.numpy())
        result["files"]["inputs"] = "inputs.npy"
    with timer.stage("reference"):
        log("running mmpretrain eval forward")
        logits = forward(model, inputs, int(job.get("batch_size", 16)))
        np.save(workdir / "reference_logits.npy", logits)
        result["files"]["reference_logits"] = "reference_logits.npy"
    with timer.stage("export"):
        opset, dyn = entry["export"]["opset"], entry["export"]["dynamic_batch"]
        log(f"torch.onnx.export opset {opset}, dynamic batch {dyn}")
        export_onnx(model, inputs[:1], workdir / "exported.onnx", opset, dyn)
        result["files"]["onnx"] = "exported.onnx"
    result["timings"] = timer.seconds
    return result


if __name__ == "__main__":
    worker_main(handle)
