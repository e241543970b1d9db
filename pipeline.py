#!/usr/bin/env python
"""Convert image-classifier checkpoints to verified ONNX artifacts.

For each manifest entry: fetch the checkpoint (cache + digest), build the model with the
source framework's own code and export it with that framework's exporter (in a separate
worker process and environment), simplify with onnxsim, check ONNX Runtime's logits
against the source framework's on the same inputs, and write OUT/NAME/{model.onnx,
report.json} only if every check passed. A failed entry gets OUT/NAME/report.json saying
which check failed, by how much, and why.

With --data (a labelled ImageNet-val folder), each entry also gets the accuracy gate: top-1
and top-5 of the source framework and of ONNX Runtime on the same tensors, preprocessed by
the source's own eval transforms; the gates (ONNX vs source top-1, disagreement, unreadable
images, and the publisher's top-1 for the pinned checkpoint) are in the manifest.

With --signing-key, each passed artifact is signed (OUT/NAME/model.sig, OpenSSF
model-signing) after it is complete and before it becomes visible; failed entries are never
signed. Subcommands: add, list-models, verify-artifact, publish, keygen, bench, lock-checkpoints,
localize
(see `python pipeline.py CMD --help`).

Where it runs: --executor local (default) runs everything on this machine, entry after entry;
--executor ray runs one task per entry and per accuracy shard on Ray: an embedded local
instance by default, or a cluster with --ray-address (nodes started with `make ray-head` and
`make ray-worker`). Both report the same figures. Artifacts are written, signed and published
on this machine either way. --skip-unchanged STORE skips an entry whose latest version in
STORE was made from the same inputs. A STORE is a folder or s3://BUCKET/PREFIX (AWS S3 or any
S3-compatible server; credentials and endpoint from the AWS variables, see `publish --help`).

Exit status: 0 if every selected entry passed (or was unchanged), 1 if any did not, 2 for bad
usage or a bad manifest, 130 when interrupted (no half-written artifact is left).

\b
Examples:
  python pipeline.py --list
  python pipeline.py --manifest manifests/all.yaml --only res2net50-w14-s8
  python pipeline.py --only res2net50-w14-s8 --checkpoint res2net50-w14-s8=my.pth --out out/
  python pipeline.py --only res2net50-w14-s8 --data /data/imagenet/val --limit 5000
  python pipeline.py --executor ray --data /data/imagenet/val       # embedded Ray, all cores
  python pipeline.py --executor ray --ray-address head:6379 --data /shared/imagenet/val
  python pipeline.py --signing-key key.pem --out out/ && \
      python pipeline.py publish --from out/ --to store/ --public-key key.pub
  python pipeline.py verify-artifact s3://models/nightly/res2net50-w14-s8 --public-key key.pub
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

from converters.data_loader import DEFAULT_MAX_PIXELS
from converters.runner import WorkerLimits, warm_workers
from converters.variants import PRECISIONS
from fetch.download import DEFAULT_CACHE, FetchError, fetch, local_checkpoint, sha256_file
from fetch.lock import LockError, lock_path_for, locked_spec, read_lock, write_lock
from converters.registry import SOURCES
from manifests.loader import Entry, ManifestError, load_manifest, select
from manifests.schema import DERIVED
from orchestrator.accuracy import DEFAULT_RAY_SHARD_SIZE, Selection
from orchestrator.executor import Reporter, make_executor
from orchestrator.driver import DatasetUnavailable, run_all
from orchestrator.stages.context import RunOptions
from orchestrator.summary import format_summary
from release.contract_files import LABELS_FILE, PREPROCESS_FILE
from release.publish import publish as publish_store
from release.store import StoreError, fetch_artifact, is_url, open_store
from manifests.bounded import read_json
from release.provenance import ProvenanceError, check_statement, checkpoint_dependency
from release.signing import SigningError, check_signing_key, generate_key, verify_directory
from verify.dataset import DatasetError, check_num_classes, load_dataset, spread_subset
from orchestrator.localize import LOCALIZE_IMAGES
from verify.localize import LAYER_RTOL
from verify.runners import RUNTIMES

HERE = Path(__file__).resolve().parent
# Every command that fetches checkpoints reads the same cache (docs/usage.md, "Commands").
CACHE_DIR_OPTION = click.option(
    "--cache-dir", type=click.Path(path_type=Path),
    default=lambda: os.environ.get("MODEL_CONVERT_CACHE", str(DEFAULT_CACHE)),
    show_default="$MODEL_CONVERT_CACHE or ~/.cache/model-convert/checkpoints",
    help="Checkpoint cache.")


def _parse_checkpoints(values: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH, got {value!r}",
                                     param_hint="--checkpoint")
        out[name] = Path(path).expanduser()
    return out


@click.group(invoke_without_command=True, help=__doc__,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--manifest", type=click.Path(path_type=Path), default=HERE / "manifests" /
              "all.yaml", show_default="manifests/all.yaml", help="Manifest YAML to run.")
@click.option("--only", multiple=True, metavar="NAME",
              help="Run only this entry (repeatable). Default: every entry.")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="NAME=PATH",
              help="Use a local checkpoint file for entry NAME instead of fetching the pinned "
                   "URL. Its sha256 is recorded; the report says whether it is the pinned "
                   "file. Repeatable.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("artifacts"),
              show_default=True, help="Where OUT/NAME artifact directories are written.")
@CACHE_DIR_OPTION
@click.option("--data", "data_dir", default=None, envvar="DATASETS_DIR",
              type=click.Path(path_type=Path),
              help="Labelled ImageNet-val folder (env DATASETS_DIR): class sub-folders "
                   "(synsets or indices), or flat with val.txt ('NAME LABEL') or val_map.txt "
                   "('NAME<TAB>LABEL'). Adds the accuracy gate: top-1/top-5 of the source "
                   "framework and of ONNX Runtime on the same tensors, preprocessed as the "
                   "source evaluates. The logit check then uses images from it too. Checked "
                   "before any work starts. Default: no accuracy gate, generated images.")
@click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
              help="Evaluate only N images of --data: a deterministic subset spread over all "
                   "classes (the report says how many were used).")
@click.option("--data-workers", type=click.IntRange(min=1), default=None,
              help="Decode/preprocess threads in the source's worker (default: all cores).")
@click.option("--precisions", default="fp32", show_default=True, metavar="LIST",
              help="Comma-separated precisions to ship: fp32 (always), fp16 (float16 with fp32 "
                   "inputs/outputs), int8 (ONNX Runtime static QDQ, per-channel, calibrated on "
                   "--data images spread over the classes, else generated images). Each variant "
                   "is gated against the fp32 source (cosine, top-1 agreement, and with --data "
                   "its top-1 drop); one that fails is not written and does not block fp32.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for the framework and ONNX Runtime (default: all cores with "
                   "the local executor; 1 per task with ray, where each task asks Ray for "
                   "this many CPUs and tasks run side by side).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              envvar="EXECUTOR", show_default=True,
              help="local: every stage in this process and its workers, entry after entry. "
                   "ray: one Ray task per entry (fetch..variants) and per accuracy shard, "
                   "placed on nodes that have the source's environment; an embedded local "
                   "Ray instance unless --ray-address is given.")
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None, metavar="HOST:PORT",
              help="Join this Ray cluster (env RAY_ADDRESS; with --executor ray).")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Accuracy images per task, rounded up to whole batches (default: "
                   f"{DEFAULT_RAY_SHARD_SIZE} with ray: a shard costs about 8 s besides its "
                   f"images (worker start, model build, checkpoint load) against about 70 s "
                   f"of work on one core here, `make bench-scale`; one shard per entry with "
                   f"local). Figures do not depend on it.")
@click.option("--skip-unchanged", default=None, metavar="STORE",
              help="Skip an entry when STORE's latest version of it was made from the same "
                   "inputs: checkpoint sha256, manifest entry, environment locks, pipeline "
                   "code, dataset (files, sizes, labels, --limit), precisions and signing key. "
                   "STORE is a folder or s3://BUCKET[/PREFIX]; its index is read.")
@click.option("--mirror", envvar="MODEL_CONVERT_MIRROR", default=None, metavar="URL",
              help="Fetch checkpoints from this internal mirror (same file names; digests "
                   "still checked) instead of the publishers' hosts (env "
                   "MODEL_CONVERT_MIRROR).")
@click.option("--worker-memory", envvar="MODEL_CONVERT_WORKER_MEMORY", default=None,
              metavar="SIZE", callback=lambda ctx, param, value: _parse_size(value),
              help="Resident memory one framework worker may hold (e.g. 6G, 800M; env "
                   "MODEL_CONVERT_WORKER_MEMORY). Over it the worker is stopped and the entry "
                   "fails with resource_limit; the run goes on. Default: 80 % of the memory "
                   "of the machine running the worker, shared by the workers it runs at once "
                   "(one locally; cores / --threads on a Ray node).")
@click.option("--max-image-pixels", envvar="MODEL_CONVERT_MAX_IMAGE_PIXELS",
              type=click.IntRange(min=0), default=DEFAULT_MAX_PIXELS, show_default=True,
              metavar="N",
              help="An image whose header declares more pixels is not decoded: it counts as "
                   "unreadable ('too large: W x H'). 0 turns the check off (env "
                   "MODEL_CONVERT_MAX_IMAGE_PIXELS).")
@click.option("--checkpoint-lock", type=click.Path(path_type=Path), default=None,
              metavar="FILE",
              help="Full sha256 and size per entry (default: checkpoints.lock beside the "
                   "manifest, when it exists). A locked entry's checkpoint must match all 256 "
                   "bits; `pipeline.py lock-checkpoints` records new lines.")
@click.option("--require-lock", is_flag=True,
              help="An entry checked only against the 8 hex digits its publisher gives (32 "
                   "bits) and not in the checkpoint lock fails at once, naming the command that "
                   "locks it; the others run. `make nightly ONLINE=1` sets it.")
@click.option("--localize", is_flag=True,
              help="Find where in the network ONNX first parts from the source (the first "
                   "conv/linear layer whose output differs by more than "
                   f"{LAYER_RTOL:g} of its range) "
                   "for every entry. Done anyway for an entry whose fp32 logit check fails; "
                   "costs one more source worker run (docs/usage.md, 'Localising a failure').")
@click.option("--keep-work", is_flag=True, help="Keep each entry's work directory.")
@click.option("--fresh-workers", is_flag=True,
              help="Start a new framework process for every job. By default the local "
                   "executor keeps one warm worker per source that imports its framework "
                   "once and takes job after job (a job that failed ends its worker); Ray "
                   "starts one per job anyway. Results are the same either way.")
@click.option("--signing-key", type=click.Path(path_type=Path), envvar="SIGNING_KEY",
              default=None, help="EC private key (PEM) that signs each passed artifact "
              "(env SIGNING_KEY). Without it artifacts are written unsigned.")
@click.option("--list", "list_only", is_flag=True,
              help="List the manifest's entries (name, source, model id) and exit.")
@click.pass_context
def cli(ctx, manifest, only, checkpoints, out_dir, cache_dir, data_dir, limit, data_workers,
        precisions, threads, executor, ray_address, shard_size, skip_unchanged, mirror,
        worker_memory, max_image_pixels, checkpoint_lock, require_lock, localize, keep_work,
        fresh_workers, signing_key, list_only):
    if ctx.invoked_subcommand is not None:
        return
    try:
        entries = load_manifest(manifest)
        chosen = select(entries, only)
    except ManifestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if list_only:
        width = max(len(e.name) for e in entries)
        for e in entries:
            click.echo(f"{e.name:<{width}}  {e.source:<10}  {e['model_id']}")
        return
    try:
        lock, lock_file = _checkpoint_lock(manifest, checkpoint_lock, chosen)
    except LockError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    local = _parse_checkpoints(checkpoints)
    stray = sorted(set(local) - {e.name for e in chosen})
    if stray:
        click.echo(f"error: --checkpoint names {', '.join(stray)}, which "
                   f"{'is' if len(stray) == 1 else 'are'} not selected "
                   f"(selected: {', '.join(e.name for e in chosen)})", err=True)
        sys.exit(2)
    key_id = None
    if signing_key is not None:
        try:
            key_id = check_signing_key(signing_key)
        except SigningError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
    try:
        wanted = _parse_precisions(precisions)
    except click.BadParameter as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    data = None
    if limit is not None and data_dir is None:
        click.echo("error: --limit needs --data (or DATASETS_DIR)", err=True)
        sys.exit(2)
    if data_dir is not None:
        try:
            data = _load_data(data_dir, limit, chosen)
        except DatasetError as exc:
            click.echo(f"error: --data: {exc}", err=True)
            sys.exit(2)
    if skip_unchanged is not None:
        try:   # a wrong URL, bucket or key is said before any work, not after the run
            open_store(skip_unchanged).check()
        except StoreError as exc:
            click.echo(f"error: --skip-unchanged: {exc}", err=True)
            sys.exit(2)
    if ray_address and executor != "ray":
        click.echo("error: --ray-address (or RAY_ADDRESS) needs --executor ray", err=True)
        sys.exit(2)
    if executor == "ray":
        threads = threads or 1
        shard_size = shard_size or DEFAULT_RAY_SHARD_SIZE
    opts = RunOptions(out_dir=out_dir, cache_dir=Path(cache_dir).expanduser(),
                      checkpoints=local, data=data, threads=threads, data_workers=data_workers,
                      precisions=wanted, shard_size=shard_size, mirror=mirror,
                      skip_unchanged=skip_unchanged,
                      checkpoint_lock=lock,
                      require_lock=(f"python pipeline.py lock-checkpoints --manifest {manifest}",
                                    lock_file) if require_lock else None,
                      limits=WorkerLimits(worker_memory, max_image_pixels,
                                          threads if executor == "ray" else None),
                      localize=localize, keep_work=keep_work, signing_key=signing_key,
                      signing_key_id=key_id)
    reporter = Reporter(click.echo, bar=executor == "ray")
    try:
        runner = make_executor(executor, ray_address, reporter)
    except (RuntimeError, ConnectionError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        click.echo(f"executor: {runner.where()}")
        with warm_workers(executor == "local" and not fresh_workers):
            results = run_all(chosen, entries, opts, runner, reporter)
    except DatasetUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the run's tasks were cancelled; no half-written artifact "
                   "is visible", err=True)
        sys.exit(130)
    finally:
        reporter.close()
        runner.close()
    click.echo("")
    click.echo(format_summary(results))
    sys.exit(0 if results and all(r.status in ("passed", "unchanged") for r in results)
             else 1)


def _complete(entry):
    """The entry with the fields its manifest leaves to the source (orchestrator/derive.py);
    exits 2 naming the entry when the source cannot give them."""
    from orchestrator.derive import DeriveFailed, resolve

    try:
        return resolve(entry)[0]
    except DeriveFailed as exc:
        click.echo(f"error: entry {entry.name!r}: [{exc.kind}] {exc.message}", err=True)
        sys.exit(2)


def _checkpoint_lock(manifest: Path, given: Path | None, chosen) -> tuple[dict, Path]:
    """The lock's lines and its path, checked against the chosen entries (a line that
    contradicts the manifest's digest raises LockError)."""
    path = given or lock_path_for(manifest)
    lock = read_lock(path)
    for entry in chosen:
        locked_spec(entry.name, entry["checkpoint"], lock)
    return lock, path


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _parse_size(text: str | None) -> int | None:
    """'6G', '800M', '1.5G', '1073741824' -> bytes (binary units; a trailing B or iB is ok)."""
    if text is None:
        return None
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[:len(value) - len(unit)])
    except ValueError:
        number = -1
    if number <= 0:
        raise click.BadParameter(f"{text!r}: expected a size such as 6G or 800M",
                                 param_hint="--worker-memory")
    return int(number * _UNITS[unit])


