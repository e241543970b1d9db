"""What MindCV itself says about a model, read from the installed package: the eval
preprocessing and input size (the model's default cfg: input_size, crop_pct, interpolation,
mean, std, with transforms_imagenet_eval's defaults where the cfg is silent) and the
checkpoint URL (the cfg's url). Where MindCV's own per-model config (its repository, not the
wheel: eval_configs.json, written by scripts/mindcv_eval_configs.py with the file and commit)
evaluates the model at another size, that config's settings are used instead, and the report
names the file and commit (mobilevit: no size in its default cfg, 256 px in its config). The
package ships no accuracy table, so nothing is published here: an entry that wants the
published-top-1 gate writes `published:` itself.

Runs in the mindspore environment only. docs/manifest.md lists what comes from where.
"""
from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

from converters.protocol import WorkerError

EVAL_CONFIGS = Path(__file__).with_name("eval_configs.json")


@functools.lru_cache(maxsize=1)
def _eval_configs() -> dict:
    return json.loads(EVAL_CONFIGS.read_text(encoding="utf-8"))


def own_config(model_id: str) -> tuple[dict, str] | None:
    """(the settings MindCV's validate.py evaluates MODEL_ID with, 'file @ commit'), or
    None when its repository has no config for it."""
    data = _eval_configs()
    found = data["models"].get(model_id)
    if found is None:
        return None
    return found, f"{data['repository']} {found['file']} @ {data['commit'][:12]}"


def model_ids() -> list[str]:
    import mindcv

    return list(mindcv.list_models())


def _cfg(model_id: str) -> dict:
    from mindcv.models import registry

    if model_id not in registry._model_entrypoints:
        raise WorkerError("model_id", f"mindcv has no model {model_id!r}")
    return dict(registry._model_pretrained_cfgs.get(model_id) or {})


def family(model_id: str) -> str:
    from mindcv.models import registry

    return registry._model_to_module.get(model_id, "?")


def constructor_size(model_id: str) -> tuple[int, str] | None:
    """(the input size the model's class defaults to, where that is written) for a model
    whose cfg gives none and whose entry point does not pass one: mindcv's swinv2 cfgs have
    no input_size, and SwinTransformerV2 builds its windows for image_size=256 (at 224 its
    forward fails). None when the class has no such default or the entry point sets it."""
    import inspect

    from mindcv.models import registry

    entry = registry._model_entrypoints[model_id]
    try:
        code = inspect.getsource(entry)
    except (OSError, TypeError):
        return None
    called = re.search(r"model\s*=\s*(\w+)\(", code)
    if called is None or re.search(r"\b(image_size|img_size)\s*=", code[called.start():]):
        return None
    cls = getattr(inspect.getmodule(entry), called.group(1), None)
    if not inspect.isclass(cls):
        return None
    params = inspect.signature(cls.__init__).parameters
    for name in ("image_size", "img_size"):
        default = params[name].default if name in params else inspect.Parameter.empty
        if isinstance(default, int):
            return default, (f"mindcv/models/{family(model_id)}.py "
                             f"({cls.__name__}'s {name}={default})")
    return None


def preprocess_from_cfg(model_id: str, cfg: dict) -> dict:
    """The manifest `preprocess` block equal to what mindcv's transforms_imagenet_eval does
    with this cfg (the resize side as it computes it: floor(crop / crop_pct))."""
    from mindcv.data.constants import DEFAULT_CROP_PCT

    size = tuple(cfg.get("input_size") or (3, 224, 224))
    if len(size) != 3 or size[1] != size[2]:
        raise WorkerError("unsupported", f"{model_id}: non-square input_size {list(size)}")
    crop, pct = int(size[1]), float(cfg.get("crop_pct") or DEFAULT_CROP_PCT)
    resize = int(math.floor(crop / pct))
    if resize < crop:
        raise WorkerError("unsupported", f"{model_id}: crop_pct {pct} resizes to {resize} px, "
                                         f"below the {crop} px crop (the contract crops inside "
                                         "the image)")
    # The worker passes crop_pct = crop / resize_short back to mindcv: it must land on the
    # same side, or the tensor would silently differ.
    if int(math.floor(crop / (crop / resize))) != resize:
        raise WorkerError("unsupported", f"{model_id}: crop_pct {pct} does not round-trip "
                                         f"through resize {resize} / crop {crop}")
    interpolation = cfg.get("interpolation") or "bilinear"
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise WorkerError("unsupported", f"{model_id}: interpolation {interpolation!r}")
    # Most cfgs give mean/std on 0..1 (timm's convention), a few (volo) on 0..255 already;
    # mindcv's Normalize works on 0..255.
    mean = [float(m) for m in cfg.get("mean") or (0.485, 0.456, 0.406)]
    std = [float(s) for s in cfg.get("std") or (0.229, 0.224, 0.225)]
    if max(mean) <= 1.0:
        mean, std = [m * 255 for m in mean], [s * 255 for s in std]
    return {"pipeline": "mindcv", "decode": "mindspore", "resize_short": resize, "crop": crop,
            "interpolation": interpolation, "mean": mean, "std": std, "scale": 1.0,
            "to_rgb": True}


def describe(model_id: str) -> dict:
    from mindcv.models import registry

    cfg = _cfg(model_id)
    module = registry._model_to_module.get(model_id, "?")
    where = f"mindcv/models/{module}.py (default_cfgs[{model_id!r}])"
    size_from = f"{where} (input_size)"
    if not cfg.get("input_size") and (built := constructor_size(model_id)) is not None:
        cfg["input_size"], size_from = (3, built[0], built[0]), built[1]
    pre = preprocess_from_cfg(model_id, cfg)
    sources = {"preprocess": f"{where} + mindcv/data/transforms_factory.py "
                             "(transforms_imagenet_eval defaults)",
               "input_shape": size_from}
    own = own_config(model_id)
    if own is not None and own[0]["image_resize"] != pre["crop"]:
        settings, source = own
        size = settings["image_resize"]
        pre = preprocess_from_cfg(model_id, {
            "input_size": (3, size, size), "crop_pct": settings["crop_pct"],
            "interpolation": settings["interpolation"], "mean": settings["mean"],
            "std": settings["std"]})
        sources = {"preprocess": f"{source} (image_resize, crop_pct, interpolation, mean, "
                                 "std: what MindCV's validate.py evaluates it with)",
                   "input_shape": f"{source} (image_resize)"}
    out = {"model_id": model_id, "family": module,
           "num_classes": int(cfg.get("num_classes") or 1000),
           "preprocess": pre, "input_shape": [3, pre["crop"], pre["crop"]],
           "derived_from": sources,
           "notes": ["MindCV's package publishes no accuracy table: write `published:` in "
                     "the entry to gate the source's top-1 against it"]}
    url = cfg.get("url")
    if url:
        found = re.search(r"-([0-9a-f]{8})\.ckpt$", url)
        out["checkpoint"] = ({"url": url, "sha256_prefix": found.group(1)} if found
                             else {"url": url, "digest_unpublished": True})
        out["derived_from"]["checkpoint"] = f"{where} (url)"
    return out
