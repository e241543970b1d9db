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

import os
import sys
from pathlib import Path

import click

from converters.data_loader import DEFAULT_MAX_PIXELS
from converters.limits import WorkerLimits
from converters.runner import warm_workers
from converters.variants import PRECISIONS
from fetch.download import DEFAULT_CACHE
from fetch.lock import LockError, lock_path_for, locked_spec, read_lock
from manifests.loader import ManifestError, load_manifest, select
from orchestrator.accuracy import DEFAULT_RAY_SHARD_SIZE, Selection
from orchestrator.executor import Reporter, make_executor
from orchestrator.driver import DatasetUnavailable, run_all
from orchestrator.stages.context import RunOptions
from orchestrator.summary import format_summary
from release.store import StoreError, open_store
from release.signing import SigningError, check_signing_key
from verify.dataset import DatasetError, check_num_classes, load_dataset, spread_subset
from verify.localize import LAYER_RTOL


HERE = Path(__file__).resolve().parent.parent   # the repository
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

