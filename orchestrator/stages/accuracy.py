"""The accuracy gate's verdict, on the driver: the merged shard figures
(orchestrator/accuracy.py merge_shards) into the report, the variants and the runtimes, and
the lines that say them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.stages.runtimes import runtime_accuracy
from orchestrator.stages.variants import variant_line
from verify.compare import Check, failed

if TYPE_CHECKING:
    from orchestrator.report import EntryReport
    from orchestrator.accuracy import MergedAccuracy


def apply_accuracy(report: EntryReport, checks: list[Check], variants: dict[str, dict],
                   merged: MergedAccuracy, say) -> list[Check]:
    """The merged shards' gates and figures into the report and the variants; returns the
    entry's checks with the accuracy ones added."""
    accuracy = merged.figures
    runtimes = accuracy.pop("runtimes", {})
    report.accuracy = accuracy
    for precision, (drop, figures) in merged.variants.items():
        variants[precision]["checks"].append(drop)
        variants[precision]["accuracy"] = figures
        variants[precision]["passed"] = not failed(variants[precision]["checks"])
        say(f"  {precision:<9} top-1/top-5 {figures['top1']:.2f}/{figures['top5']:.2f}; "
            f"{variant_line(variants[precision])}")
    acc_checks = merged.checks
    if runtimes:   # a runtimes section only where a runtime ran, as before the report was typed
        if report.runtimes is None:
            report.runtimes = {}
        acc_checks = acc_checks + runtime_accuracy(report.runtimes, variants, runtimes, say)
    if "contract" in accuracy:
        c = accuracy["contract"]
        say(f"  deploy    preprocess.json + ONNX top-1 {c['top1']:.2f}% vs the source's "
            f"{accuracy['source']['top1']:.2f}%; tensors within {c['max_level_diff']:.3g} "
            f"pixel levels ({c['exact_images']}/{c['images']} bit-exact"
            f"{', %d unreadable by the contract' % len(c['errors']) if c['errors'] else ''})")
    src, onx = accuracy["source"], accuracy["onnx"]
    say(f"  accuracy  source top-1/top-5 {src['top1']:.2f}/{src['top5']:.2f}, ONNX "
        f"{onx['top1']:.2f}/{onx['top5']:.2f} on {src['images']} images; "
        f"{accuracy['disagree']} disagree{_near_ties(accuracy)}; "
        f"{accuracy['unreadable']} unreadable; "
        f"{accuracy['throughput']['wall_images_per_s']} images/s "
        f"({accuracy['throughput']['shards']} shard(s))")
    return checks + acc_checks


def _near_ties(accuracy: dict) -> str:
    ties = accuracy.get("near_ties", 0)
    return f" (+{ties} near-tie{'s' if ties != 1 else ''}, not counted)" if ties else ""
