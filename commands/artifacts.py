"""pipeline.py's commands for artifacts: verify-artifact, publish, predict, keygen."""
from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

from converters.data_loader import DEFAULT_MAX_PIXELS
from converters.variants import PRECISIONS
from fetch.download import sha256_file
from fetch.lock import read_lock
from release.contract_files import LABELS_FILE, PREPROCESS_FILE
from release.publish import publish as publish_store
from release.store import StoreError, fetch_artifact, is_url, open_store
from manifests.bounded import read_json
from release.provenance import ProvenanceError, check_statement, checkpoint_dependency
from release.signing import SigningError, generate_key, verify_directory
from verify.runners import RUNTIMES

from commands.convert import cli


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
