"""The driver loop: every chosen entry's tasks on the executor (local or Ray), the accuracy
shards they fan out to, and each entry's end (`run_all`). What one entry's stages do is
orchestrator/run.py (`prepare_entry`, a task; `finish_entry`, on the driver), each stage in
orchestrator/stages/. Imports no deep-learning framework.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from converters.protocol import PipelineError
from converters.registry import SOURCES
from fetch.download import FetchError, fetch, sha256_file
from fetch.lock import locked_spec, prefix_only
from manifests.loader import Entry
from orchestrator.accuracy import (AccuracyFailed, Selection, ShardJob, ShardResult,
                                   evaluate_shard, merge_shards, plan_shards)
from orchestrator.executor import Executor, Reporter
from orchestrator.fingerprint import dataset_digest, entry_inputs, unchanged_since
from orchestrator.run import finish_entry, prepare_entry
from orchestrator.stages.context import (CheckpointRef, EntryResult, Prepared, RunOptions,
                                         new_report)
from orchestrator.workdir import run_dir
from release.store import StoreError, open_store


@dataclass
class _EntryState:
    index: int
    entry: Entry
    header: str
    checkpoint: CheckpointRef
    blob: object                  # executor.ship_file() of a --checkpoint file (a Ray ref) or None
    dataset: str | None           # dataset digest (--data), for the inputs fingerprint
    inputs: dict | None = None
    prepared: Prepared | None = None
    shards: dict[int, ShardResult | None] = field(default_factory=dict)   # None: failed
    planned: int = 0
    model_blobs: list = field(default_factory=list)
    accuracy_start: float = 0.0
    accuracy_error: PipelineError | None = None


def checkpoint_ref(entry: Entry, opts: RunOptions) -> CheckpointRef:
    """The entry's checkpoint as a task fetches it: with the lock's full digest when the
    entry is locked (fetch/lock.py)."""
    spec = locked_spec(entry.name, entry["checkpoint"], opts.checkpoint_lock)
    local = opts.checkpoints.get(entry.name)
    if local is None:
        return CheckpointRef(spec, str(opts.cache_dir), mirror=opts.mirror)
    path = Path(local).expanduser().resolve()
    sha = sha256_file(path) if path.is_file() else None
    return CheckpointRef(spec, str(opts.cache_dir), local=str(path), sha256=sha)


def _known_sha256(ref: CheckpointRef) -> str | None:
    """The checkpoint's sha256 without running anything: pinned in full, a local file, or the
    cached (digest-checked) file. None when only a download would tell."""
    if ref.local:
        return ref.sha256
    if "sha256" in ref.spec:
        return ref.spec["sha256"]
    try:
        return fetch(ref.spec, Path(ref.cache_dir), mirror=ref.mirror).sha256
    except FetchError:
        return None


def _inputs(entry: Entry, opts: RunOptions, sha: str | None, dataset: str | None) -> dict:
    return entry_inputs(entry.as_written, SOURCES[entry.source], sha or "unknown", dataset,
                        opts.precisions, opts.signing_key_id,
                        {"max_image_pixels": opts.limits.max_image_pixels})


def check_dataset_here(selection: Selection, expected: str) -> str | None:
    """On a node: None when the dataset is there as the driver sees it, else what differs."""
    root = selection.dataset.root
    if not root.is_dir():
        return f"dataset folder {root} does not exist"
    for position in selection.positions:
        if not selection.dataset.paths[position].is_file():
            return f"{selection.dataset.paths[position]} is missing"
    if dataset_digest(selection) != expected:
        return f"the images under {root} differ (file sizes) from the driver's"
    return None


def run_all(chosen: list[Entry], all_entries: list[Entry], opts: RunOptions,
            executor: Executor, reporter: Reporter) -> list[EntryResult]:
    """Every chosen entry, its tasks on `executor`; results in manifest order."""
    results: dict[str, EntryResult] = {}
    speaking = [None]   # the entry whose lines were printed last

    def say_for(name: str):
        """Lines of one entry; its header first when another entry's lines came between
        (a cluster finishes entries in any order)."""
        def say(text: str) -> None:
            if speaking[0] != name and not text.startswith("["):
                reporter.say(f"{states[name].header}  (continued)")
            speaking[0] = name
            reporter.say(text)
        return say

    dataset = dataset_digest(opts.data) if opts.data is not None else None
    skip_store = open_store(opts.skip_unchanged) if opts.skip_unchanged is not None else None
    reporter.emit_event("plan", entries=len(chosen))
    states: dict[str, _EntryState] = {}
    pending: dict = {}   # handle -> (entry name, shard index or None)
    cpus = opts.threads or 1

    def done(name: str, result: EntryResult) -> None:
        results[name] = result
        reporter.emit_event("entry_done", name=name, status=result.status)

    with run_dir("driver", keep=opts.keep_work) as driver_dir:
        if opts.data is not None:
            envs = {SOURCES[e.source].env for e in chosen}
            problems = [f"{node}: {problem}" for node, problem in
                        executor.on_each_node(check_dataset_here, opts.data, dataset)
                        if problem]
            if problems and envs:
                raise DatasetUnavailable("--data must be readable at the same path on every "
                                         "node: " + "; ".join(problems))
        for index, entry in enumerate(chosen, start=1):
            header = (f"[{index}/{len(chosen)}] {entry.name}  ({entry.source} "
                      f"{entry['model_id']})")
            reason = executor.unavailable(entry.source)
            if reason:
                reporter.say(header)
                reporter.say(f"  skipped: {reason}")
                done(entry.name, EntryResult(entry.name, "unavailable", reason, 0.0))
                continue
            ref = checkpoint_ref(entry, opts)
            if opts.require_lock and not ref.local and prefix_only(ref.spec):
                command, lock_file = opts.require_lock
                reason = (f"checked only against the 8 hex digits its publisher gives (32 "
                          f"bits) and not in {lock_file}: run `{command} --only {entry.name}`, "
                          "review and commit the line")
                state = _EntryState(index, entry, header, ref, None, dataset)
                state.prepared = Prepared(new_report(entry))
                state.prepared.report.fail("fetch", "unlocked", reason, status="error")
                reporter.say(header)
                reporter.say(f"  ERROR     [fetch/unlocked] {reason}")
                speaking[0] = entry.name
                done(entry.name, _finish(state, opts, driver_dir, reporter.say))
                continue
            state = _EntryState(index, entry, header, ref, None, dataset)
            if opts.skip_unchanged is not None:
                sha = _known_sha256(ref)
                state.inputs = _inputs(entry, opts, sha, dataset)
                try:
                    version = sha and unchanged_since(skip_store, entry.name,
                                                      state.inputs["fingerprint"])
                except StoreError as exc:   # converting again is safe; say why it happens
                    reporter.say(f"{entry.name}: --skip-unchanged could not read the store, "
                                 f"converting: {exc}")
                    version = None
                if version:
                    reporter.say(header)
                    reporter.say(f"  skipped: unchanged since {version} (same checkpoint, "
                                 "entry, locks, code, dataset, precisions)")
                    done(entry.name, EntryResult(entry.name, "unchanged",
                                                 f"unchanged since {version}", 0.0))
                    continue
            if ref.local and ref.sha256:
                state.blob = executor.ship_file(Path(ref.local))
            states[entry.name] = state
            # Where the task runs in this process, its files are moved to the folder
            # _finish uses (orchestrator/workdir.py hand_over), not sent back as bytes.
            handoff = driver_dir / entry.name if executor.shares_files else None
            handle = executor.submit(prepare_entry, entry, all_entries, opts, ref, state.blob,
                                     header, handoff=handoff, env=SOURCES[entry.source].env,
                                     cpus=cpus, priority=(index, 0), label=f"entry:{entry.name}")
            pending[handle] = (entry.name, None)
        try:
            while pending:
                outcome = executor.wait_any(list(pending))
                name, shard = pending.pop(outcome.handle)
                state = states[name]
                say = say_for(name)
                if not outcome.lines:   # it ran in this process: its lines are printed
                    speaking[0] = name
                for line in outcome.lines:
                    say(line)
                if shard is None:
                    _entry_returned(state, outcome, opts, executor, pending, reporter, say)
                else:
                    _shard_returned(state, shard, outcome, reporter)
                if state.prepared is not None and len(state.shards) == state.planned:
                    done(name, _finish(state, opts, driver_dir, say))
        except BaseException:
            executor.cancel(list(pending))   # Ctrl-C: the cluster drops this run's tasks
            raise
    return [results[e.name] for e in chosen]


class DatasetUnavailable(Exception):
    """--data is not readable on some node; the message names the node."""


def _entry_returned(state: _EntryState, outcome, opts: RunOptions, executor: Executor,
                    pending: dict, reporter: Reporter, say) -> None:
    entry = state.entry
    if outcome.error is not None:
        prepared = Prepared(new_report(entry))
        prepared.report.fail("executor", "task_failed", _failure_text(outcome.error),
                             status="error")
        say(f"  ERROR     [executor/task_failed] {_failure_text(outcome.error)}")
        state.prepared = prepared
        return
    state.prepared = prepared = outcome.value
    if prepared.entry is not None:   # fields the manifest left to the source, now filled in
        state.entry = entry = Entry(prepared.entry, entry.file, declared=entry.as_written)
    if opts.data is None or prepared.status is not None or not prepared.runnable:
        return
    selection = opts.data
    names = ["onnx", *(p for p, v in prepared.variants.items() if v["passed"])]
    state.model_blobs = [executor.put(prepared.files["model.onnx"]),
                         *(executor.put(prepared.variants[p]["onnx"]) for p in names[1:])]
    paths = [str(selection.dataset.paths[i]) for i in selection.positions]
    slices = plan_shards(len(paths), opts.shard_size, entry["accuracy"]["batch_size"])
    state.planned = len(slices)
    state.accuracy_start = time.perf_counter()
    reporter.emit_event("shards_planned", entry=entry.name, count=len(slices))
    say(f"  accuracy  {len(paths)} images in {len(slices)} shard(s), "
        f"{SOURCES[entry.source].framework} and ONNX Runtime on the same "
        f"{entry['preprocess']['pipeline']}-preprocessed tensors")
    for k, part in enumerate(slices):
        job = ShardJob(entry.data, entry.source, k, part.start, paths[part.start:part.stop],
                       state.checkpoint, names, opts.threads, opts.data_workers,
                       opts.worker_timeout, opts.keep_work, opts.limits,
                       (prepared.report.deploy or {}).get("contract"))
        handle = executor.submit(evaluate_shard, job, state.blob, *state.model_blobs,
                                 env=SOURCES[entry.source].env, cpus=opts.threads or 1,
                                 priority=(state.index, 1, k),
                                 label=f"shard:{entry.name}:{k}")
        pending[handle] = (entry.name, k)


def _failure_text(err: Exception) -> str:
    """A task's failure in one line for the report: the kind of an expected failure (the
    executor's view of Ray's: orchestrator/executor.py ray_failure), else the exception's type."""
    if isinstance(err, PipelineError):
        return f"{err.kind}: {err.message}"
    return f"{type(err).__name__}: {err}"


