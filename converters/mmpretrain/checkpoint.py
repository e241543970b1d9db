"""Read a torch checkpoint safely and map its keys onto an mmpretrain ImageClassifier.

Runs in the mmpretrain worker (imports torch).

Safety: `torch.load(weights_only=True)` with the allow-list below and nothing else. The
allow-list admits what OpenMMLab's published `meta` holds (numpy scalars and arrays written
under numpy 1.x or 2.x); a file that names any other global (os.system, a class of some
package...) is refused by torch's restricted unpickler before anything in it runs.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from converters.protocol import WorkerError
from converters.worker_flow import require_file

_NUMPY_MODULES = ("numpy._core.multiarray", "numpy.core.multiarray")


def _allow_list() -> list:
    from numpy._core import multiarray

    allowed: list = [np.ndarray, np.dtype]
    # numpy pickles dtypes by class (numpy.dtypes.Float64DType ...). Object arrays are left
    # out on purpose: their elements would be arbitrary objects.
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes)
                if n.endswith("DType") and n not in ("ObjectDType", "StringDType")]
    for module in _NUMPY_MODULES:  # files written under numpy 1.x name numpy.core
        for fn in ("_reconstruct", "scalar"):
            allowed.append((getattr(multiarray, fn), f"{module}.{fn}"))
    return allowed


ALLOWED_GLOBALS = _allow_list()


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """Return (state_dict, info). Raises WorkerError with a user-facing cause."""
    path = Path(path)
    size = require_file(path)
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        if refused:
            raise WorkerError(
                "checkpoint_unsafe",
                f"refused to load {path.name}: it asks the unpickler for {refused}, which is "
                "not on the allow-list (tensors, containers, numpy arrays and scalars). "
                "Nothing in the file was executed. If you trust the file, re-save its "
                "state_dict with torch.save in a trusted environment.",
                {"refused_global": refused}) from None
        raise _format_error(path, size, is_zip, exc) from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the unpickler raise anything
        raise _format_error(path, size, is_zip, exc) from None
    return _unwrap(obj, path)


_REFUSED = re.compile(r"GLOBAL (?P<global>[\w.]+)|but got <class '(?P<cls>[\w.]+)'>")


def _refused_global(text: str) -> str | None:
    """The global or class torch's restricted unpickler refused, if that was the failure."""
    match = _REFUSED.search(text)
    return (match.group("global") or match.group("cls")) if match else None


def _format_error(path: Path, size: int, is_zip: bool, exc: Exception) -> WorkerError:
    if is_zip or "zip" in str(exc).lower() or "central directory" in str(exc):
        why = "truncated or corrupt torch zip archive"
    else:
        why = "not a torch checkpoint (neither a torch zip archive nor a legacy torch pickle)"
    return WorkerError(
        "checkpoint_format",
        f"cannot read {path.name} ({size} bytes): {why}. torch said: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
        {"bytes": size})


def _unwrap(obj, path: Path) -> tuple[dict, dict]:
    info: dict = {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        meta = obj.get("meta") or {}
        info["container"] = "{'state_dict', 'meta'}" if "meta" in obj else "{'state_dict'}"
        info["meta"] = _summarise_meta(meta)
        info["demo"] = bool(isinstance(meta, dict) and meta.get("demo_checkpoint"))
        state = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        info["container"] = "{'model'}"
        state = obj["model"]
    elif isinstance(obj, dict):
        info["container"] = "bare state dict"
        state = obj
    else:
        raise WorkerError("checkpoint_format",
                          f"{path.name} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WorkerError("checkpoint_format", f"{path.name} holds no tensors")
    for key, tensor in tensors.items():
        # A view can declare far more elements than its storage holds (stride 0): 10^10
        # "elements" over 4 floats, which any copy would turn into 40 GB. No saved
        # state_dict does that; refuse it before anything touches the tensor.
        stored = tensor.untyped_storage().nbytes() // max(1, tensor.element_size())
        if tensor.numel() > stored:
            raise WorkerError("checkpoint_format",
                              f"{path.name}: tensor {key!r} declares {tensor.numel():,} "
                              f"elements ({list(tensor.shape)}) over a storage of {stored:,}: "
                              "an expanded view, not saved weights",
                              {"key": str(key), "shape": list(tensor.shape)})
    info.setdefault("demo", False)
    info["tensors"] = len(tensors)
    return tensors, info


def _summarise_meta(meta) -> dict:
    """Small, JSON-safe view of OpenMMLab meta (class names may be 1000 strings long)."""
    if not isinstance(meta, dict):
        return {"type": type(meta).__name__}
    out = {}
    for key, value in meta.items():
        if isinstance(value, (list, tuple)) and len(value) > 5:
            out[key] = f"<{len(value)} items>"
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value if not isinstance(value, str) or len(value) < 200 else "<long text>"
        else:
            out[key] = f"<{type(value).__name__}>"
    return out


# --------------------------------------------------------------------------- key mapping


def map_keys(state: dict, model_keys: set[str]) -> tuple[dict, str]:
    """Rename checkpoint keys to the mmpretrain ImageClassifier's names.

    Accepts OpenMMLab files (`backbone.*`, `head.fc.*`), DataParallel `module.` prefixes, and
    the official Res2Net release / timm naming (no `backbone.`, `fc.*` for the head).
    Returns (mapped_state, detected_layout).
    """
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
        prefix_note = "+module."
    else:
        prefix_note = ""
    if any(k.startswith("backbone.") for k in state):
        return dict(state), "openmmlab" + prefix_note
    mapped = {}
    for key, value in state.items():
        if key.startswith("fc."):
            mapped["head." + key] = value
        else:
            mapped["backbone." + key] = value
    if set(mapped) & model_keys:
        return mapped, "official-res2net" + prefix_note
    return dict(state), "unknown" + prefix_note
