#!/usr/bin/env python
"""How much of a model zoo converts: add + convert + gate every (or a sampled) classifier.

    python scripts/zoo_sweep.py --source mmpretrain --sample 10 --pattern 'mobilenet*'
    python scripts/zoo_sweep.py --list mmdeploy      # a peer project's own test list
    make zoo-sweep SOURCE=mindcv SAMPLE=5

For each model of SOURCE (its own registry, `pipeline.py list-models`), no network:
1. asks the source what it says about the model (orchestrator/derive.py `describe`); a
   model whose config the preprocessing contract cannot express is `unsupported`, by cause;
2. makes a seeded random-init checkpoint with the source's own code at the model's input
   size (converters/<source>/make_checkpoint.py), kept under OUT/checkpoints/ for reruns;
   one framework process makes them all (scripts/checkpoint_jobs.py), each model under
   --timeout, a model that fails or hangs reported alone;
3. writes a manifest of minimal entries (name, source, model_id, num_classes, checkpoint:
   everything else is derived at run time, as a user's 5-line entry is) and runs the
   pipeline on it, --chunk entries at a time (`--executor ray` fans a chunk's entries out
   like any other run), keeping only each entry's report.json unless --keep-models;
4. reads each entry's report.json: passed / failed (which check, by how much) /
   unsupported (the exporter's or the contract's message) / error.
Writes OUT/<source>.json and OUT/<source>.md (a coverage table and the causes, counted:
scripts/sweep_report.py);
with --list NAME (scripts/peer_lists.py: mmdeploy, paddle2onnx, mindcv-popular), OUT/NAME.*.
Exit status 0 when the sweep ran (whatever the coverage), 2 for bad usage.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import fnmatch
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converters.registry import SOURCES, env_python  # noqa: E402
from fetch.download import sha256_file  # noqa: E402
from manifests.add import default_name, render  # noqa: E402
from orchestrator.derive import describe_many, list_models  # noqa: E402
from scripts.checkpoint_jobs import Made  # noqa: E402
from scripts.checkpoint_jobs import make_checkpoints as run_jobs  # noqa: E402
from scripts.peer_lists import PEER_LISTS  # noqa: E402
from scripts.sweep_report import (cause, cause_class, markdown,  # noqa: E402
                                  source_runs, wilson)
from verify.images import INITS  # noqa: E402


IMAGENET_1K = "ImageNet-1k"
# Entries per pipeline run, by executor: the models a chunk leaves on the driver's disk
# until it ends (Ray converts a chunk's entries side by side, so its chunks are larger).
CHUNK = {"local": 10, "ray": 50}


def imagenet_1k(models: list[dict]) -> list[dict]:
    """The ImageNet-1k classifiers of a zoo, what coverage is measured on: those whose source
    names no other dataset for its results (mmpretrain's CIFAR-10/100 and CUB-200 configs
    are left out; PaddleClas and MindCV name none)."""
    return [m for m in models if m.get("dataset") in (None, IMAGENET_1K)]


def pick(models: list[dict], sample: int | None, seed: int, pattern: str,
         names: list[str]) -> list[dict]:
    """The models to sweep: the named ones, else the ImageNet-1k ones matching PATTERN,
    SAMPLE of them drawn with SEED (sorted, so a rerun with the same arguments sweeps the
    same models)."""
    if names:
        by_id = {m["model_id"]: m for m in models}
        unknown = [n for n in names if n not in by_id]
        if unknown:
            raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}")
        return [by_id[n] for n in names]
    chosen = [m for m in imagenet_1k(models) if not pattern
              or fnmatch.fnmatch(m["model_id"].lower(), pattern.lower())]
    if sample is not None and sample < len(chosen):
        chosen = random.Random(seed).sample(chosen, sample)
    return sorted(chosen, key=lambda m: m["model_id"])


def checkpoint_path(source: str, model_id: str, folder: Path, seed: int, init: str) -> Path:
    tag = "" if init == "images" else f"-{init}"
    return folder / (f"{default_name(source, model_id)}-seed{seed}{tag}"
                     f"{SOURCES[source].checkpoint_suffix}")


def make_checkpoints(source: str, wanted: dict[str, dict], folder: Path, seed: int,
                     timeout: float, init: str = "images", on_result=None) -> dict[str, Made]:
    """The source's own make_checkpoint (converters/<source>/make_checkpoint.py) for each
    model_id -> description of WANTED, at the model's input size, its BatchNorm statistics
    set as `init` says (verify/images.py INITS): one framework process for all of them
    (scripts/checkpoint_jobs.py), each under TIMEOUT seconds. A checkpoint already in FOLDER
    is reused."""
    spec = SOURCES[source]   # converters/registry.py: its suffix and maker arguments
    folder.mkdir(parents=True, exist_ok=True)
    jobs, made = {}, {}
    for model_id, described in wanted.items():
        path = checkpoint_path(source, model_id, folder, seed, init)
        if path.is_file():
            made[model_id] = Made("done", 0.0)
            if on_result:
                on_result(model_id, made[model_id])
            continue
        jobs[model_id] = ([*spec.maker_args(model_id), "--out", str(path), "--seed", str(seed),
                           "--num-classes", str(described["num_classes"]),
                           "--size", str(described["input_shape"][1]), "--init", init], path)
    if jobs:
        made.update(run_jobs(env_python(spec), f"converters.{source}.make_checkpoint", jobs,
                             timeout, on_result))
    return made


def prune(reports: Path, names: list[str]) -> int:
    """Remove all but the report (report.json) of each of NAMES' artifact folders, once its
    chunk of the sweep is done: a sweep measures coverage, and its models are as large as
    its checkpoints (mmpretrain's sample of 40 left 21 GB of both and filled the disk).
    Returns the bytes freed."""
    freed = 0
    for name in names:
        folder = reports / name
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.is_file() and path.name != "report.json":
                freed += path.stat().st_size
                path.unlink()
    return freed


def _converted(report_file: Path, sha256: str) -> bool:
    """An earlier sweep's report for this very checkpoint (--resume keeps it)."""
    if not report_file.is_file():
        return False
    report = json.loads(report_file.read_text())
    return ((report.get("source") or {}).get("checkpoint") or {}).get("sha256") == sha256


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--source", choices=list(SOURCES),
                        help="the zoo (required unless --list names one)")
    parser.add_argument("--list", choices=list(PEER_LISTS), dest="peer_list",
                        help="a peer project's own test list (scripts/peer_lists.py): its "
                             "source and models, results in OUT/LIST.{md,json}")
    parser.add_argument("--sample", type=int, default=None,
                        help="sweep this many models drawn at random (default: all)")
    parser.add_argument("--pattern", default="", help="shell pattern on model ids, any case")
    parser.add_argument("--models", default="", help="comma-separated ids (overrides the rest)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and checkpoint seed")
    parser.add_argument("--init", choices=INITS, default="images",
                        help="how the checkpoints' BatchNorm statistics are set: images "
                             "(trained-like), noise (large logits) or plain (default init)")
    parser.add_argument("--out", type=Path, default=REPO / "zoo-sweep")
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--fresh-workers", action="store_true",
                        help="a new framework process per job (pipeline.py --fresh-workers); "
                             "by default each source's warm worker takes job after job")
    parser.add_argument("--resume", action="store_true",
                        help="keep the reports an earlier sweep into OUT wrote for the same "
                             "checkpoints, converting only the rest (after an interrupted run)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="entries per pipeline run (default 10, with --executor ray 50: "
                             "a cluster converts a chunk's entries side by side): after "
                             "each, the chunk's models are removed (their reports kept), so "
                             "a whole zoo fits on a disk")
    parser.add_argument("--keep-models", action="store_true",
                        help="keep every converted model under OUT/artifacts (by default only "
                             "the reports stay)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one checkpoint may take to make")
    args = parser.parse_args(argv)
    peer = PEER_LISTS.get(args.peer_list)
    if peer and args.source not in (None, peer.source):
        parser.error(f"--list {args.peer_list} is a {peer.source} list, not {args.source}")
    if peer and (args.models or args.pattern or args.sample is not None):
        parser.error("--list names its own models: leave out --models, --pattern and --sample")
    if not (peer or args.source):
        parser.error("name a zoo with --source, or a peer list with --list")
    args.chunk = CHUNK[args.executor] if args.chunk is None else args.chunk
    if args.chunk < 1:
        parser.error("--chunk must be 1 or more")
    args.source = peer.source if peer else args.source
    stem = args.peer_list or args.source     # OUT/<stem>.{md,json}

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    zoo = list_models(args.source)
    names = (list(peer.model_ids) if peer else
             [n.strip() for n in args.models.split(",") if n.strip()])
    chosen = pick(zoo, args.sample, args.seed, args.pattern, names)
    others = len(zoo) - len(imagenet_1k(zoo))
    print(f"zoo sweep: {args.source}, {len(chosen)} of {len(zoo)} models"
          + (f" ({others} not ImageNet-1k classifiers left out of the sample)" if others else ""))
    start = time.perf_counter()
    described_all = describe_many(args.source, [m["model_id"] for m in chosen])
    each = (time.perf_counter() - start) / max(len(chosen), 1)
    rows, entries, checkpoints = [], [], {}
    versions = next((", ".join(f"{k} {v}" for k, v in d["versions"].items() if k != "framework")
                     for d in described_all.values() if "versions" in d), "")
    wanted = {}
    for model in chosen:
        model_id = model["model_id"]
        row = {"model_id": model_id, "family": model["family"], "seconds": each,
               "name": default_name(args.source, model_id)}
        error = described_all[model_id].get("error")
        if error:
            row.update(status="unsupported" if error["kind"] == "unsupported" else "error",
                       cause=f"derive/{error['kind']}: {error['message']}")
        else:
            wanted[model_id] = described_all[model_id]
        rows.append(row)
    by_id = {row["model_id"]: row for row in rows}

    def show(row: dict) -> None:
        print(f"[{rows.index(row) + 1}/{len(chosen)}] {row['model_id']}: "
              f"{row.get('status', 'checkpoint ready')} {row.get('cause', '')}", flush=True)

    for row in rows:
        if "status" in row:
            show(row)

    def made(model_id: str, result: Made) -> None:
        row = by_id[model_id]
        row["seconds"] += result.seconds
        if result.status == "cannot_build":   # the source's own constructor or forward failed
            row.update(status="unsupported", cause=f"build/unsupported: {result.message}")
        elif result.status != "done":
            row.update(status="error", cause=f"checkpoint/build: {result.message}")
        else:
            path = checkpoint_path(args.source, model_id, out / "checkpoints", args.seed,
                                   args.init)
            entries.append({"name": row["name"], "source": args.source, "model_id": model_id,
                            "num_classes": wanted[model_id]["num_classes"],
                            "checkpoint": {"url": path.as_uri(), "sha256": sha256_file(path)}})
            checkpoints[row["name"]] = path
        show(row)

    make_checkpoints(args.source, wanted, out / "checkpoints", args.seed, args.timeout,
                     args.init, made)
    order = {m["model_id"]: number for number, m in enumerate(chosen)}
    entries.sort(key=lambda e: order[e["model_id"]])   # --models' order is the run's order

    reports = out / "artifacts" / args.source
    if args.resume:
        done = [e for e in entries if _converted(reports / e["name"] / "report.json",
                                                  e["checkpoint"]["sha256"])]
        print(f"--resume: {len(done)} of {len(entries)} converted before, kept", flush=True)
        entries = [e for e in entries if e not in done]
    pipeline_status = 0
    manifest = out / f"{stem}.manifest.yaml"
    for first in range(0, len(entries), args.chunk):
        chunk = entries[first:first + args.chunk]
        manifest.write_text("version: 1\nmodels:\n" + "".join(render(e, []) for e in chunk))
        command = [sys.executable, str(REPO / "pipeline.py"), "--manifest", str(manifest),
                   "--out", str(reports), "--executor", args.executor,
                   *(["--fresh-workers"] if args.fresh_workers else [])]
        print(f"running the pipeline on entries {first + 1}-{first + len(chunk)} of "
              f"{len(entries)}: {' '.join(command)}", flush=True)
        status = subprocess.run(command, cwd=REPO).returncode
        if not args.keep_models:
            prune(reports, [e["name"] for e in chunk])
        if status not in (0, 1):   # interrupted (130) or killed (<0): the rest is --resume's
            pipeline_status = status
            break
        pipeline_status = max(pipeline_status, status)
    for row in rows:
        if row["name"] not in checkpoints:
            continue
        report_file = reports / row["name"] / "report.json"
        if not report_file.is_file():
            row.update(status="error", cause="pipeline wrote no report" + (
                f" (the pipeline process ended with status {pipeline_status}"
                f"{': killed, out of memory?' if pipeline_status in (-9, 137) else ''}; "
                "--resume converts the rest)" if pipeline_status not in (0, 1) else ""))
            continue
        report = json.loads(report_file.read_text())
        row["status"] = report.get("status") or ("passed" if report["passed"] else "failed")
        if row["status"] != "passed":
            row["cause"] = cause(report)
        row["nodes"] = (report.get("onnx") or {}).get("nodes_simplified")
        row["convert_seconds"] = report.get("timings", {}).get("total", 0.0)
        row["seconds"] += row["convert_seconds"]

    counts = collections.Counter(r["status"] for r in rows)
    causes = collections.Counter(cause_class(r) for r in rows if r["status"] != "passed")
    summary = {"source": args.source, "list": args.peer_list,
               "list_origin": peer.origin if peer else None,
               "date": dt.date.today().isoformat(), "init": args.init,
               "versions": versions, "zoo_size": len(zoo), "selected": len(chosen),
               "not_imagenet_1k": others,
               "pattern": args.pattern, "sample": args.sample, "seed": args.seed,
               "counts": dict(counts), "causes": dict(causes.most_common()),
               "coverage_percent": 100.0 * counts.get("passed", 0) / max(len(rows), 1),
               "wilson95": wilson(counts.get("passed", 0), len(rows)),
               "source_runs": source_runs(rows),
               "seconds_per_model": sum(r["seconds"] for r in rows) / max(len(rows), 1),
               "workers": "fresh" if args.fresh_workers else "warm",
               # the pipeline's own time per converted entry (derive .. artifact), without
               # the sweep's describe and checkpoint making
               "convert_seconds_per_model": (
                   sum(r["convert_seconds"] for r in rows if "convert_seconds" in r)
                   / max(sum("convert_seconds" in r for r in rows), 1))}
    (out / f"{stem}.json").write_text(json.dumps({"summary": summary, "models": rows},
                                                 indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(summary, rows))
    print(markdown(summary, rows))
    print(f"wrote {out / (stem + '.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