def _parse_precisions(text: str) -> tuple[str, ...]:
    asked = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in asked if p not in PRECISIONS]
    if unknown or not asked:
        raise click.BadParameter(f"unknown precision(s) {', '.join(unknown) or repr(text)}; "
                                 f"choose from {', '.join(PRECISIONS)}",
                                 param_hint="--precisions")
    return tuple(p for p in PRECISIONS if p in asked or p == "fp32")


def _load_data(root: Path, limit: int | None, chosen) -> Selection:
    """Parse and check the dataset for every selected entry before any work starts."""
    dataset = load_dataset(root)
    for entry in chosen:
        check_num_classes(dataset, entry["num_classes"], entry.name)
    selection = Selection(dataset, spread_subset(dataset.labels, limit), limit)
    described = selection.describe()
    click.echo(f"data: {dataset.root} ({dataset.layout}), {len(dataset)} images in "
               f"{dataset.classes} classes; evaluating {described['selected']} images in "
               f"{described['selected_classes']} classes"
               + (f" (--limit {limit})" if limit else ""))
    return selection


class ArtifactParam(click.ParamType):
    """An artifact folder, or STORE/NAME[/VERSION] in a store given by URL (s3://...,
    file://...): the newest version when VERSION is left out."""
    name = "ARTIFACT"

    def convert(self, value, param, ctx):
        if isinstance(value, Path) or not is_url(value):
            path = Path(value)
            if not path.is_dir():
                self.fail(f"{value}: no such artifact folder (or give a store URL: "
                          "s3://BUCKET/PREFIX/NAME[/VERSION])", param, ctx)
            return path
        return value


