"""The preprocessing contract of a shipped model, and a framework-free implementation of it.

A deployer feeds the ONNX model tensors made exactly as the source framework made them in its
own evaluation; getting one step wrong costs from a fraction of a point of top-1 (Pillow vs
OpenCV bilinear resize) to nearly everything (BGR vs RGB). `contract()` writes the steps down
as data (preprocess.json, and the model's metadata), `preprocess()` runs them with numpy,
OpenCV and Pillow only, and the deploy gate (orchestrator/contract_gate.py) measures this
implementation against the source's own transforms on the run's images, so the contract is
checked, not trusted.

Each source's quirks, read from its code and measured bit-exact on this repo's image sets
(docs/artifact.md, "Preprocessing contract"):
- mmpretrain: cv2 decode (BGR, EXIF orientation applied), `ResizeEdge` long side
  floor(S*L/s) with the config's backend (Pillow bilinear for Res2Net), `CenterCrop` offset
  round-half-even((H-h)/2), then BGR->RGB and (x - mean) / std.
- PaddleClas: cv2 decode then RGB, `ResizeImage(resize_short)` long side
  round-half-even(L*(S/s)) with cv2 INTER_LINEAR, `CropImage` offset floor((H-h)/2),
  (x * scale - mean) / std.
- MindCV: MindSpore's `Decode` equals Pillow's RGB decode (also for CMYK and grayscale JPEGs,
  no EXIF orientation); its `Resize` equals cv2 INTER_LINEAR with long side floor(S*L/s);
  `CenterCrop` offset floor((H-h)/2).

mmpretrain has three more eval forms (format /2; a document of the original forms stays
/1, byte for byte):
- fixed size: mmcv `Resize(scale=N)` resizes to NxN whatever the aspect (convnext 384 px,
  tinyvit, repmlp), optionally followed by `CenterCrop`;
- `EfficientNetCenterCrop(crop_size=C, crop_padding=P)`: a square of C/(C+P) x the short
  side, at offset max(0, round-half-even((H-c)/2)), its last row and column truncated to an
  integer as mmcv's `imcrop` casts the box, then resized to CxC (efficientnet, efficientnetv2);
- BGR input (`to_rgb: false` in the data preprocessor: regnet, mobilevit): the tensor's
  channels are B, G, R and mean/std are given in that order.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

FORMAT = "model-convert.preprocess/1"
# The forms after the first (a fixed-size resize, EfficientNet's centre crop, BGR channels):
# written only where an entry uses one, so that a reader that knows /1 refuses such a file
# by its format instead of misreading it.
FORMAT_2 = "model-convert.preprocess/2"
RESIZE_MODES = ("short_side", "fixed", "efficientnet_center_crop")

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

_size = {"type": "integer", "minimum": 1}


def _when(field: str, value: str, then: dict, default: bool = False) -> dict:
    """JSON schema: `then` applies where `field` is `value`, or is absent if `default`."""
    condition = {"properties": {field: {"const": value}}}
    return {"if": condition if default else {**condition, "required": [field]}, "then": then}


SCHEMA = {
    "type": "object",
    "required": ["format", "input", "decode", "resize", "crop", "normalize"],
    "properties": {
        "format": {"enum": [FORMAT, FORMAT_2]},
        "input": {"type": "object", "required": ["name", "layout", "dtype", "shape"],
                  "properties": {"name": {"type": "string"}, "layout": {"const": "NCHW"},
                                 "dtype": {"const": "float32"},
                                 "shape": {"type": "array", "minItems": 3, "maxItems": 3,
                                           "items": _size},
                                 # a fixed batch the graph holds; absent: any batch
                                 "batch": {"const": 1}}},
        "decode": {"type": "object", "required": ["library", "channels"],
                   "properties": {"library": {"enum": ["opencv", "pillow"]},
                                  "channels": {"enum": ["RGB", "BGR"]},
                                  "exif_orientation": {"type": "boolean"}}},
        "resize": {"type": "object", "required": ["interpolation", "library"],
                   "properties": {"mode": {"enum": list(RESIZE_MODES)},
                                  "short_side": _size,
                                  "long_side": {"enum": ["floor", "round_half_even"]},
                                  "height": _size, "width": _size,
                                  "size": _size,
                                  "padding": {"type": "integer", "minimum": 0},
                                  "offset": {"const": "round_half_even"},
                                  "interpolation": {"enum": list(INTERPOLATIONS)},
                                  "library": {"enum": ["opencv", "pillow"]}},
                   # No mode is the first form: the short side.
                   "allOf": [
                       _when("mode", "short_side", {"required": ["short_side", "long_side"]},
                             default=True),
                       _when("mode", "fixed", {"required": ["height", "width"]}),
                       _when("mode", "efficientnet_center_crop",
                             {"required": ["size", "padding", "offset"]})]},
        "crop": {"type": "object", "required": ["height", "width", "offset"],
                 "properties": {"height": _size, "width": _size,
                                "offset": {"enum": ["floor", "round_half_even"]}}},
        "normalize": {"type": "object", "required": ["scale", "mean", "std"],
                      "properties": {"scale": {"type": "number", "exclusiveMinimum": 0},
                                     "mean": {"type": "array", "minItems": 3, "maxItems": 3,
                                              "items": {"type": "number"}},
                                     "std": {"type": "array", "minItems": 3, "maxItems": 3,
                                             "items": {"type": "number",
                                                       "exclusiveMinimum": 0}}}},
    },
    # A /1 document has only the first forms: RGB, and the short-side resize.
    "allOf": [_when("format", FORMAT, {"properties": {
        "decode": {"properties": {"channels": {"const": "RGB"}}},
        "resize": {"properties": {"mode": {"const": "short_side"}}}}})],
}


class PreprocessError(ValueError):
    """A contract that cannot be followed, or an image that cannot be read."""


def resize_form(cfg: dict) -> str:
    """Which resize a manifest `preprocess` block asks for: `resize_short`, `resize_fixed` or
    `crop_padding` (the loader checks there is exactly one)."""
    if "crop_padding" in cfg:
        return "efficientnet_center_crop"
    return "fixed" if "resize_fixed" in cfg else "short_side"


def contract(cfg: dict, input_shape: list[int], input_name: str = "input") -> dict:
    """preprocess.json for a manifest entry's `preprocess` block (already checked against
    the source's own config by the worker)."""
    pipeline = cfg["pipeline"]
    if pipeline not in SOURCE_RULES:
        raise PreprocessError(f"no preprocessing contract for pipeline {pipeline!r}")
    rules = SOURCE_RULES[pipeline]
    backend = cfg.get("resize_backend") or DEFAULT_BACKEND[pipeline]
    size = int(cfg["crop"])   # a square crop: the manifest schema takes one integer
    channels = "RGB" if cfg.get("to_rgb", True) else "BGR"
    form = resize_form(cfg)
    resize = {"interpolation": cfg["interpolation"], "library": BACKENDS[backend]}
    if form == "short_side":
        resize = {"short_side": int(cfg["resize_short"]), "long_side": rules["long_side"],
                  **resize}
    elif form == "fixed":
        resize = {"mode": form, "height": int(cfg["resize_fixed"]),
                  "width": int(cfg["resize_fixed"]), **resize}
    else:
        resize = {"mode": form, "size": size, "padding": int(cfg["crop_padding"]),
                  "offset": "round_half_even", **resize}
    first = channels == "RGB" and form == "short_side"
    return {
        "format": FORMAT if first else FORMAT_2,
        "input": {"name": input_name, "layout": "NCHW", "dtype": "float32",
                  "shape": list(input_shape)},
        "decode": {"library": rules["decode"], "channels": channels,
                   "exif_orientation": rules["decode"] == "opencv"},
        "resize": resize,
        "crop": {"height": size, "width": size, "offset": rules["crop_offset"]},
        "normalize": {"scale": float(cfg.get("scale", 1.0)),
                      "mean": [float(m) for m in cfg["mean"]],
                      "std": [float(s) for s in cfg["std"]],
                      "formula": ("(pixel * scale - mean) / std, per RGB channel" if first else
                                  "(pixel * scale - mean) / std, per channel in "
                                  "decode.channels order")},
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
    """HxWx3 uint8, channels in spec['channels'] order (RGB or BGR)."""
    if spec["library"] == "opencv":
        import cv2

        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                             cv2.IMREAD_COLOR if spec.get("exif_orientation", True)
                             else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise PreprocessError("OpenCV cannot decode this file")
        rgb = image[:, :, ::-1]   # OpenCV decodes to BGR
    else:
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as image:
                if spec.get("exif_orientation", False):
                    image = ImageOps.exif_transpose(image)
                rgb = np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise PreprocessError(f"Pillow cannot decode this file: {exc}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1] if spec["channels"] == "BGR" else rgb)


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


def efficientnet_crop(image: np.ndarray, spec: dict) -> np.ndarray:
    """The square EfficientNet's centre crop cuts before its resize, computed as mmpretrain's
    `EfficientNetCenterCrop` does: side size/(size+padding) x the short side (a float),
    offset max(0, round-half-even((H - side)/2)), the box's last row/column
    offset + side - 1 truncated to an integer (mmcv `imcrop` casts the box to int32) and
    clipped to the image."""
    height, width = image.shape[:2]
    side = spec["size"] / (spec["size"] + spec["padding"]) * min(height, width)

    def span(extent: int) -> slice:
        first = max(0, int(round((extent - side) / 2.0)))
        last = int(first + side - 1)    # truncation toward zero, as a cast to int32
        first, last = (min(max(v, 0), extent - 1) for v in (first, last))
        return slice(first, last + 1)

    return image[span(height), span(width)]


def resize(image: np.ndarray, spec: dict) -> np.ndarray:
    """The resize step of each form (RESIZE_MODES; no mode is the short side)."""
    mode = spec.get("mode", "short_side")
    if mode == "efficientnet_center_crop":
        image = efficientnet_crop(image, spec)
        height = width = spec["size"]
    elif mode == "fixed":
        height, width = spec["height"], spec["width"]
    else:
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
    """CHW float32: (pixel * scale - mean) / std, mean and std in the image's channel order."""
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