def _shard_returned(state: _EntryState, index: int, outcome, reporter: Reporter) -> None:
    if outcome.error is not None:
        err = outcome.error
        if isinstance(err, AccuracyFailed) or (isinstance(err, PipelineError) and err.stage):
            error = err   # the gate's own failure, or the shard's fetch (CheckpointRef)
            error.stage = error.stage or "accuracy"
        else:
            error = PipelineError("task_failed", f"shard {index}: {_failure_text(err)}",
                                  stage="accuracy")
        state.accuracy_error = state.accuracy_error or error
        state.shards[index] = None
        return
    state.shards[index] = outcome.value
    reporter.emit_event("shard_done", entry=state.entry.name, images=outcome.value.images)


def _finish(state: _EntryState, opts: RunOptions, driver_dir: Path, say) -> EntryResult:
    entry, prepared = state.entry, state.prepared
    workdir = driver_dir / entry.name
    workdir.mkdir(exist_ok=True)
    merged = None
    if state.planned and state.accuracy_error is None:
        wall = time.perf_counter() - state.accuracy_start
        prepared.report.timings["accuracy"] = round(wall, 3)
        pinned = prepared.report.source["checkpoint"]["pinned"]
        names = [p for p, v in prepared.variants.items() if v["passed"]]
        merged = merge_shards(entry, opts.data, list(state.shards.values()), pinned, names,
                              wall)
    # The fingerprint of what this run used (the checkpoint as the task saw it).
    sha = prepared.report.source.get("checkpoint", {}).get("sha256")
    inputs = _inputs(entry, opts, sha, state.dataset) if sha else state.inputs
    return finish_entry(entry, prepared, opts, workdir, merged, state.accuracy_error,
                        inputs, say=say)
