"""What mmpretrain itself says about a model, read from the installed package: the eval
preprocessing (the model config's test pipeline and data preprocessor), the input size, the
published ImageNet-1k top-1/top-5 and the checkpoint URL (the model's metafile.yml).

Used by the worker's `describe` and `list` tasks (converters/worker_flow.py) so that a
manifest entry needs only name, source, model_id, num_classes and checkpoint. Runs in the
mmpretrain environment only. README "Adding a model" lists what is derived from where.
"""
from __future__ import annotations

import re
from pathlib import Path

from converters.protocol import WorkerError

TASK = "Image Classification"
# The only test pipeline the preprocessing contract (deploy/preprocess.py) expresses for
# mmpretrain: decode, resize the short side, centre crop. Others are named as unsupported.
_SUPPORTED = ("LoadImageFromFile", "ResizeEdge", "CenterCrop", "PackInputs")


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
        raise WorkerError("model_id", f"mmpretrain does not know model {model_id!r}: {exc}")
    except Exception as exc:  # noqa: BLE001 - mmpretrain's own config does not load
        raise WorkerError("unsupported", f"mmpretrain cannot load the config of {model_id!r}: "
                                         f"{type(exc).__name__}: {exc}") from exc


def family(model_id: str) -> str:
    """The config folder the model lives in (res2net, deit, swin_transformer, ...)."""
    from mmpretrain.apis.model import ModelHub

    ModelHub._register_mmpretrain_models()
    config = ModelHub._models_dict[model_id.lower()].config   # a path until ModelHub.get
    return Path(config if isinstance(config, str) else config.filename).parent.name


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
                                         "the preprocessing contract (supported: ResizeEdge "
                                         "short side + CenterCrop)")
    by_type = {s["type"]: s for s in steps}
    if "ResizeEdge" not in by_type or "CenterCrop" not in by_type:
        raise WorkerError("unsupported", f"{model_id}: test pipeline "
                                         f"{[s['type'] for s in steps]} lacks ResizeEdge + "
                                         "CenterCrop")
    decode = by_type.get("LoadImageFromFile", {}).get("imdecode_backend", "cv2")
    resize, crop = by_type["ResizeEdge"], by_type["CenterCrop"]["crop_size"]
    if resize.get("edge", "short") != "short":
        raise WorkerError("unsupported", f"{model_id}: ResizeEdge edge={resize['edge']!r} "
                                         "(the contract resizes the short side)")
    if isinstance(crop, (list, tuple)):
        if len(set(crop)) != 1:
            raise WorkerError("unsupported", f"{model_id}: non-square crop {list(crop)}")
        crop = crop[0]
    pre = config.get("data_preprocessor") or config.model.get("data_preprocessor") or {}
    kind = pre.get("type", "ClsDataPreprocessor")
    if kind not in ("ClsDataPreprocessor", "mmpretrain.ClsDataPreprocessor"):
        raise WorkerError("unsupported", f"{model_id}: data preprocessor {kind!r}")
    if not pre.get("to_rgb", False):
        raise WorkerError("unsupported", f"{model_id}: the model takes BGR input (data "
                                         "preprocessor to_rgb: false); the preprocessing "
                                         "contract feeds RGB")
    return {"pipeline": "mmpretrain", "decode": decode,
            "resize_short": int(resize["scale"]), "crop": int(crop),
            "interpolation": resize.get("interpolation", "bilinear"),
            "resize_backend": resize.get("backend", "cv2"),
            "mean": [float(m) for m in pre.get("mean", (0.0, 0.0, 0.0))],
            "std": [float(s) for s in pre.get("std", (1.0, 1.0, 1.0))],
            "scale": 1.0, "to_rgb": True}


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
    try:
        num_classes = int(config.model.head.num_classes)
    except (AttributeError, KeyError, TypeError):
        raise WorkerError("unsupported", f"{model_id}: its config has no "
                                         "model.head.num_classes (not a classifier head)"
                          ) from None
    out = {"model_id": model_id, "family": Path(config.filename).parent.name,
           "num_classes": num_classes, "derived_from": {}}
    out["preprocess"] = preprocess_from_config(config, model_id)
    out["input_shape"] = [3, out["preprocess"]["crop"], out["preprocess"]["crop"]]
    out["derived_from"]["preprocess"] = (f"{config_file} (test_dataloader.dataset.pipeline, "
                                         "data_preprocessor)")
    out["derived_from"]["input_shape"] = f"{config_file} (CenterCrop crop_size)"
    published, where = _published(info, model_id)
    if published:
        out["published"] = published
        out["derived_from"]["published"] = where
    if info.weights:
        out["checkpoint"] = checkpoint_spec(info.weights)
        out["derived_from"]["checkpoint"] = _relative(
            (info.results or [None])[0].filepath) if info.results else "mmpretrain model index"
    return out
