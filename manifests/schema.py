"""JSON schema of one manifest entry and the defaults filled in after validation.

Kept beside the manifests so that what an entry may hold is read in one place.
`additionalProperties: false` everywhere: a misspelt key is an error, not a silently
ignored setting.
"""

from converters.registry import RUNTIMES as _RUNTIMES
from converters.registry import SOURCES as _SPECS

SOURCES = tuple(_SPECS)   # converters/registry.py: every per-source fact
RUNTIMES = tuple(_RUNTIMES)   # and every runtime

_number = {"type": "number"}
_percent = {"type": "number", "minimum": 0, "maximum": 100}
_positive = {"type": "number", "exclusiveMinimum": 0}
_triple = {"type": "array", "items": _number, "minItems": 3, "maxItems": 3}

PREPROCESS = {
    "type": "object",
    "additionalProperties": False,
    # And exactly one resize form (RESIZE_FORMS; manifests/loader.py checks).
    "required": ["pipeline", "crop", "interpolation", "mean", "std"],
    "properties": {
        # Whose transform code produces the tensor: each worker implements its own source's.
        "pipeline": {"enum": list(SOURCES)},
        "decode": {"enum": ["cv2", "pil", "mindspore"]},
        # Resize the short side to this, keeping the aspect (then centre-crop `crop`).
        "resize_short": {"type": "integer", "minimum": 1},
        # mmpretrain `Resize(scale=N)`: to NxN whatever the aspect (then centre-crop `crop`).
        "resize_fixed": {"type": "integer", "minimum": 1},
        # mmpretrain `EfficientNetCenterCrop(crop_size=crop, crop_padding=P)`: a centre square
        # of crop/(crop+P) x the short side, resized to crop x crop.
        "crop_padding": {"type": "integer", "minimum": 0},
        "crop": {"type": "integer", "minimum": 1},
        "interpolation": {"enum": ["bilinear", "bicubic", "nearest"]},
        "resize_backend": {"enum": ["pillow", "cv2"]},
        "mean": _triple,
        "std": _triple,
        # Divide by 255 before mean/std (PaddleClas) or not (mmpretrain works on 0..255).
        "scale": _positive,
        # False: the model takes B, G, R channels (mmpretrain `to_rgb: false`), and mean/std
        # are in that order.
        "to_rgb": {"type": "boolean"},
    },
}
# The resize forms of a preprocess block, one per entry, and the sources whose own transforms
# have each (deploy/preprocess.py writes each into the contract).
RESIZE_FORMS = {"resize_short": SOURCES, "resize_fixed": ("mmpretrain",),
                "crop_padding": ("mmpretrain",)}

TOLERANCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "atol": {"type": "number", "minimum": 0},
        "rtol": {"type": "number", "minimum": 0},
        "min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
        "min_top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
        "min_top5_agreement": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

# Accuracy gates (--data), in percent points / percent of images.
ACCURACY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # |ONNX top-1 - source top-1| on the same tensors.
        "onnx_top1_delta": _percent,
        # Images whose top-1 differs between source and ONNX, percent of images evaluated.
        "disagreement": _percent,
        # |source top-1 - published top-1|, only when the checkpoint is the pinned file.
        # A subset (--limit) widens it by 3 standard errors of the subset's top-1.
        "published_top1_delta": _percent,
        # Images the source's own decoder cannot read, percent of images selected.
        "unreadable": _percent,
        "batch_size": {"type": "integer", "minimum": 1, "maximum": 1024},
    },
}

# Reduced-precision variants (--precisions), each gated against the fp32 source's logits
# (and, with --data, its accuracy drop against the source's top-1).
_VARIANT_GATES = {
    "min_cosine": {"type": "number", "minimum": -1, "maximum": 1},
    "min_top1_agreement": {"type": "number", "minimum": 0, "maximum": 1},
    "max_top1_drop": _percent,
}
VARIANTS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "fp16": {"type": "object", "additionalProperties": False,
                 "properties": _VARIANT_GATES},
        "int8": {"type": "object", "additionalProperties": False, "properties": {
            **_VARIANT_GATES,
            "calibration": {"enum": ["entropy", "percentile", "minmax"]},
            "percentile": {"type": "number", "minimum": 90, "maximum": 100},
            "calibration_images": {"type": "integer", "minimum": 8, "maximum": 4096},
            # Node types kept fp32 (e.g. [Gemm] keeps the classifier in float).
            "exclude_op_types": {"type": "array", "items": {"type": "string"},
                                 "uniqueItems": True},
            # Nodes kept fp32 by name: the names a failed int8 report lists under
            # variants.int8.diagnosis (the quantizer's graph, after onnxsim).
            "exclude_nodes": {"type": "array", "items": {"type": "string"},
                              "uniqueItems": True},
        }},
    },
}

# The deploy gate: the artifact's preprocessing contract (deploy/preprocess.py) run without
# any framework, against the source's own transforms on the run's images.
DEPLOY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # max |contract tensor - source tensor| over all images, in 8-bit pixel levels
        # (normalised difference x std / scale): one level allows a JPEG decoder's rounding.
        "max_level_diff": {"type": "number", "minimum": 0},
        # With --data: |top-1 of contract preprocessing + ONNX - top-1 of the source's
        # preprocessing + the source model|, percent points.
        "max_top1_delta": _percent,
        # Runtimes each shipped model is checked on (orchestrator/runtimes.py) and those that
        # must pass for it to ship; the GPU ones are skipped, with the reason, without a GPU.
        "runtimes": {"type": "array", "items": {"enum": list(RUNTIMES)}, "uniqueItems": True,
                     "minItems": 1},
        "required_runtimes": {"type": "array", "items": {"enum": list(RUNTIMES)},
                              "uniqueItems": True},
    },
}

