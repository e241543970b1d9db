"""The report of a zoo sweep (scripts/zoo_sweep.py): each model's cause in one line, the
causes counted by class, the 95 % Wilson interval of the pass rate, the share of the models
the source's own code runs, and the Markdown table. Pure functions of the sweep's rows."""
from __future__ import annotations


def cause(report: dict) -> str:
    """Why an entry did not pass, in one line: the failed check and its figures, or the
    stage, kind and message of the error."""
    error = report.get("error")
    if error:
        return f"{error['stage']}/{error['kind']}: {error['message'].splitlines()[0][:240]}"
    bad = [c for c in report.get("checks", []) if not c.get("passed")]
    if bad:
        c = bad[0]
        return (f"check {c['name']}: {c.get('measured')} vs limit {c.get('limit')}"
                + (f" ({c['detail'][:160]})" if c.get("detail") else ""))
    return report.get("decided_by", "")


def cause_class(row: dict) -> str:
    """The cause without its figures, for counting (e.g. 'derive/unsupported: test
    pipeline step EfficientNetCenterCrop')."""
    text = row.get("cause", "").replace(f"{row['model_id']}: ", "")
    head = text.split(":", 1)[0]
    if head.startswith("check "):
        return head
    detail = text.split(": ", 1)[1] if ": " in text else ""
    return f"{head}: {detail.split(':')[0][:90]}".rstrip(": ")


def wilson(passed: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a pass rate, in percent: what the zoo's rate may be,
    given `passed` of a random sample of `n` (sound at small n and near 0 or 100 %, where the
    normal approximation is not)."""
    if n == 0:
        return 0.0, 100.0
    p = passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


# converters/worker_flow.py source_failure: "<framework>'s own code cannot <do what> here"
SOURCE_OWN = "'s own code cannot "


def source_runs(rows: list[dict]) -> dict:
    """The pass rate over the models the source's own code builds and runs in its
    environment here (mindcv 0.3's pvt and rexnet do not on MindSpore 2.7.2, the only
    usable release: docs/environments.md): what the pipeline can be asked to convert."""
    runs = [r for r in rows if SOURCE_OWN not in (r.get("cause") or "")]
    passed = sum(r["status"] == "passed" for r in runs)
    return {"models": len(runs), "passed": passed,
            "percent": 100.0 * passed / max(len(runs), 1), "wilson95": wilson(passed, len(runs))}


def markdown(summary: dict, rows: list[dict]) -> str:
    counts = summary["counts"]
    if summary.get("list"):     # a peer project's own list: its models, whatever the zoo
        title = f"{summary['source']}, peer list {summary['list']}"
        chosen = f"the {summary['selected']} models of {summary['list_origin']} (seed "
    else:
        title = summary["source"]
        chosen = (f"{summary['selected']} of {summary['zoo_size']} models ("
                  + (f"{summary['not_imagenet_1k']} not ImageNet-1k classifiers left out; "
                     if summary.get("not_imagenet_1k") else "")
                  + f"pattern {summary['pattern'] or '*'!r}, sample {summary['sample']}, seed ")
    lines = [f"# Zoo sweep: {title}", "",
             f"{summary['date']}; {summary['versions']}; {chosen}"
             f"{summary['seed']}); seeded random-init checkpoints "
             f"made with the source's own code (BatchNorm statistics: "
             f"{summary['init']}); minimal 5-field entries (everything else "
             "derived).", "",
             f"**{counts.get('passed', 0)} of {len(rows)} passed "
             f"({summary['coverage_percent']:.0f} %; 95 % Wilson interval "
             f"{summary['wilson95'][0]:.0f}-{summary['wilson95'][1]:.0f} %)**; "
             + "".join(f"{k} {v}; " for k, v in sorted(counts.items()) if k != "passed")
             + f"{summary['seconds_per_model']:.0f} s per model end to end (checkpoint "
             "made, derive, convert, gates).", ""]
    runs = summary["source_runs"]
    if runs["models"] != len(rows):
        lines += [f"Of the {runs['models']} models the source's own code runs here: "
                  f"**{runs['passed']} passed ({runs['percent']:.0f} %; 95 % Wilson interval "
                  f"{runs['wilson95'][0]:.0f}-{runs['wilson95'][1]:.0f} %)**.", ""]
    if summary["causes"]:
        lines += ["| cause | models |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary["causes"].items()]
        lines.append("")
    lines += ["| model | family | status | cause | nodes | seconds |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model_id']} | {r.get('family') or ''} | {r['status']} | "
                     f"{(r.get('cause') or '').replace('|', '/')} | {r.get('nodes') or ''} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
