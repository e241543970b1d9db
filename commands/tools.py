"""pipeline.py's other commands: bench, lock-checkpoints, localize, add, list-models."""
from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import click

from fetch.download import FetchError, fetch, local_checkpoint
from fetch.lock import LockError, lock_path_for, read_lock, write_lock
from converters.registry import SOURCES
from manifests.loader import Entry, ManifestError, load_manifest, select
from manifests.schema import DERIVED
from orchestrator.localize import LOCALIZE_IMAGES
from verify.localize import LAYER_RTOL

from commands.convert import (CACHE_DIR_OPTION, HERE, _complete, _parse_checkpoints,
                              _parse_precisions, cli)


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
    """List SOURCE's image classifiers (id, family, and the dataset where the source names
    one other than ImageNet-1k), optionally only those matching
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
        other = m.get("dataset") not in (None, "ImageNet-1k")
        click.echo(f"{m['model_id']:<{width}}  {m['family']}"
                   + (f"  ({m['dataset']}, not ImageNet-1k)" if other else ""))
    click.echo(f"{len(models)} {source} model(s)" + (f" matching {pattern!r}" if pattern
                                                      else ""))

