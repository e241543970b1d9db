"""What a shipped ONNX file carries about itself, as ONNX `metadata_props`.

Keys (docs/artifact.md, "Artifact metadata"), each value a JSON document:
  model_convert.preprocess  the preprocessing contract (preprocess.json, deploy/preprocess.py)
  model_convert.labels      class names in index order (labels.txt)
  model_convert.source      framework, model id, checkpoint sha256 and URL, num_classes
  model_convert.accuracy    published top-1/top-5 and, when measured in the run, the figures
  model_convert.pipeline    pipeline version (git commit), precision, run id
Any runtime reads them without this project: onnx `model.metadata_props`, ONNX Runtime
`session.get_modelmeta().custom_metadata_map`, OpenVINO `model.get_rt_info()`.
"""
from __future__ import annotations

import json
from pathlib import Path

PREFIX = "model_convert."
KEYS = ("preprocess", "labels", "source", "accuracy", "pipeline")


def embed(source: Path, target: Path, documents: dict[str, object]) -> None:
    """Write `source` to `target` with `documents` (key without prefix -> JSON value) as
    metadata; other metadata is kept, the graph and weights are untouched."""
    import onnx

    unknown = set(documents) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}")
    model = onnx.load(str(source))
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in kept:
        model.metadata_props.add(key=key, value=value)
    for key in KEYS:
        if key in documents:
            model.metadata_props.add(key=PREFIX + key,
                                     value=json.dumps(documents[key], sort_keys=True))
    onnx.save(model, str(target))


def read(path: Path) -> dict[str, object]:
    """This project's metadata of an ONNX file, keys without the prefix."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(PREFIX):]: json.loads(p.value) for p in model.metadata_props
            if p.key.startswith(PREFIX)}