@contextmanager
def _artifact_folder(artifact):
    """A local folder holding ARTIFACT: itself, or a store version downloaded into a
    temporary folder (removed afterwards)."""
    if isinstance(artifact, Path):
        yield artifact
        return
    with tempfile.TemporaryDirectory(prefix="artifact-") as tmp:
        try:
            folder, which = fetch_artifact(artifact, Path(tmp))
        except StoreError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        click.echo(f"fetched {which} from {artifact}", err=True)
        yield folder


@cli.command("verify-artifact")
@click.argument("artifact", type=ArtifactParam())
@click.option("--public-key", type=click.Path(path_type=Path), required=True,
              help="Public key (PEM) the artifact must be signed with.")
@click.option("--checkpoint-lock", type=click.Path(path_type=Path), default=None,
              metavar="FILE",
              help="Also require the checkpoint in the provenance to be this lock's line for "
                   "the entry (e.g. manifests/checkpoints.lock).")
def verify_artifact(artifact, public_key: Path, checkpoint_lock: Path | None):
    """Check ARTIFACT's signature over every file, that its report says passed, and its
    SLSA provenance: every model file, preprocess.json and labels.txt is a subject with its
    digest, and (with
    --checkpoint-lock) the checkpoint it was built from is the locked one.

    A changed byte in any file fails with the file's name; another key fails naming the key.
    Prints a summary of the provenance. Exit status 0 when the artifact verifies, 1 otherwise
    (2 when a store given by URL cannot be read).

    \b
      python pipeline.py verify-artifact out/res2net50-w14-s8 --public-key key.pub
      python pipeline.py verify-artifact s3://models/nightly/res2net50-w14-s8 --public-key key.pub
    """
    with _artifact_folder(artifact) as artifact:
        try:
            verify_directory(artifact, public_key)
            report = read_json(artifact / "report.json")
            statement = read_json(artifact / "provenance.json")
            summary = check_artifact_provenance(artifact, report, statement, checkpoint_lock)
        except (SigningError, OSError, ValueError) as exc:   # DocumentTooLarge, ProvenanceError
            click.echo(f"FAILED: {exc}", err=True)
            sys.exit(1)
        if report.get("passed") is not True:
            click.echo(f"FAILED: {artifact.name}: signature is valid but report.json says the "
                       f"entry did not pass ({report.get('decided_by')})", err=True)
            sys.exit(1)
        click.echo(f"OK: {artifact.name} is signed by {public_key} and passed "
                   f"({report.get('decided_by')})")
        for line in summary:
            click.echo(f"  {line}")


