"""Write converters/paddleclas/eval_configs.json: the eval transforms of PaddleClas's own
per-model ImageNet configs (`ppcls/configs/ImageNet/<Family>/<ModelId>.yaml`,
DataLoader.Eval.dataset.transform_ops), which its pip package does not ship. PaddleClas's
`tools/eval.py` measures each model's published top-1 with them.

    python scripts/paddleclas_eval_configs.py GIT_DIR [COMMIT [OUT]]

GIT_DIR: a clone (or bare mirror) of github.com/PaddlePaddle/PaddleClas; COMMIT defaults to
HEAD, OUT to converters/paddleclas/eval_configs.json. Reads with `git show`, so no work tree
is needed; the file and commit go into the data
(converters/paddleclas/derive.py reads it). Runs anywhere with PyYAML (the orchestrator env).
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from config_repo import git, write_models, yaml_files

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from converters.paddleclas.derive import scale_of  # noqa: E402 - no paddle at import

ROOT = "ppcls/configs/ImageNet"
OUT = Path(__file__).resolve().parent.parent / "converters" / "paddleclas" / "eval_configs.json"


def eval_block(text: str) -> dict | None:
    """The fields converters/paddleclas/derive.py needs, or None when the Eval pipeline is
    not DecodeImage, ResizeImage(resize_short), CropImage, NormalizeImage (+ ToCHWImage)."""
    try:
        ops = yaml.safe_load(text)["DataLoader"]["Eval"]["dataset"]["transform_ops"]
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    steps = {}
    for op in ops or []:
        (name, args), = op.items()
        steps[name] = args or {}
    if set(steps) - {"DecodeImage", "ResizeImage", "CropImage", "NormalizeImage",
                     "ToCHWImage"} or not {"ResizeImage", "CropImage", "NormalizeImage"} <= \
            set(steps) or "resize_short" not in steps["ResizeImage"]:
        return {"unsupported": [f"{k}({', '.join(f'{a}={v}' for a, v in steps[k].items())})"
                                for k in steps]}
    resize, norm = steps["ResizeImage"], steps["NormalizeImage"]
    crop = steps["CropImage"]["size"]
    return {"transform_ops": ops,   # as written: tests feed them to PaddleClas's own ops
            "resize_short": int(resize["resize_short"]),
            "crop": int(crop[0] if isinstance(crop, list) else crop),
            "interpolation": resize.get("interpolation") or "bilinear",
            "backend": resize.get("backend", "cv2"),
            "to_rgb": bool(steps.get("DecodeImage", {}).get("to_rgb", True)),
            "mean": [float(m) for m in norm.get("mean", [0.485, 0.456, 0.406])],
            "std": [float(s) for s in norm.get("std", [0.229, 0.224, 0.225])],
            "scale": scale_of(norm.get("scale", 1 / 255.0))}


def main(git_dir: str, commit: str = "HEAD", out: str | Path = OUT) -> None:
    commit, files = yaml_files(git_dir, commit, ROOT)
    models = {}
    for path in sorted(files):
        found = eval_block(git(git_dir, "show", f"{commit}:{path}"))
        if found is not None:
            models[Path(path).stem] = {"file": path, **found}
    write_models(out, "https://github.com/PaddlePaddle/PaddleClas", commit, models, len(files))


if __name__ == "__main__":
    main(*sys.argv[1:])
