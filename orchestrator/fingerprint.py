"""What an artifact was made from, as digests: the basis of `--skip-unchanged` and of placement.

An entry's inputs fingerprint covers everything that can change its figures or its files:
the checkpoint's sha256, the manifest entry as used (defaults filled in), the lock files of
the environments it runs in, the pipeline's code, the dataset (file list, sizes, labels,
layout, --limit), the precisions shipped, the signing key and --max-image-pixels.
report.json and provenance.json record the parts and the digest; a store version whose
recorded digest equals this run's was made from the same inputs, so `--skip-unchanged STORE`
does not redo it.

The code and lock digests also name the Ray resources a node advertises (orchestrator.executor),
so a task only ever runs on a node built from the same code and locks as the driver.
"""
from __future__ import annotations

import functools
import hashlib
import json

from converters.registry import REPO_ROOT, SourceSpec

# The pipeline's code: every module that can change a figure or a file of an artifact.
CODE_DIRS = ("converters", "deploy", "orchestrator", "verify", "release", "fetch", "manifests")
# Data files too: the sources' own eval configs change what a five-field entry derives.
CODE_FILES = ("pipeline.py", "verify/imagenet_synsets.txt", "deploy/imagenet1k_labels.txt",
              "converters/paddleclas/eval_configs.json", "converters/mindcv/eval_configs.json")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over (path, content digest) of the pipeline's Python code, in path order."""
    files = sorted({*(p for d in CODE_DIRS for p in (REPO_ROOT / d).rglob("*.py")),
                    *(REPO_ROOT / f for f in CODE_FILES)})
    return _sha(canonical([[str(p.relative_to(REPO_ROOT)), _sha(p.read_bytes())]
                           for p in files if p.is_file()]))


def lock_digest(env: str) -> str:
    """sha256 of envs/ENV.lock.txt (the environment's complete freeze)."""
    path = REPO_ROOT / "envs" / f"{env}.lock.txt"
    return _sha(path.read_bytes()) if path.is_file() else "missing"


def env_resource(env: str) -> str:
    """The Ray resource a node offers when ENV is built from this checkout's lock."""
    return f"env:{env}:{lock_digest(env)[:12]}"


def code_resource() -> str:
    """The Ray resource a node offers when its pipeline code equals this checkout's."""
    return f"code:{code_digest()[:12]}"


def dataset_digest(selection) -> str:
    """Layout, --limit, and for every selected image: path under the root, size, label."""
    data = selection.dataset
    rows = []
    for position in selection.positions:
        path = data.paths[position]
        rows.append([str(path.relative_to(data.root)), path.stat().st_size,
                     data.labels[position]])
    return _sha(canonical({"layout": data.layout, "limit": selection.limit, "images": rows}))


def entry_inputs(entry_data: dict, spec: SourceSpec, checkpoint_sha256: str,
                 dataset: str | None, precisions: tuple[str, ...],
                 signer: str | None, options: dict | None = None) -> dict:
    """The parts and their digest, as report.json and provenance.json record them."""
    parts = {
        "checkpoint_sha256": checkpoint_sha256,
        "manifest_entry_sha256": _sha(canonical(entry_data)),
        "locks": {env: lock_digest(env) for env in ("orchestrator", spec.env)},
        "code_sha256": code_digest(),
        "dataset_sha256": dataset,
        "precisions": list(precisions),
        "signer_public_key_sha256": signer,
        # Run options that change a figure (which images count as unreadable).
        "options": options or {},
    }
    return {"fingerprint": _sha(canonical(parts)), "parts": parts}


def unchanged_since(store, name: str, fingerprint: str) -> str | None:
    """The version of NAME that STORE (a path, URL or opened release.store) last published,
    when it was made from exactly these inputs; else None. Reads the store's index (one
    request on S3); a row from an index written before it recorded fingerprints is checked
    against that version's report.json instead."""
    from release.store import open_store

    store = open_store(store)
    text = store.read_index()
    try:
        rows = [row for row in (json.loads(text).get("artifacts") or [])
                if isinstance(row, dict) and row.get("name") == name] if text else []
    except (ValueError, AttributeError):
        rows = []   # an unreadable index only costs a conversion
    if not rows:
        return None
    latest = max(rows, key=lambda row: str(row.get("version")))
    recorded = latest.get("inputs_fingerprint")
    if recorded is None and "inputs_fingerprint" not in latest:
        try:
            recorded = (store.read_json(name, latest["version"], "report.json")
                        .get("inputs") or {}).get("fingerprint")
        except (OSError, ValueError, AttributeError, KeyError):
            return None
    return latest["version"] if recorded == fingerprint else None
