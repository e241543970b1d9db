"""The preprocessing contract of a shipped model, and a framework-free implementation of it.

A deployer feeds the ONNX model tensors made exactly as the source framework made them in its
own evaluation; getting one step wrong costs from a fraction of a point of top-1 (Pillow vs
OpenCV bilinear resize) to nearly everything (BGR vs RGB). `contract()` writes the steps down
as data (preprocess.json, and the model's metadata), `preprocess()` runs them with numpy,
OpenCV and Pillow only, and the deploy gate (orchestrator/deploy.py) measures this
implementation against the source's own transforms on the run's images, so the contract is
checked, not trusted.

Each source's quirks, read from its code and measured bit-exact on this repo's image sets
(README "Preprocessing contract"):
- mmpretrain: cv2 decode (BGR, EXIF orientation applied), `ResizeEdge` long side
  floor(S*L/s) with the config's backend (Pillow bilinear for Res2Net), `CenterCrop` offset
  round-half-even((H-h)/2), then BGR->RGB and (x - mean) / std.
- PaddleClas: cv2 decode then RGB, `ResizeImage(resize_short)` long side
  round-half-even(L*(S/s)) with cv2 INTER_LINEAR, `CropImage` offset floor((H-h)/2),
  (x * scale - mean) / std.
- MindCV: MindSpore's `Decode` equals Pillow's RGB decode (also for CMYK and grayscale JPEGs,
  no EXIF orientation); its `Resize` equals cv2 INTER_LINEAR with long side floor(S*L/s);
  `CenterCrop` offset floor((H-h)/2).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

FORMAT = "model-convert.preprocess/1"

# Per source pipeline: how it decodes and where it rounds (see the module docstring).
SOURCE_RULES = {
    "mmpretrain": {"decode": "opencv", "long_side": "floor", "crop_offset": "round_half_even"},
    "paddleclas": {"decode": "opencv", "long_side": "round_half_even", "crop_offset": "floor"},
    "mindcv": {"decode": "pillow", "long_side": "floor", "crop_offset": "floor"},
}
# The manifest's resize_backend per source, as the library that runs it; MindSpore's Resize
# is OpenCV's (measured: identical bytes).
BACKENDS = {"pillow": "pillow", "pil": "pillow", "cv2": "opencv", "mindspore": "opencv"}
DEFAULT_BACKEND = {"mmpretrain": "pillow", "paddleclas": "cv2", "mindcv": "mindspore"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")

SCHEMA = {
    "type": "object",
    "required": ["format", "input", "decode", "resize", "crop", "normalize"],
    "properties": {
        "format": {"const": FORMAT},
        "input": {"type": "object", "required": ["name", "layout", "dtype", "shape"],
                  "properties": {"name": {"type": "string"}, "layout": {"const": "NCHW"},
                                 "dtype": {"const": "float32"},
                                 "shape": {"type": "array", "minItems": 3, "maxItems": 3,
                                           "items": {"type": "integer", "minimum": 1}}}},
        "decode": {"type": "object", "required": ["library", "channels"],
                   "properties": {"library": {"enum": ["opencv", "pillow"]},
                                  "channels": {"const": "RGB"},
                                  "exif_orientation": {"type": "boolean"}}},
        "resize": {"type": "object",
                   "required": ["short_side", "long_side", "interpolation", "library"],
                   "properties": {"short_side": {"type": "integer", "minimum": 1},
                                  "long_side": {"enum": ["floor", "round_half_even"]},
                                  "interpolation": {"enum": list(INTERPOLATIONS)},
                                  "library": {"enum": ["opencv", "pillow"]}}},
        "crop": {"type": "object", "required": ["height", "width", "offset"],
                 "properties": {"height": {"type": "integer", "minimum": 1},
                                "width": {"type": "integer", "minimum": 1},
                                "offset": {"enum": ["floor", "round_half_even"]}}},
        "normalize": {"type": "object", "required": ["scale", "mean", "std"],
                      "properties": {"scale": {"type": "number", "exclusiveMinimum": 0},
                                     "mean": {"type": "array", "minItems": 3, "maxItems": 3,
                                              "items": {"type": "number"}},
                                     "std": {"type": "array", "minItems": 3, "maxItems": 3,
                                             "items": {"type": "number",
                                                       "exclusiveMinimum": 0}}}},
    },
}


class PreprocessError(ValueError):
    """A contract that cannot be followed, or an image that cannot be read."""


def contract(cfg: dict, input_shape: list[int], input_name: str = "input") -> dict:
    """preprocess.json for a manifest entry's `preprocess` block (already checked against
    the source's own config by the worker)."""
    pipeline = cfg["pipeline"]
    if pipeline not in SOURCE_RULES:
        raise PreprocessError(f"no preprocessing contract for pipeline {pipeline!r}")
    rules = SOURCE_RULES[pipeline]
    backend = cfg.get("resize_backend") or DEFAULT_BACKEND[pipeline]
    size = int(cfg["crop"])   # a square crop: the manifest schema takes one integer
    return {
        "format": FORMAT,
        "input": {"name": input_name, "layout": "NCHW", "dtype": "float32",
                  "shape": list(input_shape)},
        "decode": {"library": rules["decode"], "channels": "RGB",
                   "exif_orientation": rules["decode"] == "opencv"},
        "resize": {"short_side": int(cfg["resize_short"]), "long_side": rules["long_side"],
                   "interpolation": cfg["interpolation"], "library": BACKENDS[backend]},
        "crop": {"height": size, "width": size, "offset": rules["crop_offset"]},
        "normalize": {"scale": float(cfg.get("scale", 1.0)),
                      "mean": [float(m) for m in cfg["mean"]],
                      "std": [float(s) for s in cfg["std"]],
                      "formula": "(pixel * scale - mean) / std, per RGB channel"},
        "source": {"pipeline": pipeline},
    }


