"""What every framework worker does, in order, whatever the framework.

A source plugs in an adapter (one small class per framework, as Polygraphy has one runner per
backend); this module owns the order of the stages, their timings, the files written, and the
strict state-dict comparison with its "this checkpoint fits entry X" hint.

Imported inside worker environments only (needs numpy, which every worker env has).
"""
from __future__ import annotations

import importlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from converters.data_loader import DEFAULT_MAX_PIXELS, batches
from converters.protocol import ConvertJob, Timer, WorkerError, log, parse_job


class Adapter(Protocol):
    framework: str
    # The module reading what the source says about a model (converters/<source>/derive.py):
    # model_ids(), family(model_id), describe(model_id) -> derived entry fields.
    derive_module: str

    def versions(self) -> dict: ...

    def build(self, model_id: str, num_classes: int): ...

    def state_shapes(self, model) -> dict[str, tuple]: ...

    def load(self, model, checkpoint: Path, candidates: list[dict],
             num_classes: int) -> dict: ...

    def transform(self, cfg: dict) -> tuple[Callable[[str], object],
                                            Callable[[list], np.ndarray]]:
        """The source's own eval preprocessing: (one image path -> array, arrays -> NCHW)."""

    def forward(self, model, inputs: np.ndarray, batch_size: int) -> np.ndarray: ...

    def for_inference(self, model) -> list[str]:
        """Switch the model to the inference form its source uses (switch_to_inference);
        notes on what was switched."""

    def export(self, model, sample: np.ndarray, path: Path, opset: int,
               dynamic_batch: bool, workdir: Path) -> list[str] | None:
        """Write ONNX to `path`; return notes on any fix-up applied to the exported graph."""

    def capture(self, model, inputs: np.ndarray, record: Callable[..., None]) -> None:
        """Run the eval forward on `inputs` with a hook on every convolution, linear and
        normalisation layer, calling record(name, kind, weight_shape, output) in execution
        order: name as the source names the layer (e.g. backbone.layer3.2.convs.1), kind
        'conv' | 'linear' | 'norm', output a numpy array."""


def switch_to_inference(named_modules, method: str, framework: str) -> list[str]:
    """Call the source's own re-parameterisation METHOD (switch_to_deploy, re_parameterize)
    on the outermost modules that have it, in the source's module order; notes saying which
    were switched (empty when none has it).

    Where the source's own METHOD raises (mindcv 0.3's RepVGG reads `branch.conv` of a
    SequentialCell), that module is exported as it is, the form it was trained in, and a
    note names it and the error. That is still the checkpoint's function: the reference
    logits come from the model as trained, so the logit gate compares the exported graph,
    switched, unswitched or left half-way by the failure, with the model before any switch."""
    switched: list[str] = []
    failed: list[tuple[str, Exception]] = []
    for name, module in named_modules:
        done = switched + [f for f, _ in failed]
        if any(name.startswith(d + ".") for d in done) or "" in done:
            continue
        if callable(getattr(module, method, None)):
            try:
                getattr(module, method)()
            except Exception as exc:  # noqa: BLE001 - the source's own code: its failure
                failed.append((name, exc))
                continue
            switched.append(name)

    def shown(names: list[str]) -> str:
        more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
        return ", ".join(n or "(model)" for n in names[:4]) + more

    notes = []
    if switched:
        notes.append(f"exported the inference form: {framework}'s own {method}() on "
                     f"{shown(switched)}; reference logits are from the model as trained")
    if failed:
        first = failed[0][1]
        notes.append(f"exported as trained: {framework}'s own {method}() failed on "
                     f"{shown([f for f, _ in failed])} ({type(first).__name__}: "
                     f"{str(first)[:200]}); the logit gate compares the graph with the model "
                     "as trained")
    return notes


