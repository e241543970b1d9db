"""Stage fetch: the entry's checkpoint on this node (downloaded and digest-checked, or the
driver's file), and the images the later stages use: the logit check's and int8's
calibration set, generated or picked from --data."""
from __future__ import annotations

from pathlib import Path

from fetch.download import Fetched
from manifests.loader import Entry
from orchestrator.stages.context import EntryContext, RunOptions
from verify.dataset import spread_pick, spread_subset
from verify.images import generate_images


def fetch_checkpoint(ctx: EntryContext) -> Fetched:
    """The checkpoint into report['source']['checkpoint']; says whether it is the pinned file."""
    with ctx.timer.stage("fetch"):
        got = ctx.checkpoint.resolve(ctx.blob)
        section = ctx.report.source["checkpoint"] = _checkpoint_report(got)
        if ctx.checkpoint.local:  # the driver's path, wherever the node kept its copy
            section["path"] = ctx.checkpoint.local
        pin = ("the pinned file (prefix only, 32 bits: lock it with `pipeline.py "
               "lock-checkpoints`)" if got.pinned and "prefix only" in got.digest_check else
               "the pinned file" if got.pinned else
               "digest not published" if got.digest_check == "unpublished" else
               "NOT the pinned file")
        ctx.say(f"  fetch     {got.path.name}: sha256 {got.sha256[:12]}..., {pin}")
    return got


def pick_inputs(ctx: EntryContext) -> tuple[list[Path], list[Path]]:
    """The logit check's images and int8's calibration images (none without int8), into
    report['verification']."""
    with ctx.timer.stage("images"):
        images, image_info = pick_images(ctx.entry, ctx.opts, ctx.workdir)
        calibration, calibration_info = (pick_calibration(ctx.entry, ctx.opts, ctx.workdir)
                                         if "int8" in ctx.opts.precisions else ([], None))
    ctx.report.verification = {"images": image_info}
    if calibration_info:
        ctx.report.verification["int8_calibration"] = calibration_info
    return images, calibration


def pick_images(entry: Entry, opts: RunOptions, workdir: Path) -> tuple[list[Path], dict]:
    """The logit check's images: generated, or spread over the evaluated dataset images."""
    count, seed = entry["verify"]["images"], entry["verify"]["seed"]
    if opts.data is None:
        paths = generate_images(workdir / "images", count, seed)
        return paths, {"kind": "generated", "count": count, "seed": seed}
    positions = opts.data.positions
    picks = [opts.data.dataset.paths[positions[i]]
             for i in spread_pick(count, len(positions))]
    return picks, {"kind": "data", "dir": str(opts.data.dataset.root), "count": len(picks),
                   "available": len(positions)}


def pick_calibration(entry: Entry, opts: RunOptions, workdir: Path) -> tuple[list[Path], dict]:
    """int8 calibration images: spread over the classes of --data, else generated."""
    count = entry["variants"]["int8"]["calibration_images"]
    if opts.data is None:
        seed = entry["verify"]["seed"] + 1000   # not the logit check's images
        return (generate_images(workdir / "calibration", count, seed),
                {"kind": "generated", "count": count, "seed": seed,
                 "note": "no --data: calibrated on generated images, not ImageNet"})
    dataset, positions = opts.data.dataset, opts.data.positions
    chosen = [positions[i] for i in
              spread_subset([dataset.labels[p] for p in positions], count)]
    return [dataset.paths[p] for p in chosen], {
        "kind": "data", "dir": str(dataset.root), "count": len(chosen),
        "classes": len({dataset.labels[p] for p in chosen})}


def _checkpoint_report(got: Fetched) -> dict:
    return {"url": got.url, "path": str(got.path), "sha256": got.sha256, "bytes": got.bytes,
            "pinned": got.pinned, "digest_check": got.digest_check,
            "downloaded": got.downloaded}