def check_artifact_provenance(artifact: Path, report: dict, statement: dict,
                              lock_file: Path | None) -> list[str]:
    """Subjects = the model files, preprocess.json and labels.txt with their digests;
    checkpoint = the lock's line."""
    check_statement(statement)
    subjects = {s["name"]: s["digest"].get("sha256") for s in statement["subject"]}
    shipped = sorted(p.name for p in artifact.iterdir()
                     if p.suffix == ".onnx" or p.name in (PREPROCESS_FILE, LABELS_FILE))
    if sorted(subjects) != shipped:
        raise ProvenanceError(f"{artifact.name}: provenance subjects {sorted(subjects)} are not "
                              f"the shipped files {shipped}")
    for name, digest in subjects.items():
        actual = sha256_file(artifact / name)
        if digest != actual:
            raise ProvenanceError(f"{artifact.name}: provenance gives {name} sha256 {digest}, "
                                  f"the file has {actual}")
    checkpoint = checkpoint_dependency(statement) or {}
    ck_sha = (checkpoint.get("digest") or {}).get("sha256")
    if lock_file is not None:
        line = read_lock(lock_file).get(report.get("name"))
        if line is None:
            raise ProvenanceError(f"{artifact.name}: {lock_file} has no line for "
                                  f"{report.get('name')!r}")
        if line["sha256"] != ck_sha:
            raise ProvenanceError(f"{artifact.name}: built from checkpoint sha256 {ck_sha}, "
                                  f"the lock ({lock_file}) has {line['sha256']}")
    build = statement["predicate"]["buildDefinition"]
    source = (build["externalParameters"].get("manifest_entry") or {})
    commit = next((d["digest"].get("gitCommit") for d in build.get("resolvedDependencies", [])
                   if d.get("name") == "source"), None)
    times = statement["predicate"]["runDetails"].get("metadata", {})
    return [f"source      {source.get('source')} {source.get('model_id')}",
            f"checkpoint  {checkpoint.get('uri')} sha256 {ck_sha}"
            + (" (matches the lock)" if lock_file is not None else ""),
            f"commit      {commit or 'unknown'}",
            f"built       {times.get('startedOn')} .. {times.get('finishedOn')}",
            "subjects    " + ", ".join(f"{n} {d[:12]}" for n, d in subjects.items())]


