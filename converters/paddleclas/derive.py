"""What PaddleClas itself says about a model, read from the installed package: the eval
preprocessing (deploy/configs/inference_cls.yaml, the config PaddleClas's own `paddleclas`
predictor uses for every ImageNet model) and the checkpoint URL (the MODEL_URLS table of the
model's backbone file). The pip package ships no accuracy table, so nothing is published
here: an entry that wants the published-top-1 gate writes `published:` itself.

Runs in the paddle environment only. README "Adding a model" lists what comes from where.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from converters.protocol import WorkerError

CONFIG = "deploy/configs/inference_cls.yaml"


def _package_root() -> Path:
    import paddleclas

    return Path(paddleclas.__file__).parent


def _urls() -> dict[str, tuple[str, str]]:
    """model id -> (backbone module name, checkpoint URL), for every constructor in
    ppcls.arch.backbone whose module publishes a URL for it."""
    from paddleclas.ppcls.arch import backbone

    found = {}
    for name in dir(backbone):
        factory = getattr(backbone, name)
        if name.startswith("_") or not callable(factory):
            continue
        module = sys.modules.get(getattr(factory, "__module__", "") or "")
        urls = getattr(module, "MODEL_URLS", None)
        if isinstance(urls, dict) and isinstance(urls.get(name), str):
            found[name] = (module.__name__, urls[name])
    return found


def model_ids() -> list[str]:
    return sorted(_urls())


def _relative(module: str) -> str:
    return module.replace(".", "/") + ".py"


def preprocess_from_config(model_id: str) -> tuple[dict, str]:
    """The manifest `preprocess` block from inference_cls.yaml; WorkerError('unsupported')
    when the model is named for another input size than the config's crop."""
    import yaml

    path = _package_root() / CONFIG
    ops = {}
    for op in yaml.safe_load(path.read_text())["PreProcess"]["transform_ops"]:
        ops.update({k: v or {} for k, v in op.items()})
    resize, crop, norm = ops["ResizeImage"], ops["CropImage"], ops["NormalizeImage"]
    size = int(crop["size"])
    named = re.search(r"_(\d{3})(?:_|$)", model_id)
    if named and int(named.group(1)) != size:
        raise WorkerError("unsupported", f"{model_id} is named for {named.group(1)} px input, "
                                         f"but PaddleClas's package ships only {CONFIG} "
                                         f"(resize {resize['resize_short']}, crop {size}): "
                                         "write `preprocess` and `input_shape` in the entry")
    scale = norm.get("scale", 1 / 255.0)
    if isinstance(scale, str):  # "1.0/255.0", as PaddleClas's configs write it
        top, _, bottom = scale.partition("/")
        scale = float(top) / float(bottom or 1)
    return ({"pipeline": "paddleclas", "decode": "cv2",
             "resize_short": int(resize["resize_short"]), "crop": size,
             # ResizeImage without `interpolation` calls cv2.resize's default, INTER_LINEAR.
             "interpolation": resize.get("interpolation") or "bilinear",
             "resize_backend": resize.get("backend", "cv2"),
             "mean": [float(m) for m in norm["mean"]], "std": [float(s) for s in norm["std"]],
             "scale": scale, "to_rgb": True},
            f"paddleclas/{CONFIG} (PreProcess.transform_ops)")


def family(model_id: str) -> str:
    return _urls()[model_id][0].rsplit(".", 1)[-1]


def describe(model_id: str) -> dict:
    urls = _urls()
    if model_id not in urls:
        raise WorkerError("model_id", f"PaddleClas has no model {model_id!r} with a published "
                                      "checkpoint (ppcls.arch.backbone MODEL_URLS)")
    module, url = urls[model_id]
    pre, where = preprocess_from_config(model_id)
    return {"model_id": model_id, "family": module.rsplit(".", 1)[-1], "num_classes": 1000,
            "preprocess": pre, "input_shape": [3, pre["crop"], pre["crop"]],
            "checkpoint": {"url": url, "digest_unpublished": True},
            "derived_from": {"preprocess": where,
                             "input_shape": f"paddleclas/{CONFIG} (CropImage size)",
                             "checkpoint": f"{_relative(module)} (MODEL_URLS)"},
            "notes": ["PaddleClas's package publishes no accuracy table: write `published:` "
                      "in the entry to gate the source's top-1 against it"]}