ENTRY = {
    "type": "object",
    "additionalProperties": False,
    # The rest (DERIVED) the source's own config and model index give, when left out.
    "required": ["name", "source", "model_id", "num_classes", "checkpoint"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
        "source": {"enum": list(SOURCES)},
        "model_id": {"type": "string", "minLength": 1},
        "num_classes": {"type": "integer", "minimum": 1},
        "description": {"type": "string"},
        "checkpoint": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": {"type": "string", "pattern": "^(https?|file)://"},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                # OpenMMLab / MindCV / torchvision-style names carry only the first hex digits.
                "sha256_prefix": {"type": "string", "pattern": "^[0-9a-f]{8,63}$"},
                # Where the publisher gives no digest at all this must say so explicitly.
                "digest_unpublished": {"const": True},
                "layout": {"type": "string"},
            },
            "oneOf": [
                {"required": ["sha256"]},
                {"required": ["sha256_prefix"]},
                {"required": ["digest_unpublished"]},
            ],
        },
        "input_shape": {"type": "array", "items": {"type": "integer", "minimum": 1},
                        "minItems": 3, "maxItems": 3},
        "preprocess": PREPROCESS,
        "published": {
            "type": "object",
            "additionalProperties": False,
            "required": ["top1", "top5", "reference"],
            "properties": {"top1": _percent, "top5": _percent,
                           "reference": {"type": "string", "minLength": 1}},
        },
        "export": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "opset": {"type": "integer", "minimum": 7, "maximum": 23},
                "dynamic_batch": {"type": "boolean"},
                # where the exporter cannot write a dynamic batch, export at a fixed batch 1
                # (stated in the report and the contract) instead of failing the entry
                "fixed_batch_fallback": {"type": "boolean"},
            },
        },
        # Class names shipped with the model: "imagenet-1k" (deploy/imagenet1k_labels.txt,
        # the default for 1000 classes), a file (one name per line, relative to the
        # manifest) or a list; the loader checks there are num_classes of them.
        "labels": {"oneOf": [{"type": "string", "minLength": 1},
                             {"type": "array", "items": {"type": "string", "minLength": 1},
                              "minItems": 1}]},
        "tolerances": TOLERANCES,
        "accuracy": ACCURACY,
        "deploy": DEPLOY,
        "variants": VARIANTS,
        "verify": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "images": {"type": "integer", "minimum": 1, "maximum": 4096},
                "seed": {"type": "integer", "minimum": 0},
            },
        },
    },
}

MANIFEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["models"],
    "properties": {
        "version": {"const": 1},
        # Free-form YAML anchors live here so entries can share blocks with `<<: *name`.
        "shared": {"type": "object"},
        "models": {"type": "array", "minItems": 1},
    },
}

# Left out of an entry, these come from the source itself (orchestrator/derive.py): the
# eval preprocessing and input size from the model's config, the published top-1/top-5 from
# its model index when the entry's checkpoint is the file those figures are for.
DERIVED = ("preprocess", "input_shape", "published")

# Per source, over DEFAULTS (converters/registry.py: MindSpore 2.7's ONNX exporter takes no
# opset and writes 11).
SOURCE_DEFAULTS = {name: spec.defaults for name, spec in _SPECS.items() if spec.defaults}

DEFAULTS = {
    "export": {"opset": 17, "dynamic_batch": True, "fixed_batch_fallback": True},
    # max|onnx - ref| <= atol + rtol * max|ref|; torch vs ORT fp32 differ by ~1e-6 here.
    "tolerances": {"atol": 1e-4, "rtol": 1e-4, "min_cosine": 0.99999,
                   "min_top1_agreement": 1.0, "min_top5_agreement": 1.0},
    "verify": {"images": 16, "seed": 0},
    # Bit-exact on every source here (docs/artifact.md, "Preprocessing contract"); 1 level of slack.
    "deploy": {"max_level_diff": 1.0, "max_top1_delta": 0.1, "runtimes": list(RUNTIMES),
               "required_runtimes": ["onnxruntime"]},
    "accuracy": {"onnx_top1_delta": 0.1, "disagreement": 0.1, "published_top1_delta": 0.3,
                 "unreadable": 1.0, "batch_size": 32},
    # Measured on seeded random-init Res2Net50-w14-s8 (logits ~2, many near-ties), 16 images:
    # fp16 cosine >= 0.9997, top-1 agreement 1.0; int8 (32 calibration images) cosine
    # 0.962 (entropy) / 0.966 (percentile), top-1 agreement 0.81-0.88 (entropy) / 1.0
    # (percentile); excluding Gemm changed nothing. Trained weights separate classes far more;
    # the accuracy drop (with --data) is the gate that matters for int8.
    "variants": {
        "fp16": {"min_cosine": 0.999, "min_top1_agreement": 0.9, "max_top1_drop": 0.1},
        "int8": {"min_cosine": 0.95, "min_top1_agreement": 0.75, "max_top1_drop": 0.5,
                 "calibration": "percentile", "percentile": 99.999,
                 "calibration_images": 256, "exclude_op_types": [], "exclude_nodes": []},
    },
}