@cli.command()
@click.option("--from", "source", type=click.Path(path_type=Path), required=True,
              help="Output folder of a run (OUT).")
@click.option("--to", "store", required=True, metavar="STORE",
              help="A folder (PATH or file:///PATH) or s3://BUCKET[/PREFIX] (credentials and "
                   "endpoint from the AWS variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                   "AWS_ENDPOINT_URL for MinIO and other S3-compatible servers). Holds "
                   "NAME/<version>/ and index.{json,md}.")
@click.option("--public-key", type=click.Path(path_type=Path), required=True,
              help="Every artifact's signature is verified with this key before publishing.")
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="Keep only the newest K versions per model.")
def publish(source: Path, store: str, public_key: Path, keep: int | None):
    """Copy signed, passed artifacts of a run into a store and rebuild its index.

    \b
      python pipeline.py publish --from out --to store --public-key key.pub
      AWS_ENDPOINT_URL=http://minio:9000 python pipeline.py publish --from out \\
          --to s3://models/nightly --public-key key.pub --keep 5

    Idempotent (the same artifact is one version), a version visible only when whole, safe
    with concurrent publishers (a lock on a folder, conditional writes on S3) and with a
    publisher killed midway. Unsigned or failed artifacts are skipped; a bad signature is
    refused. Exit status 1 when any artifact was refused, 2 when the store cannot be used
    (wrong credentials, no such bucket: nothing is published and OUT is left as it was).
    """
    try:
        opened = open_store(store)
        result = publish_store(source, opened, public_key, keep=keep, say=click.echo)
    except (FileNotFoundError, SigningError, StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for line in result.skipped:
        click.echo(f"  skip      {line}")
    click.echo(f"published {len(result.published)}, already there {len(result.unchanged)}, "
               f"skipped {len(result.skipped)}, refused {len(result.rejected)}, "
               f"retired {len(result.removed)}; index: {opened.where('index.md')}")
    sys.exit(1 if result.rejected else 0)


@cli.command()
@click.option("--model", "name", required=True, metavar="NAME", help="Manifest entry.")
@click.option("--manifest", type=click.Path(path_type=Path), default=HERE / "manifests" /
              "all.yaml", show_default="manifests/all.yaml")
@click.option("--from", "out_dir", type=click.Path(path_type=Path), default=Path("artifacts"),
              show_default=True, help="Output folder holding the converted NAME/ artifact.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, metavar="LIST")
@click.option("--precisions", default=None, metavar="LIST",
              help="ONNX precisions to time (default: every model file the artifact holds).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: ONNX Runtime's TensorRT/CUDA provider (onnxruntime-gpu needed); the "
                   "source framework is timed on CPU.")
@click.option("--threads", type=int, default=None, help="Default: all cores.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=Path("bench.json"),
              show_default=True)
def bench(name, manifest, out_dir, batch_sizes, precisions, device, threads, warmup, runs,
          json_path):
    """Time the source framework, ONNX Runtime and OpenVINO on a converted model; print a
    table and write JSON.

    Median and p90 latency and images/s over warm runs, every figure measured in this run on
    this machine: the source framework's eval forward in its own worker, and ONNX Runtime and
    OpenVINO (CPU; not with --device cuda) on each precision's model file from OUT/NAME/
    (make one with
    `make convert MODEL=NAME PRECISIONS=fp32,fp16,int8`).
    """
    from orchestrator.bench import FILES, BenchError, format_table, run_bench

    try:
        entry = _complete(select(load_manifest(manifest), (name,))[0])
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ManifestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ValueError:
        click.echo(f"error: --batch-sizes {batch_sizes!r}: expected e.g. 1,8,32", err=True)
        sys.exit(2)
    artifact = out_dir / name
    wanted = (list(_parse_precisions(precisions)) if precisions else
              [p for p, f in FILES.items() if (artifact / f).is_file()] or ["fp32"])
    click.echo(f"bench {name}: batch sizes {sizes}, precisions {wanted}, device {device}")
    try:
        result = run_bench(entry, artifact, sizes, wanted, device, threads, warmup, runs,
                           say=click.echo)
    except BenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    click.echo("")
    click.echo(format_table(result))
    click.echo(f"\nwrote {json_path}")


@cli.command("lock-checkpoints")
@click.option("--manifest", type=click.Path(path_type=Path), default=HERE / "manifests" /
              "all.yaml", show_default="manifests/all.yaml")
@click.option("--only", multiple=True, metavar="NAME", help="Entries to lock (default: all).")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="NAME=PATH",
              help="Use this local file for NAME instead of downloading it.")
@click.option("--checkpoint-lock", type=click.Path(path_type=Path), default=None,
              metavar="FILE", help="Default: checkpoints.lock beside the manifest.")
@CACHE_DIR_OPTION
@click.option("--mirror", envvar="MODEL_CONVERT_MIRROR", default=None, metavar="URL")
def lock_checkpoints(manifest, only, checkpoints, checkpoint_lock, cache_dir, mirror):
    """Record the full sha256 and size of each entry's checkpoint in the checkpoint lock.

    Downloads the checkpoint (or reads it from the cache or --checkpoint) and checks the
    digest the publisher gives first. Trust on first use: review each new line before you
    commit it. An entry already locked is checked, not rewritten: a file that differs from its
    line is an error naming both digests. Exit 1 if any entry could not be locked.
    """
    try:
        entries = select(load_manifest(manifest), only)
        path = checkpoint_lock or lock_path_for(manifest)
        lock = read_lock(path)
    except (ManifestError, LockError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    local = _parse_checkpoints(checkpoints)
    problems = 0
    for entry in entries:
        spec = entry["checkpoint"]
        try:
            got = (local_checkpoint(local[entry.name], spec) if entry.name in local
                   else fetch(spec, Path(cache_dir).expanduser(), mirror=mirror))
        except FetchError as exc:
            click.echo(f"  {entry.name}: not locked: {exc.message}")
            problems += 1
            continue
        published = spec.get("sha256") or spec.get("sha256_prefix")
        if published and not got.sha256.startswith(published):
            click.echo(f"  {entry.name}: not locked: {got.path} has sha256 {got.sha256}, the "
                       f"manifest publishes {published}")
            problems += 1
            continue
        line = lock.get(entry.name)
        if line and line["sha256"] != got.sha256:
            click.echo(f"  {entry.name}: the lock has sha256 {line['sha256']} but {got.path} "
                       f"has {got.sha256}; not changed (delete the line to re-record it)")
            problems += 1
            continue
        state = "already locked" if line else "locked"
        lock[entry.name] = {"sha256": got.sha256, "bytes": got.bytes}
        click.echo(f"  {entry.name}: {state}: sha256 {got.sha256}, {got.bytes} bytes")
    write_lock(path, lock)
    click.echo(f"wrote {path}: {len(lock)} entr{'y' if len(lock) == 1 else 'ies'}; review "
               "new lines before you commit them")
    sys.exit(1 if problems else 0)


@cli.command()
@click.argument("artifact", type=ArtifactParam())
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="Classes printed per image.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="onnxruntime",
              show_default=True, help="Inference runtime that runs the model.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="Which of the artifact's models: model.onnx (fp32) or model.PRECISION.onnx.")
@click.option("--public-key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Verify the artifact's signature with this key first; "
                                 "refuse to predict when it does not verify.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Runtime threads (default: all cores).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def predict(artifact, images, top, runtime, precision, public_key, threads, as_json):
    """Classify IMAGES with ARTIFACT alone: the preprocessing and class names come from the
    model file's own metadata (no manifest, no source framework), then the chosen runtime
    runs it. Prints each image's top classes with probabilities.

    \b
      python pipeline.py predict artifacts/res2net50-w14-s8 cat.jpg dog.png
      python pipeline.py predict ARTIFACT img.jpg --public-key signing-key.pub --runtime openvino
      python pipeline.py predict s3://models/nightly/res2net50-w14-s8 cat.jpg --public-key k.pub

    ARTIFACT is a folder, or STORE/NAME[/VERSION] of a store given by URL (the newest version
    when VERSION is left out; downloaded to a temporary folder first).

    An image that cannot be read is reported and the others still run; the exit status is 1
    then, and when the signature or the artifact is not valid."""
    from deploy.predict import PredictError, predict as run_predict

    with _artifact_folder(artifact) as artifact:
        if public_key is not None:
            try:
                verify_directory(artifact, public_key)
            except SigningError as exc:
                click.echo(f"FAILED: {exc}", err=True)
                sys.exit(1)
        try:
            results = run_predict(artifact, list(images), top, runtime, precision, threads,
                                  DEFAULT_MAX_PIXELS)
        except PredictError as exc:
            click.echo(f"FAILED: {exc}", err=True)
            sys.exit(1)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                click.echo(f"{r.image}: ERROR {r.error}", err=True)
                continue
            click.echo(f"{r.image}:")
            for rank, (index, label, p) in enumerate(r.top, start=1):
                click.echo(f"  {rank}. {p:7.2%}  {label}  [{index}]")
    sys.exit(1 if any(r.error for r in results) else 0)


@cli.command("localize")
@click.argument("onnx_model", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--model", "name", required=True, metavar="NAME",
              help="Manifest entry the ONNX model was made from (source, model, preprocessing).")
@click.option("--manifest", type=click.Path(path_type=Path), default=HERE / "manifests" /
              "all.yaml", show_default="manifests/all.yaml")
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="The source checkpoint (default: the entry's, from the cache "
                                 "or downloaded and digest-checked).")
@CACHE_DIR_OPTION
@click.option("--image", "images", type=click.Path(path_type=Path, exists=True,
                                                   dir_okay=False), multiple=True,
              help="An image to run both on, as one batch with the other --image ones "
                   "(repeatable; default: the entry's first "
                   f"{LOCALIZE_IMAGES} generated verification images: a graph that holds the "
                   "batch it was traced at parts only on the images after the first).")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=LAYER_RTOL,
              show_default=True,
              help="Largest difference a layer may show, relative to its output's range.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write the full localisation as JSON here.")
def localize_cmd(onnx_model, name, manifest, checkpoint, cache_dir, images, rtol, threads,
                 json_path):
    """Name the first layer where ONNX_MODEL's outputs part from the source framework's.

    Runs the entry's source (its own code, preprocessing and checkpoint) with forward hooks
    on every conv / linear / norm layer, aligns those layers with ONNX_MODEL's Conv / Gemm /
    MatMul nodes by weight shape, and compares their outputs in graph order, a few at a time.
    Works on any ONNX file made from the entry: the pipeline's, or one edited or optimised
    since. Exit status: 0 when every aligned layer agrees, 1 when one diverges (it is named,
    with the ONNX node and the difference), 2 for bad usage or when it cannot run.
    """

    from orchestrator.localize import LocalizeFailed, localize_model
    from verify.images import generate_images

    try:
        entry = _complete(select(load_manifest(manifest), [name])[0])
        ck = (local_checkpoint(checkpoint, entry["checkpoint"]).path if checkpoint else
              fetch(entry["checkpoint"], Path(cache_dir).expanduser()).path)
    except ManifestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except FetchError as exc:
        click.echo(f"error: {entry.name}: {exc.message} (or pass --checkpoint)", err=True)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="localize-") as tmp:
        work = Path(tmp)
        pictures = list(images) or generate_images(work / "images", LOCALIZE_IMAGES,
                                                   entry["verify"]["seed"])
        click.echo(f"{entry.name}: capturing {entry.source}'s layer outputs on "
                   f"{', '.join(p.name for p in pictures)} ...")
        try:
            found = localize_model(entry, onnx_model.resolve(), ck, pictures, work, threads,
                                   rtol=rtol)
        except LocalizeFailed as exc:
            click.echo(f"error: [{exc.kind}] {exc.message}", err=True)
            sys.exit(2)
    click.echo(f"  aligned {found['aligned']} of {found['source_layers']} source layers with "
               f"{found['onnx_layers']} ONNX nodes; compared {found['compared']} "
               f"({found['sessions']} ONNX Runtime sessions)")
    click.echo(f"  {found['summary']}")
    if json_path:
        json_path.write_text(json.dumps(found, indent=2) + "\n")
        click.echo(f"wrote {json_path}")
    sys.exit(1 if found.get("first_diverging") else 0)