def validate(document: dict, where: str = "preprocess.json") -> dict:
    """`document` if it follows SCHEMA, else PreprocessError naming the field."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(document),
                    key=lambda e: list(e.path))
    if errors:
        raise PreprocessError(f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in errors))
    return document


def load(path: Path) -> dict:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PreprocessError(f"{path}: {exc}") from None
    return validate(document, str(path))


def decode(data: bytes, spec: dict) -> np.ndarray:
    """HxWx3 uint8 RGB."""
    if spec["library"] == "opencv":
        import cv2

        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                             cv2.IMREAD_COLOR if spec.get("exif_orientation", True)
                             else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise PreprocessError("OpenCV cannot decode this file")
        return np.ascontiguousarray(image[:, :, ::-1])
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if spec.get("exif_orientation", False):
                image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise PreprocessError(f"Pillow cannot decode this file: {exc}") from None


def _rounded(value: float, rule: str) -> int:
    return int(value) if rule == "floor" else int(round(value))


def resize_size(height: int, width: int, spec: dict) -> tuple[int, int]:
    """(height, width) after the short side becomes spec['short_side'], written with each
    source's own arithmetic (floor(S*L/s) or round-half-even(L*(S/s)))."""
    target = spec["short_side"]
    if spec["long_side"] == "floor":
        if width < height:
            return int(target * height / width), target
        return target, int(target * width / height)
    percent = float(target) / min(height, width)
    return _rounded(height * percent, "round"), _rounded(width * percent, "round")


def resize(image: np.ndarray, spec: dict) -> np.ndarray:
    height, width = resize_size(*image.shape[:2], spec)
    if spec["library"] == "opencv":
        import cv2

        codes = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
                 "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
                 "lanczos": cv2.INTER_LANCZOS4}
        return cv2.resize(image, (width, height), interpolation=codes[spec["interpolation"]])
    from PIL import Image

    codes = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
             "area": Image.BOX, "lanczos": Image.LANCZOS}
    return np.asarray(Image.fromarray(image).resize((width, height),
                                                    codes[spec["interpolation"]]))


def crop(image: np.ndarray, spec: dict) -> np.ndarray:
    height, width = image.shape[:2]
    ch, cw = spec["height"], spec["width"]
    if height < ch or width < cw:
        raise PreprocessError(f"image of {height}x{width} after resize is smaller than the "
                              f"{ch}x{cw} crop")
    top = _rounded((height - ch) / 2.0, spec["offset"])
    left = _rounded((width - cw) / 2.0, spec["offset"])
    return image[top:top + ch, left:left + cw]


def normalize(image: np.ndarray, spec: dict) -> np.ndarray:
    """CHW float32: (pixel * scale - mean) / std."""
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    scaled = image.astype(np.float32)
    if spec["scale"] != 1.0:
        scaled = scaled * np.float32(spec["scale"])
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))


def preprocess(path: str | Path, spec: dict, max_pixels: int | None = None) -> np.ndarray:
    """One image file -> the model's CHW float32 input, following contract `spec`."""
    if max_pixels:
        from converters.data_loader import ImageTooLarge, check_pixels

        try:
            check_pixels(str(path), max_pixels)
        except ImageTooLarge as exc:
            raise PreprocessError(f"{path}: {exc}") from None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PreprocessError(f"{path}: {exc}") from None
    try:
        image = decode(data, spec["decode"])
        return normalize(crop(resize(image, spec["resize"]), spec["crop"]), spec["normalize"])
    except PreprocessError as exc:
        raise PreprocessError(f"{path}: {exc}") from None


def preprocess_batch(paths, spec: dict, max_pixels: int | None = None) -> np.ndarray:
    return np.stack([preprocess(p, spec, max_pixels) for p in paths])
