"""What mmpretrain itself says about a model, read from the installed package: the eval
preprocessing (the model config's test pipeline and data preprocessor), the input size, the
published ImageNet-1k top-1/top-5 and the checkpoint URL (the model's metafile.yml).

Used by the worker's `describe` and `list` tasks (converters/worker_flow.py) so that a
manifest entry needs only name, source, model_id, num_classes and checkpoint. Runs in the
mmpretrain environment only. docs/manifest.md lists what is derived from where.
"""
from __future__ import annotations

import re
from pathlib import Path

from converters.protocol import WorkerError

TASK = "Image Classification"
# The test pipelines the preprocessing contract (deploy/preprocess.py) expresses for
# mmpretrain: decode, then one of ResizeEdge (short side) + CenterCrop, Resize (fixed size)
# [+ CenterCrop], or EfficientNetCenterCrop. Others are named as unsupported.
_SUPPORTED = ("LoadImageFromFile", "ResizeEdge", "Resize", "CenterCrop",
              "EfficientNetCenterCrop", "PackInputs")
_FORMS = "ResizeEdge short side + CenterCrop, fixed Resize [+ CenterCrop], EfficientNetCenterCrop"


def _package_root() -> Path:
    import mmpretrain

    return Path(mmpretrain.__file__).parent


def _relative(path: str) -> str:
    """A package file as `mmpretrain/.mim/configs/...` (the same on every machine)."""
    try:
        return "mmpretrain/" + str(Path(path).resolve().relative_to(_package_root().resolve()))
    except ValueError:
        return str(path)


def model_ids() -> list[str]:
    from mmpretrain import list_models

    return list(list_models(task=TASK))


