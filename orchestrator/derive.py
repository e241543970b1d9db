"""Entry fields the manifest leaves to the source, filled in from the source itself.

An entry needs only name, source, model_id, num_classes and checkpoint. The rest
(manifests/schema.py DERIVED) comes from the source's own files in its installed package,
read by the worker's `describe` task in the source's environment (converters/<source>/
derive.py): the eval preprocessing and input size from the model's config, the published
top-1/top-5 from its model index. A field written in the manifest wins, and the worker still
checks a written preprocess against the config, as before.

The published figures are taken only when the entry's checkpoint is the file the source
publishes them for (same file name as the source's checkpoint URL): a fine-tuned or
re-trained checkpoint is not gated against someone else's accuracy.
"""
from __future__ import annotations

import copy
from pathlib import PurePosixPath
from urllib.parse import urlparse

from converters.protocol import DescribeJob, Job, ListJob, PipelineError
from converters.registry import SOURCES
from converters.runner import WorkerFailed, run_worker
from manifests.loader import Entry
from manifests.schema import DERIVED
from orchestrator.workdir import run_dir

DESCRIBE_TIMEOUT = 600.0


class DeriveFailed(PipelineError):
    """The source could not describe the model; kind is the worker's (model_id,
    unsupported, ...), message says why."""


def _worker(source: str, job: Job, label: str, timeout: float, memory_limit) -> dict:
    with run_dir(label) as workdir:
        try:
            return run_worker(SOURCES[source], job, workdir, timeout=timeout,
                              memory_limit=memory_limit)
        except WorkerFailed as exc:
            raise DeriveFailed(exc.kind, exc.message, exc.details) from None


def describe(source: str, model_id: str, timeout: float = DESCRIBE_TIMEOUT,
             memory_limit: int | None = None, threads: int | None = 1) -> dict:
    """What the source says about MODEL_ID (converters/worker_flow.py `describe`). A run
    passes its own THREADS (None: all cores) so that, with warm workers, the describe and the
    entry's convert share one framework process (converters/runner.py WarmPool)."""
    return _worker(source, DescribeJob(model_id=model_id, threads=threads),
                   f"describe-{source}", timeout, memory_limit)


def describe_many(source: str, model_ids: list[str], timeout: float = 3600.0
                  ) -> dict[str, dict]:
    """describe() for many models in one worker: id -> described, or {"error": {kind,
    message}} for a model the source cannot describe."""
    out = _worker(source, DescribeJob(model_ids=list(model_ids), threads=1),
                  f"describe-{source}", timeout, None)
    for described in out["models"].values():
        described.setdefault("versions", out["versions"])
    return out["models"]


def list_models(source: str, pattern: str = "", timeout: float = DESCRIBE_TIMEOUT) -> list[dict]:
    """[{model_id, family, dataset}] of the source's classifiers matching PATTERN (dataset:
    what the source's own results are on, None where it does not say)."""
    return _worker(source, ListJob(pattern=pattern, threads=1),
                   f"list-{source}", timeout, None)["models"]


def needs_source(entry: Entry) -> bool:
    return any(key not in entry.data for key in DERIVED)


def _file_name(url: str) -> str:
    return PurePosixPath(urlparse(url).path).name


def merge(entry: Entry, described: dict) -> tuple[Entry, dict]:
    """The entry with its missing fields from `described`, and the report's `derived`
    section: each field taken, the package file it came from, and what was not taken."""
    data = copy.deepcopy(entry.data)
    origin = described.get("derived_from", {})
    taken, notes = {}, list(described.get("notes", []))
    for key in ("preprocess", "input_shape"):
        if key not in data:
            data[key] = copy.deepcopy(described[key])
            taken[key] = origin.get(key, "")
    if "published" not in data:
        theirs = (described.get("checkpoint") or {}).get("url")
        if described.get("published") and theirs and \
                _file_name(theirs) == _file_name(entry["checkpoint"]["url"]):
            data["published"] = copy.deepcopy(described["published"])
            taken["published"] = origin.get("published", "")
        elif described.get("published"):
            notes.append(f"published top-1/top-5 not taken: the entry's checkpoint "
                         f"({_file_name(entry['checkpoint']['url'])}) is not the file the "
                         f"source publishes them for ({_file_name(theirs or '')})")
    section = {"fields": taken, "family": described.get("family"),
               "source_versions": described.get("versions", {}), "notes": notes}
    return Entry(data, entry.file, declared=entry.as_written), section


def resolve(entry: Entry, memory_limit: int | None = None, threads: int | None = 1
            ) -> tuple[Entry, dict | None]:
    """The entry ready for every stage; (entry, None) when the manifest gave every field."""
    if not needs_source(entry):
        return entry, None
    return merge(entry, describe(entry.source, entry["model_id"], memory_limit=memory_limit,
                                 threads=threads))
