"""Stages derive and convert. Derive asks the source, in its own environment, for the fields
the entry left out (orchestrator/derive.py). Convert runs the source's worker
(converters/runner.py -> converters/<source>/worker.py): build, load, preprocess, reference
logits, the inference switch, the export rewrites, export. Its failure is the entry's."""
from __future__ import annotations

from pathlib import Path

from converters.protocol import ConvertJob
from converters.registry import SOURCES
from converters.runner import run_worker
from fetch.download import Fetched
from manifests.loader import Entry
from orchestrator.derive import resolve
from orchestrator.stages.context import EntryContext, RunOptions


def derive(entry: Entry, opts: RunOptions, say) -> tuple[Entry, dict]:
    """orchestrator/derive.py on this node; its failure (DeriveFailed) is the entry's."""
    say(f"  derive    asking {SOURCES[entry.source].framework} for the fields the manifest "
        "left out ...")
    entry, section = resolve(entry, opts.limits.memory_limit(), opts.threads)
    for key, origin in section["fields"].items():
        say(f"  derive    {key} from {origin}")
    for note in section["notes"]:
        say(f"  derive    note: {note}")
    return entry, section


def convert(ctx: EntryContext, got: Fetched, images: list[Path],
            calibration: list[Path]) -> dict:
    """The worker's result.json (its files are in the work directory); what it says of the
    source goes into report['source'], its timings into report['timings']['worker']."""
    entry, opts, report, say = ctx.entry, ctx.opts, ctx.report, ctx.say
    spec = SOURCES[entry.source]
    with ctx.timer.stage("convert"):
        say(f"  convert   {spec.framework} worker: build, load, preprocess, export ...")
        result = run_worker(spec, ConvertJob(
            entry=entry.data, checkpoint=str(got.path), images=[str(p) for p in images],
            candidates=_candidates(entry, ctx.all_entries),
            calibration_images=[str(p) for p in calibration],
            threads=opts.threads, batch_size=len(images),
            max_image_pixels=opts.limits.max_image_pixels,
        ), ctx.workdir, timeout=opts.worker_timeout, memory_limit=opts.limits.memory_limit())
    report.source["versions"] = result["versions"]
    if result.get("unreadable"):
        report.verification["images"]["unreadable"] = result["unreadable"]
        report.verification["images"]["count"] = len(result["images_used"])
    report.source["checkpoint"].update(result.get("checkpoint", {}))
    report.timings["worker"] = result.get("timings", {})
    # which process converted it, and its how-manieth job (a warm worker's: converters/runner.py)
    report.source["worker"] = result.get("process")
    if result.get("export_fixups"):
        report.source["export_fixups"] = result["export_fixups"]
        for note in result["export_fixups"]:
            say(f"  fix-up    {note}")
    if result.get("checkpoint", {}).get("demo"):
        report.source["checkpoint"]["note"] = (
            "DEMO checkpoint: seeded random init made by the pipeline, not trained weights")
        say("  note      this is a demo checkpoint (random init), not trained weights")
    say("  convert   done in " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                           result.get("timings", {}).items()))
    return result


def _candidates(entry: Entry, all_entries: list[Entry]) -> list[dict]:
    """Other entries of the same source, for naming the one a mismatched checkpoint fits."""
    return [{"name": e.name, "model_id": e["model_id"], "num_classes": e["num_classes"]}
            for e in all_entries if e.source == entry.source and e.name != entry.name]
