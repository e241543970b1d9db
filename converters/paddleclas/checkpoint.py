"""Read a PaddleClas .pdparams safely and map its keys onto a PaddleClas model.

A .pdparams is a plain pickle (protocol 4 from paddle.save) of {structured name: numpy
array} plus a `StructuredToParameterName@@` table. paddle.load would unpickle anything, so
this module unpickles with an allow-list instead: numpy array and scalar reconstruction
(module paths `numpy._core.multiarray`, written under numpy 2, and `numpy.core.multiarray`,
written under numpy 1.x), numpy dtypes, OrderedDict, `_codecs.encode` (how protocol-2
pickles spell bytes) and `tuple` (paddle.save's object format). A file that asks for any
other global is refused before that global is even imported, so nothing in it runs.
"""
from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from converters.protocol import WorkerError
from converters.worker_flow import require_file

STRUCTURED_TABLE = "StructuredToParameterName@@"
DEMO_KEY = "demo_checkpoint@@"  # written by converters.paddleclas.make_checkpoint --mark-demo
_NUMPY_CORE = ("numpy._core.multiarray", "numpy.core.multiarray")


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals (numpy arrays, dtypes, OrderedDict)."""

    def find_class(self, module: str, name: str):
        from numpy._core import multiarray

        if module in _NUMPY_CORE and name in ("_reconstruct", "scalar"):
            return getattr(multiarray, name)
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if module == "numpy.dtypes" and name.endswith("DType") and name not in (
                "ObjectDType", "StringDType"):
            return getattr(np.dtypes, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("_codecs", "encode"):  # protocol 2 spells bytes with it
            return codecs.encode
        if (module, name) == ("builtins", "tuple"):  # paddle.save's object format, below
            return tuple
        raise RefusedGlobal(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent references are not allowed")


def load_pdparams(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Return ({key: array}, info). Raises WorkerError with a user-facing cause."""
    path = Path(path)
    require_file(path)
    data = path.read_bytes()
    if zipfile.is_zipfile(path) or data[:2] == b"PK":
        raise WorkerError("checkpoint_format",
                          f"{path.name} is a zip archive (a PyTorch .pth?), not a PaddlePaddle "
                          ".pdparams pickle")
    try:
        obj = SafeUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as exc:
        raise WorkerError(
            "checkpoint_unsafe",
            f"refused to load {path.name}: it asks the unpickler for {exc.qualified}, which "
            "is not on the allow-list (numpy arrays, scalars and dtypes). Nothing in the file "
            "was executed. If you trust the file, re-save its state_dict with paddle.save in "
            "a trusted environment.", {"refused_global": exc.qualified}) from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the unpickler raise anything
        why = ("truncated" if isinstance(exc, EOFError) or "truncated" in str(exc)
               else "not a .pdparams pickle")
        raise WorkerError("checkpoint_format",
                          f"cannot read {path.name} ({len(data)} bytes): {why} "
                          f"({type(exc).__name__}: {str(exc)[:160]})", {"bytes": len(data)}
                          ) from None
    if not isinstance(obj, dict):
        raise WorkerError("checkpoint_format",
                          f"{path.name} holds a {type(obj).__name__}, not a state dict")
    info = {"container": ".pdparams state dict",
            "structured_table": STRUCTURED_TABLE in obj, "demo": DEMO_KEY in obj}
    # paddle.save writes a pure state dict as {key: ndarray}; any other dict in its object
    # format, where each tensor is tuple((tensor name, ndarray)). Accept both.
    unwrapped = {k: v[1] if _is_named_array(v) else v for k, v in obj.items()}
    if any(_is_named_array(v) for v in obj.values()):
        info["container"] = ".pdparams (paddle.save object format)"
    # Keys ending in '@@' are Paddle's metadata (StructuredToParameterName@@, our demo mark).
    arrays = {k: v for k, v in unwrapped.items()
              if isinstance(v, np.ndarray) and not str(k).endswith("@@")}
    skipped = sorted(k for k in obj if k not in arrays)
    if skipped:
        info["skipped_keys"] = skipped
    if not arrays:
        raise WorkerError("checkpoint_format", f"{path.name} holds no arrays")
    info["tensors"] = len(arrays)
    return arrays, info


def _is_named_array(value) -> bool:
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], np.ndarray))


def map_keys(state: dict, structured: dict[str, str]) -> tuple[dict, str]:
    """Rename keys to the model's structured names.

    Accepts structured names (what paddle.save(model.state_dict()) writes, and what PaddleClas
    publishes), DataParallel's `_layers.` prefix, and parameter names (`conv1_weights`, the
    names PaddleClas's ParamAttr fixes, as in files saved by name). `structured` maps each of
    the model's structured names to its parameter name.
    """
    prefix = ""
    if state and all(k.startswith("_layers.") for k in state):
        state = {k[len("_layers."):]: v for k, v in state.items()}
        prefix = "+_layers."
    if set(state) & set(structured):
        return dict(state), "structured-names" + prefix
    by_param = {param: key for key, param in structured.items()}
    if set(state) & set(by_param):
        return {by_param.get(k, k): v for k, v in state.items()}, "parameter-names" + prefix
    return dict(state), "unknown" + prefix
