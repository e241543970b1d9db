#!/usr/bin/env python
"""Convert image-classifier checkpoints to verified ONNX artifacts.

For each manifest entry: fetch the checkpoint (cache + digest), build the model with the
source framework's own code and export it with that framework's exporter (in a separate
worker process and environment), simplify with onnxsim, check ONNX Runtime's logits
against the source framework's on the same inputs, and write OUT/NAME/{model.onnx,
report.json} only if every check passed. A failed entry gets OUT/NAME/report.json saying
which check failed, by how much, and why.

Exit status: 0 if every selected entry passed, 1 if any did not, 2 for bad usage or a bad
manifest.

\b
Examples:
  python pipeline.py --list
  python pipeline.py --manifest manifests/all.yaml --only res2net50-w14-s8
  python pipeline.py --only res2net50-w14-s8 --checkpoint res2net50-w14-s8=my.pth --out out/
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fetch.download import DEFAULT_CACHE
from manifests.loader import ManifestError, load_manifest, select
from orchestrator.run import RunOptions, convert_entry
from orchestrator.summary import format_summary

HERE = Path(__file__).resolve().parent


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
@click.option("--cache-dir", type=click.Path(path_type=Path),
              default=lambda: os.environ.get("MODEL_CONVERT_CACHE", str(DEFAULT_CACHE)),
              show_default="$MODEL_CONVERT_CACHE or ~/.cache/model-convert/checkpoints",
              help="Checkpoint cache.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of images for the logit check (default: deterministic generated "
                   "images).")
@click.option("--threads", type=int, default=None,
              help="CPU threads for the framework and ONNX Runtime (default: all cores).")
@click.option("--keep-work", is_flag=True, help="Keep each entry's work directory.")
@click.option("--list", "list_only", is_flag=True,
              help="List the manifest's entries (name, source, model id) and exit.")
@click.pass_context
def cli(ctx, manifest, only, checkpoints, out_dir, cache_dir, data_dir, threads, keep_work,
        list_only):
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
    local = _parse_checkpoints(checkpoints)
    stray = sorted(set(local) - {e.name for e in chosen})
    if stray:
        click.echo(f"error: --checkpoint names {', '.join(stray)}, which "
                   f"{'is' if len(stray) == 1 else 'are'} not selected "
                   f"(selected: {', '.join(e.name for e in chosen)})", err=True)
        sys.exit(2)
    opts = RunOptions(out_dir=out_dir, cache_dir=Path(cache_dir).expanduser(),
                      checkpoints=local, data_dir=data_dir, threads=threads,
                      keep_work=keep_work)
    results = []
    for index, entry in enumerate(chosen, start=1):
        click.echo(f"[{index}/{len(chosen)}] {entry.name}  "
                   f"({entry.source} {entry['model_id']})")
        results.append(convert_entry(entry, entries, opts, say=click.echo))
    click.echo("")
    click.echo(format_summary(results))
    sys.exit(0 if results and all(r.status == "passed" for r in results) else 1)


if __name__ == "__main__":
    cli()  # pylint: disable=no-value-for-parameter
