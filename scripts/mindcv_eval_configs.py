"""Write converters/mindcv/eval_configs.json: the eval settings of MindCV's own per-model
configs (`configs/<family>/<model>_<device>.yaml`: image_resize, crop_pct, interpolation,
mean, std), which its pip package does not ship. MindCV's `validate.py` evaluates a model
with them (argparse defaults from its config.py where a file is silent), and the wheel's
default_cfg lacks some: mobilevit's 256 px is only there.

    python scripts/mindcv_eval_configs.py GIT_DIR [COMMIT [OUT]]

GIT_DIR: a clone (or bare mirror) of github.com/mindspore-lab/mindcv; COMMIT defaults to HEAD,
OUT to converters/mindcv/eval_configs.json. Reads with `git show`, so no work tree is needed;
the file and commit go into the data (converters/mindcv/derive.py reads it). Where a model
has several files (one per device), the `_ascend` one is taken, as MindCV reports its
accuracy on Ascend. Runs anywhere with PyYAML (the orchestrator env).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from config_repo import git, write_models, yaml_files

ROOT = "configs"
OUT = Path(__file__).resolve().parent.parent / "converters" / "mindcv" / "eval_configs.json"
# MindCV config.py's argparse defaults for what a file leaves out (validate.py uses them).
DEFAULTS = {"image_resize": 224, "crop_pct": 0.875, "interpolation": "bilinear",
            "mean": [0.485 * 255, 0.456 * 255, 0.406 * 255],
            "std": [0.229 * 255, 0.224 * 255, 0.225 * 255]}


def eval_settings(text: str) -> tuple[str, dict] | None:
    """(model name, the settings validate.py evaluates it with), or None for a file that
    names no model (or is not YAML)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        return None
    settings = {key: doc.get(key) if doc.get(key) is not None else default
                for key, default in DEFAULTS.items()}
    settings["image_resize"] = int(settings["image_resize"])
    settings["crop_pct"] = float(settings["crop_pct"])
    settings["mean"] = [float(m) for m in settings["mean"]]
    settings["std"] = [float(s) for s in settings["std"]]
    return doc["model"], settings


def main(git_dir: str, commit: str = "HEAD", out: str | Path = OUT) -> None:
    commit, files = yaml_files(git_dir, commit, ROOT)
    models: dict[str, dict] = {}
    # Ascend files last, so they win over another device's file for the same model.
    for path in sorted(files, key=lambda f: (f.endswith("_ascend.yaml"), f)):
        found = eval_settings(git(git_dir, "show", f"{commit}:{path}"))
        if found is not None:
            name, settings = found
            models[name] = {"file": path, **settings}
    write_models(out, "https://github.com/mindspore-lab/mindcv", commit,
                 {name: models[name] for name in sorted(models)}, len(files))


if __name__ == "__main__":
    main(*sys.argv[1:])