def _metainfo(model_id: str):
    from mmpretrain.apis.model import ModelHub

    try:
        return ModelHub.get(model_id)
    except (ValueError, KeyError) as exc:
        raise WorkerError("model_id",
                          f"mmpretrain does not know model {model_id!r}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - mmpretrain's own config does not load
        raise WorkerError("unsupported", f"mmpretrain cannot load the config of {model_id!r}: "
                                         f"{type(exc).__name__}: {exc}") from exc


def classes_part(model_config) -> str | None:
    """Which part of an mmpretrain model config sets its class count: the head's (most), or
    the backbone's where the classifier is the backbone's own (VGG, InceptionV3: their head is
    a plain ClsHead over the backbone's logits); None for neither."""
    for part in ("head", "backbone"):
        try:
            int(model_config[part]["num_classes"])
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
        return part
    return None


def family(model_id: str) -> str:
    """The config folder the model lives in (res2net, deit, swin_transformer, ...)."""
    from mmpretrain.apis.model import ModelHub

    ModelHub._register_mmpretrain_models()
    config = ModelHub._models_dict[model_id.lower()].config   # a path until ModelHub.get
    return Path(config if isinstance(config, str) else config.filename).parent.name


def dataset(model_id: str) -> str | None:
    """The dataset mmpretrain's metafile gives the model's results on (ImageNet-1k for 436 of
    its 448 classifiers; CIFAR-10/100 and CUB-200-2011 for the rest); None where it gives
    none or several."""
    from mmpretrain.apis.model import ModelHub

    ModelHub._register_mmpretrain_models()
    results = ModelHub._models_dict[model_id.lower()].results or []
    named = {r.dataset for r in results if getattr(r, "dataset", None)}
    return named.pop() if len(named) == 1 else None


def _square(size, model_id: str, what: str) -> int:
    """An int, or a list/tuple of equal ints; WorkerError('unsupported') otherwise."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise WorkerError("unsupported", f"{model_id}: non-square {what} {list(size)}")
        size = size[0]
    return int(size)


def _resize(by_type: dict, model_id: str) -> dict:
    """The manifest's resize fields (and crop) for the config's resize steps."""
    if "EfficientNetCenterCrop" in by_type:
        step = by_type["EfficientNetCenterCrop"]
        if by_type.keys() & {"ResizeEdge", "Resize", "CenterCrop"}:
            raise WorkerError("unsupported", f"{model_id}: EfficientNetCenterCrop after "
                                             "another resize or crop")
        return {"crop_padding": int(step.get("crop_padding", 32)),
                "crop": int(step["crop_size"]),
                "interpolation": step.get("interpolation", "bicubic"),
                "resize_backend": step.get("backend", "cv2")}
    if "ResizeEdge" in by_type and "Resize" not in by_type:
        step = by_type["ResizeEdge"]
        if step.get("edge", "short") != "short":
            raise WorkerError("unsupported", f"{model_id}: ResizeEdge edge={step['edge']!r} "
                                             "(the contract resizes the short side)")
        form = {"resize_short": int(step["scale"])}
    elif "Resize" in by_type and "ResizeEdge" not in by_type:
        step = by_type["Resize"]
        if step.get("keep_ratio") or step.get("scale") is None:
            raise WorkerError("unsupported", f"{model_id}: Resize with keep_ratio or "
                                             "scale_factor (the contract's fixed resize is "
                                             "scale=N, to NxN)")
        form = {"resize_fixed": _square(step["scale"], model_id, "Resize scale")}
    else:
        raise WorkerError("unsupported", f"{model_id}: test pipeline has "
                                         f"{sorted(by_type)}, not one of: {_FORMS}")
    crop = by_type.get("CenterCrop", {}).get("crop_size")
    if crop is None and "resize_short" in form:
        raise WorkerError("unsupported", f"{model_id}: ResizeEdge without CenterCrop")
    form["crop"] = (_square(crop, model_id, "crop") if crop is not None
                    else form["resize_fixed"])
    return {**form, "interpolation": step.get("interpolation", "bilinear"),
            "resize_backend": step.get("backend", "cv2")}


def preprocess_from_config(config, model_id: str) -> dict:
    """The manifest `preprocess` block equal to the config's test pipeline + data
    preprocessor; WorkerError('unsupported') naming the step the contract cannot express."""
    try:
        steps = list(config.test_dataloader.dataset.pipeline)
    except AttributeError:
        raise WorkerError("unsupported", f"{model_id}: its config has no "
                                         "test_dataloader.dataset.pipeline") from None
    other = [s.get("type") for s in steps if s.get("type") not in _SUPPORTED]
    if other:
        raise WorkerError("unsupported", f"{model_id}: test pipeline step "
                                         f"{', '.join(map(str, other))} has no equivalent in "
                                         f"the preprocessing contract (supported: {_FORMS})")
    by_type = {s["type"]: s for s in steps}
    if len(by_type) != len(steps) or "LoadImageFromFile" not in by_type:
        raise WorkerError("unsupported", f"{model_id}: test pipeline "
                                         f"{[s['type'] for s in steps]} (the contract needs one "
                                         "LoadImageFromFile and one resize form)")
    decode = by_type["LoadImageFromFile"].get("imdecode_backend", "cv2")
    form = _resize(by_type, model_id)
    pre = config.get("data_preprocessor") or config.model.get("data_preprocessor") or {}
    kind = pre.get("type", "ClsDataPreprocessor")
    if kind not in ("ClsDataPreprocessor", "mmpretrain.ClsDataPreprocessor"):
        raise WorkerError("unsupported", f"{model_id}: data preprocessor {kind!r}")
    return {"pipeline": "mmpretrain", "decode": decode, **form,
            "mean": [float(m) for m in pre.get("mean", (0.0, 0.0, 0.0))],
            "std": [float(s) for s in pre.get("std", (1.0, 1.0, 1.0))],
            "scale": 1.0, "to_rgb": bool(pre.get("to_rgb", False))}


def _published(info, model_id: str) -> tuple[dict | None, str | None]:
    import mmpretrain

    for result in info.results or []:
        metrics = result.metrics or {}
        if result.dataset == "ImageNet-1k" and {"Top 1 Accuracy", "Top 5 Accuracy"} <= set(
                metrics):
            where = _relative(result.filepath)
            return ({"top1": float(metrics["Top 1 Accuracy"]),
                     "top5": float(metrics["Top 5 Accuracy"]),
                     "reference": f"mmpretrain {mmpretrain.__version__} {where} ({model_id})"},
                    where)
    return None, None


def checkpoint_spec(url: str) -> dict:
    """{url, sha256_prefix} when the file name carries OpenMMLab's 8 hex digits, else
    {url, digest_unpublished}."""
    found = re.search(r"-([0-9a-f]{8})\.pth$", url)
    return ({"url": url, "sha256_prefix": found.group(1)} if found else
            {"url": url, "digest_unpublished": True})


def describe(model_id: str) -> dict:
    info = _metainfo(model_id)
    config = info.config
    config_file = _relative(config.filename)
    part = classes_part(config.model)
    if part is None:
        raise WorkerError("unsupported", f"{model_id}: its config has no "
                                         "model.head.num_classes or model.backbone.num_classes"
                                         " (not a classifier)")
    out = {"model_id": model_id, "family": Path(config.filename).parent.name,
           "num_classes": int(config.model[part].num_classes),
           "derived_from": {"num_classes": f"{config_file} (model.{part}.num_classes)"}}
    out["preprocess"] = preprocess_from_config(config, model_id)
    out["input_shape"] = [3, out["preprocess"]["crop"], out["preprocess"]["crop"]]
    out["derived_from"]["preprocess"] = (f"{config_file} (test_dataloader.dataset.pipeline, "
                                         "data_preprocessor)")
    out["derived_from"]["input_shape"] = f"{config_file} (the crop size of its test pipeline)"
    published, where = _published(info, model_id)
    if published:
        out["published"] = published
        out["derived_from"]["published"] = where
    if info.weights:
        out["checkpoint"] = checkpoint_spec(info.weights)
        out["derived_from"]["checkpoint"] = _relative(
            (info.results or [None])[0].filepath) if info.results else "mmpretrain model index"
    return out