@cli.command()
@click.argument("source", type=click.Choice(list(SOURCES)))
@click.argument("model_id")
@click.option("--name", default=None, help="Entry name (default: from the model id; "
              "PaddleClas and MindCV names start with the source).")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Classes of the checkpoint's head (default: the source's, 1000 for "
                   "ImageNet-1k models).")
@click.option("--checkpoint-url", default=None, metavar="URL",
              help="Where the checkpoint is (https:// or file://). Default: the file the "
                   "source publishes for this model.")
@click.option("--sha256", default=None, metavar="HEX",
              help="Full sha256 of --checkpoint-url's file (without it the entry says "
                   "digest_unpublished; `pipeline.py lock-checkpoints` pins it later).")
@click.option("--manifest", type=click.Path(path_type=Path), default=HERE / "manifests" /
              "all.yaml", show_default="manifests/all.yaml",
              help="Manifest to append to (created when missing).")
def add(source, model_id, name, num_classes, checkpoint_url, sha256, manifest):
    """Add SOURCE's MODEL_ID to the manifest, with every field the source gives spelled out.

    Checks MODEL_ID against the source's own registry (a typo gets the closest ids), asks the
    source (its own code, in its worker environment, no network) for the eval preprocessing,
    input size, published top-1/top-5 and checkpoint URL, and appends the entry with a
    comment naming the package files they came from, so the diff can be reviewed. Refuses a
    duplicate name or the same model and checkpoint twice; the manifest is validated before
    it is replaced and is left untouched when anything is refused.

    \b
    Examples:
      python pipeline.py list-models mmpretrain deit-tiny
      python pipeline.py add mmpretrain deit-tiny_4xb256_in1k
      python pipeline.py add paddleclas MobileNetV3_large_x1_0 --manifest manifests/mine.yaml
      make convert MODEL=deit-tiny_4xb256_in1k
    """
    from manifests.add import append, default_name, provenance_comment
    from orchestrator.derive import DeriveFailed, describe, merge

    if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        click.echo("error: --sha256 must be 64 lowercase hex digits", err=True)
        sys.exit(2)
    if sha256 and not checkpoint_url:
        click.echo("error: --sha256 needs --checkpoint-url", err=True)
        sys.exit(2)
    click.echo(f"asking {source} about {model_id} ...")
    try:
        described = describe(source, model_id)
    except DeriveFailed as exc:
        click.echo(f"error: [{exc.kind}] {exc.message}", err=True)
        sys.exit(2)
    if checkpoint_url:
        checkpoint = ({"url": checkpoint_url, "sha256": sha256} if sha256 else
                      {"url": checkpoint_url, "digest_unpublished": True})
    elif described.get("checkpoint"):
        checkpoint = described["checkpoint"]
    else:
        click.echo(f"error: {source} publishes no checkpoint for {model_id}: pass "
                   "--checkpoint-url", err=True)
        sys.exit(2)
    entry = {"name": name or default_name(source, model_id), "source": source,
             "model_id": model_id,
             "num_classes": num_classes or int(described["num_classes"]),
             "checkpoint": checkpoint}
    full, derived = merge(Entry(dict(entry), str(manifest)), described)
    for key in DERIVED:
        if key in full.data:
            entry[key] = full.data[key]
    try:
        block = append(manifest, entry, provenance_comment(source, described, derived))
    except ManifestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(block.rstrip())
    click.echo(f"added entry {entry['name']!r} to {manifest}; convert it with "
               f"`python pipeline.py --manifest {manifest} --only {entry['name']}`")
    if "digest_unpublished" in checkpoint:
        click.echo("note: the checkpoint's digest is not published: pin it with "
                   f"`python pipeline.py lock-checkpoints --manifest {manifest} --only "
                   f"{entry['name']}`")