# --------------------------------------------------------------------------- checkpoints
def require_file(path: Path) -> int:
    """Size of a checkpoint file; a missing or empty one is a WorkerError naming it."""
    path = Path(path)
    if not path.is_file():
        raise WorkerError("checkpoint_missing", f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise WorkerError("checkpoint_format", f"checkpoint {path.name} is empty (0 bytes)")
    return size


# --------------------------------------------------------------------------- strict keys
def compare_shapes(state: dict[str, tuple], model: dict[str, tuple],
                   ignore=lambda key: False) -> dict:
    """Missing / unexpected / shape-mismatched keys of a checkpoint against a model."""
    missing = sorted(k for k in model if k not in state and not ignore(k))
    unexpected = sorted(k for k in state if k not in model and not ignore(k))
    shapes = sorted((k, list(state[k]), list(model[k]))
                    for k in state if k in model and tuple(state[k]) != tuple(model[k]))
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shapes}


def is_clean(diff: dict) -> bool:
    return not (diff["missing"] or diff["unexpected"] or diff["shape_mismatch"])


def mismatch_text(diff: dict, limit: int = 5) -> str:
    parts = []
    for label in ("missing", "unexpected"):
        items = diff[label]
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label} keys: {', '.join(items[:limit])}{more}")
    items = diff["shape_mismatch"]
    if items:
        shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in items[:limit])
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        parts.append(f"{len(items)} shape mismatches: {shown}{more}")
    return "; ".join(parts)


def _class_count_hint(diff: dict, num_classes: int | None) -> str:
    """'The checkpoint has 1001 classes' when only the classifier's class dimension differs."""
    if num_classes is None or diff["missing"] or diff["unexpected"]:
        return ""
    seen = set()
    for _key, ck_shape, model_shape in diff["shape_mismatch"]:
        if num_classes not in model_shape or len(ck_shape) != len(model_shape):
            return ""
        axis = model_shape.index(num_classes)
        others = [a == b for i, (a, b) in enumerate(zip(ck_shape, model_shape)) if i != axis]
        if not all(others):
            return ""
        seen.add(ck_shape[axis])
    if len(seen) != 1:
        return ""
    return (f"Only the classifier differs: the checkpoint has {seen.pop()} classes, the entry "
            f"says num_classes: {num_classes}.")


def require_fit(adapter: Adapter, state: dict[str, tuple], model_shapes: dict[str, tuple],
                candidates: list[dict], layout: str, ignore=lambda key: False,
                num_classes: int | None = None) -> None:
    """Raise checkpoint_mismatch, naming the manifest entries whose models the state fits."""
    diff = compare_shapes(state, model_shapes, ignore)
    if is_clean(diff):
        return
    fits, built = [], {}
    for cand in candidates:
        key = (cand["model_id"], cand["num_classes"])
        if key not in built:
            try:
                built[key] = adapter.state_shapes(adapter.build(*key))
            except WorkerError:
                continue
        if is_clean(compare_shapes(state, built[key], ignore)):
            fits.append(cand["name"])
    hint = (f" The checkpoint's keys and shapes fit manifest entry "
            f"{', '.join(map(repr, fits))}: use that entry." if fits else
            f" No other {adapter.framework} entry in the manifest fits it either.")
    classes = _class_count_hint(diff, num_classes)
    if classes:
        hint = f" {classes}" + hint
    raise WorkerError(
        "checkpoint_mismatch",
        f"checkpoint does not fit the model (layout detected: {layout}): "
        f"{mismatch_text(diff)}.{hint}",
        {"missing": diff["missing"][:20], "unexpected": diff["unexpected"][:20],
         "shape_mismatch": diff["shape_mismatch"][:20],
         "counts": {k: len(v) for k, v in diff.items()}, "fits_entries": fits})


