"""What PaddleClas itself says about a model, read from the installed package: the eval
preprocessing (deploy/configs/inference_cls.yaml, the config PaddleClas's own `paddleclas`
predictor uses for every ImageNet model) and the checkpoint URL (the MODEL_URLS table of the
model's backbone file). For a model whose own config evaluates at another input size than
that one inference config (the 384- and 256-px ones), the eval transforms come from the
model's own config in PaddleClas's repository, which the package does not ship
(eval_configs.json, written by scripts/paddleclas_eval_configs.py with the file and commit).
The pip package ships no accuracy table, so nothing is published here: an entry that wants
the published-top-1 gate writes `published:` itself.

Runs in the paddle environment only. docs/manifest.md lists what comes from where.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from converters.protocol import WorkerError

CONFIG = "deploy/configs/inference_cls.yaml"
EVAL_CONFIGS = Path(__file__).with_name("eval_configs.json")
# PaddleClas's ResizeImage names Pillow "pil"; the manifest says "pillow".
_BACKENDS = {"pil": "pillow", "cv2": "cv2"}


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


def own_config(model_id: str) -> tuple[dict | None, str]:
    """The model's own eval transforms from eval_configs.json, and where they come from."""
    import json

    data = json.loads(EVAL_CONFIGS.read_text())
    found = data["models"].get(model_id)
    where = (f"PaddleClas {found['file']} at {data['commit'][:12]} "
             "(DataLoader.Eval.dataset.transform_ops)") if found else ""
    return found, where


def scale_of(value) -> float:
    """NormalizeImage's scale: a number, or "1.0/255.0" as PaddleClas's configs write it."""
    if isinstance(value, str):
        top, _, bottom = value.partition("/")
        return float(top) / float(bottom or 1)
    return float(value)


def _block(ops: dict) -> dict:
    """The manifest `preprocess` block for PaddleClas's resize, crop and normalize ops."""
    return {"pipeline": "paddleclas", "decode": "cv2",
            "resize_short": int(ops["resize_short"]), "crop": int(ops["crop"]),
            # ResizeImage without `interpolation` calls cv2.resize's default, INTER_LINEAR.
            "interpolation": ops.get("interpolation") or "bilinear",
            "resize_backend": _BACKENDS[ops.get("backend") or "cv2"],
            "mean": [float(m) for m in ops["mean"]], "std": [float(s) for s in ops["std"]],
            "scale": scale_of(ops.get("scale", 1 / 255.0)),
            "to_rgb": bool(ops.get("to_rgb", True))}


def preprocess_from_config(model_id: str) -> tuple[dict, str]:
    """The manifest `preprocess` block from inference_cls.yaml, or from the model's own
    config where that evaluates at another crop; WorkerError('unsupported') when neither
    fits (a model named for another size with no own config the contract can express)."""
    import yaml

    path = _package_root() / CONFIG
    ops = {}
    for op in yaml.safe_load(path.read_text())["PreProcess"]["transform_ops"]:
        ops.update({k: v or {} for k, v in op.items()})
    resize, crop, norm = ops["ResizeImage"], ops["CropImage"], ops["NormalizeImage"]
    size = int(crop["size"])
    own, where = own_config(model_id)
    if own and "unsupported" not in own and own["crop"] != size:
        return _block(own), where
    named = re.search(r"_(\d{3})(?:_|$)", model_id)
    if named and int(named.group(1)) != size and not (own and "unsupported" not in own):
        if own:
            raise WorkerError("unsupported", f"{model_id}: {where} evaluates with "
                                             f"{', '.join(own['unsupported'])}, which the "
                                             "preprocessing contract cannot express")
        raise WorkerError("unsupported", f"{model_id} is named for {named.group(1)} px "
                                         f"input, but PaddleClas's package ships only "
                                         f"{CONFIG} (resize {resize['resize_short']}, crop "
                                         f"{size}) and its repository no config of it: "
                                         "write `preprocess` and `input_shape` in the entry")
    return (_block({**resize, "crop": size, **norm}),
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
                             "input_shape": f"{where.split(' (')[0]} (CropImage size)",
                             "checkpoint": f"{_relative(module)} (MODEL_URLS)"},
            "notes": ["PaddleClas's package publishes no accuracy table: write `published:` "
                      "in the entry to gate the source's top-1 against it"]}