@cli.command("list-models")
@click.argument("source", type=click.Choice(list(SOURCES)))
@click.argument("pattern", default="")
def list_models_cmd(source, pattern):
    """List SOURCE's image classifiers (id and family), optionally only those matching
    PATTERN (a substring or shell pattern such as 'res2net*', any case). Asks the installed
    source package itself; `pipeline.py add SOURCE ID` turns one into a manifest entry."""
    from orchestrator.derive import DeriveFailed, list_models

    try:
        models = list_models(source, pattern)
    except DeriveFailed as exc:
        click.echo(f"error: [{exc.kind}] {exc.message}", err=True)
        sys.exit(2)
    if not models:
        click.echo(f"no {source} model matches {pattern!r}", err=True)
        sys.exit(1)
    width = max(len(m["model_id"]) for m in models)
    for m in models:
        click.echo(f"{m['model_id']:<{width}}  {m['family']}")
    click.echo(f"{len(models)} {source} model(s)" + (f" matching {pattern!r}" if pattern
                                                      else ""))


@cli.command()
@click.argument("private_key", type=click.Path(path_type=Path))
def keygen(private_key: Path):
    """Write a new EC P-256 PRIVATE_KEY (PEM, mode 0600) and PRIVATE_KEY.pub beside it.

    Keep the private key out of artifacts and out of the repository.
    """
    if private_key.exists():
        click.echo(f"error: {private_key} exists; not overwriting a key", err=True)
        sys.exit(2)
    public = generate_key(private_key)
    click.echo(f"wrote {private_key} (private, 0600) and {public} (public)")


if __name__ == "__main__":
    cli()  # pylint: disable=no-value-for-parameter