# --------------------------------------------------------------------------- the flows
def run(adapter: Adapter, data: dict, workdir: Path) -> dict:
    """Dispatch job.json's job to its task (converters/protocol.py JOBS): convert (the
    default), evaluate, bench, latency, capture, describe or list."""
    job = parse_job(data)
    threads = int(job.threads or os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # adapters size their thread pools from it
    from converters import worker_tasks   # its tasks use this module's helpers

    tasks = {"convert": convert, "evaluate": worker_tasks.evaluate,
             "bench": worker_tasks.bench, "latency": worker_tasks.latency,
             "capture": worker_tasks.capture, "describe": worker_tasks.describe,
             "list": worker_tasks.list_models}
    return tasks[job.task](adapter, job, workdir)


def _data_workers(job) -> int:
    return int(job.data_workers or os.cpu_count() or 1)


def _shapes_ok(inputs: np.ndarray, count: int, entry: dict) -> None:
    expected = [count, *entry["input_shape"]]
    if list(inputs.shape) != expected:
        raise WorkerError("preprocess", f"preprocessed tensor has shape "
                                        f"{list(inputs.shape)}, manifest says {expected}")


def _max_pixels(job) -> int | None:
    """The job's pixel limit (converters/data_loader.py); 0 turns the check off, None is the
    loader's default."""
    value = DEFAULT_MAX_PIXELS if job.max_image_pixels is None else job.max_image_pixels
    return int(value) if value else None


def preprocess_all(paths: list[str], per_image, collate, workers: int,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> tuple[np.ndarray | None, list[int], list[dict]]:
    """Every image through the source's transforms: (N x C x H x W float32 or None when none
    decoded, positions of the decoded images, the unreadable ones)."""
    parts, used, unreadable = [], [], []
    for batch in batches(paths, per_image, collate, 32, workers, max_pixels=max_pixels):
        unreadable += batch.unreadable
        if batch.array is not None:
            parts.append(batch.array)
            used += batch.indices
    if not parts:
        return None, used, unreadable
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), used, unreadable


def source_failure(framework: str, what: str, exc: Exception) -> str:
    """What the source's own code failed at, in its words (one line): the message of an
    `unsupported` model, here and in the mindcv checkpoint maker."""
    first = " ".join(str(exc).split())[:300]
    return f"{framework}'s own code cannot {what} here: {type(exc).__name__}: {first}"


def _source_failed(adapter: Adapter, what: str, exc: Exception) -> WorkerError:
    return WorkerError("unsupported", source_failure(adapter.framework, what, exc))


def build_with_source(adapter: Adapter, model_id: str, num_classes: int):
    """adapter.build; where the source's own constructor raises (mindcv 0.3's rexnet on
    MindSpore 2.7.2 reshapes a Tensor before its initializer ran), the model is `unsupported`
    with the source's words: the source cannot build it in this environment, whatever the
    checkpoint."""
    try:
        return adapter.build(model_id, num_classes)
    except (WorkerError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the source's own code: its failure
        raise _source_failed(adapter, f"build {model_id}", exc) from exc


def forward_with_source(adapter: Adapter, model, inputs: np.ndarray, batch_size: int,
                        model_id: str):
    """adapter.forward; where the source's own forward raises on the entry's input (mindcv
    0.3's pvt calls ops.ResizeBilinear, which MindSpore 2.7 removed), `unsupported` with the
    source's words and the input shape."""
    try:
        return adapter.forward(model, inputs, batch_size)
    except (WorkerError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the source's own code: its failure
        raise _source_failed(adapter, f"run {model_id} on input {list(inputs.shape[1:])}",
                             exc) from exc


def convert(adapter: Adapter, job: ConvertJob, workdir: Path) -> dict:
    """build -> load -> preprocess -> reference logits -> export; returns result fields."""
    entry, timer = job.entry, Timer()
    result: dict = {"versions": adapter.versions(), "files": {}}

    with timer.stage("build"):
        log(f"building {entry['model_id']} with {adapter.framework}")
        model = build_with_source(adapter, entry["model_id"], entry["num_classes"])
    with timer.stage("load"):
        log(f"loading {job.checkpoint}")
        result["checkpoint"] = adapter.load(model, Path(job.checkpoint), job.candidates,
                                            entry["num_classes"])
    with timer.stage("preprocess"):
        images = job.images
        log(f"preprocessing {len(images)} images with {adapter.framework}'s transforms")
        per_image, collate = adapter.transform(entry["preprocess"])
        inputs, used, unreadable = preprocess_all(images, per_image, collate,
                                                  _data_workers(job), _max_pixels(job))
        if inputs is None:
            raise WorkerError("preprocess", f"{adapter.framework} could not decode any of the "
                                            f"{len(images)} verification images: "
                                            f"{unreadable[0]['error']}", {"unreadable": unreadable})
        _shapes_ok(inputs, len(used), entry)
        np.save(workdir / "inputs.npy", inputs)
        result["files"]["inputs"] = "inputs.npy"
        result["images_used"] = used
        if unreadable:
            result["unreadable"] = unreadable
    if job.calibration_images:
        with timer.stage("calibration"):
            paths = job.calibration_images
            log(f"preprocessing {len(paths)} int8 calibration images")
            calibration, _, _ = preprocess_all(paths, per_image, collate, _data_workers(job),
                                               _max_pixels(job))
            if calibration is None:
                raise WorkerError("preprocess", "no int8 calibration image could be decoded")
            np.save(workdir / "calibration.npy", calibration)
            result["files"]["calibration"] = "calibration.npy"
            result["calibration_images"] = len(calibration)
    with timer.stage("reference"):
        log(f"running {adapter.framework} eval forward")
        logits = forward_with_source(adapter, model, inputs, job.batch_size, entry["model_id"])
        np.save(workdir / "reference_logits.npy", np.asarray(logits, dtype=np.float32))
        result["files"]["reference_logits"] = "reference_logits.npy"
    with timer.stage("sensitivity"):
        from converters.worker_tasks import rounding_sensitivity

        result["source_sensitivity"] = rounding_sensitivity(adapter, model, inputs)
    # The reference logits above came from the model as trained; the export is of the
    # inference form the source itself switches to (RepVGG-style re-parameterisation), so the
    # logit gate checks that switch too; the switched source's own distance from the model as
    # trained names the cause when that fails (orchestrator/stages/verify.py).
    notes = adapter.for_inference(model)
    if notes:
        with timer.stage("inference_form"):
            moved = np.abs(np.asarray(logits, np.float64) - forward_with_source(
                adapter, model, inputs, job.batch_size, entry["model_id"]))
            result["inference_form_change"] = {"images": int(len(inputs)),
                                               "max_abs_logit_change": float(moved.max())}
    with timer.stage("export"):
        opset, dynamic = entry["export"]["opset"], entry["export"]["dynamic_batch"]
        log(f"exporting ONNX opset {opset}, dynamic batch {dynamic}")
        notes += adapter.export(model, inputs[:1], workdir / "exported.onnx", opset, dynamic,
                                workdir) or []
        result["files"]["onnx"] = "exported.onnx"
        if notes:
            result["export_fixups"] = notes
    result["timings"] = timer.seconds
    return result


@contextmanager
def hooked(named_layers, kinds, register, to_numpy, record):
    """Forward hooks for an adapter's capture: on every (name, layer) whose type is in
    `kinds` ((types, kind) pairs), `register(layer, hook)` a hook that calls
    record(name, kind, weight shape, to_numpy(output)); all removed on exit."""
    handles = []
    try:
        for name, layer in named_layers:
            kind = next((k for types, k in kinds if isinstance(layer, types)), None)
            if kind is None:
                continue
            shape = tuple(layer.weight.shape) if kind != "norm" else None

            def hook(_layer, _args, output, name=name, kind=kind, shape=shape):
                record(name, kind, shape, to_numpy(output))
            handles.append(register(layer, hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def class_rewrites(rules, used: set[type], originals: dict | None = None):
    """An export rewrite's patching, for every source (converters/<source>/rewrites.py): for
    the duration of the block, each rule (module, class, attribute, replacement, why) whose
    class is among the `used` layer types (or a base of one) has that attribute replaced;
    yields one note per rule applied. `originals` gets each replaced attribute by (class,
    attribute), for a replacement that falls back to it. Everything is put back on exit."""
    applied, notes = [], []
    for module_name, class_name, attribute, replacement, why in rules:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        if not any(issubclass(t, cls) for t in used):
            continue
        original = cls.__dict__[attribute]
        if originals is not None:
            originals[(cls, attribute)] = original
        applied.append((cls, attribute, original))
        setattr(cls, attribute, replacement)
        notes.append(f"export rewrite: {class_name}.{attribute}: {why} (the logit gate "
                     "compares with the unmodified model)")
    try:
        yield notes
    finally:
        for cls, attribute, original in reversed(applied):
            setattr(cls, attribute, original)
