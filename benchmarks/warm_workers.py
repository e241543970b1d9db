#!/usr/bin/env python
"""Sweep throughput: seconds per converted model with a fresh framework process per job
(`--fresh-workers`) and with each source's warm worker (the default), on the same models.

Runs `scripts/zoo_sweep.py` twice on the same seeded checkpoints (made once, by the first
run): warm first, then fresh, so the page cache favours the fresh run and the gain shown is
not flattered by it. A model's seconds are the pipeline's own time for its entry (derive,
convert, simplify, gates, artifact: `timings.total` of its report.json), without the
sweep's checkpoint making. It also says whether each entry's gate figures (every check's
value and limit) came out the same both ways. Prints a table, writes JSON.

    make bench-warm [SOURCE=mmpretrain] [MODELS=a,b,c]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# ResNet-18-sized models of each zoo, and one larger, so that the fixed cost per job shows
# beside the work per model.
DEFAULT_MODELS = {
    "mmpretrain": "resnet18_8xb32_in1k,resnet34_8xb32_in1k,mobilenet-v2_8xb32_in1k,"
                  "shufflenet-v2-1x_16xb64_in1k,resnet50_8xb32_in1k",
    "paddleclas": "ResNet18,ResNet34,MobileNetV2,ShuffleNetV2_x1_0,ResNet50",
    "mindcv": "resnet18,resnet34,mobilenet_v2_100,shufflenet_v2_x1_0,resnet50",
}


def sweep(source: str, models: str, out: Path, fresh: bool) -> dict:
    command = [sys.executable, str(REPO / "scripts" / "zoo_sweep.py"), "--source", source,
               "--models", models, "--out", str(out),
               *(["--fresh-workers"] if fresh else [])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"zoo_sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / f"{source}.json").read_text())


def _figures(out: Path, source: str, row: dict) -> list | None:
    """Every check's name, value and limit in the entry's report (results must not depend
    on which process ran the job)."""
    report = out / "artifacts" / source / row["name"] / "report.json"
    if not report.is_file():
        return None
    checks = json.loads(report.read_text()).get("checks", [])
    return [(c.get("name"), c.get("measured"), c.get("limit")) for c in checks]


def _same(warm: list | None, fresh: list | None) -> bool:
    """Both runs wrote a report with checks, and every figure is the same (two missing
    reports are not 'the same figures')."""
    return bool(warm) and warm == fresh


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--source", default="mmpretrain", choices=list(DEFAULT_MODELS))
    parser.add_argument("--models", default=None,
                        help="comma-separated model ids (default: five of the source's)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-warm")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the figures (default: OUT/warm_workers.json)")
    args = parser.parse_args(argv)
    models = args.models or DEFAULT_MODELS[args.source]
    out = args.out.resolve()
    (out / "fresh").mkdir(parents=True, exist_ok=True)
    runs = {"warm": sweep(args.source, models, out / "warm", fresh=False)}
    shared = out / "fresh" / "checkpoints"      # the fresh run converts the same checkpoints
    if not shared.exists():
        shared.symlink_to(out / "warm" / "checkpoints", target_is_directory=True)
    runs["fresh"] = sweep(args.source, models, out / "fresh", fresh=True)

    rows = []
    per = {kind: {r["model_id"]: r for r in run["models"]} for kind, run in runs.items()}
    for model_id, warm in per["warm"].items():
        fresh = per["fresh"].get(model_id, {})
        rows.append({"model_id": model_id, "status": warm["status"],
                     "fresh_s": fresh.get("convert_seconds"),
                     "warm_s": warm.get("convert_seconds"),
                     "same_figures": _same(_figures(out / "warm", args.source, warm),
                                           _figures(out / "fresh", args.source, warm))})
    both = [r for r in rows if r["fresh_s"] is not None and r["warm_s"] is not None]
    summary = {"source": args.source, "models": len(rows),
               "fresh_s_per_model": sum(r["fresh_s"] for r in both) / max(len(both), 1),
               "warm_s_per_model": sum(r["warm_s"] for r in both) / max(len(both), 1),
               "versions": runs["warm"]["summary"]["versions"]}
    print(f"{'model':<40} {'status':<12} {'fresh s':>8} {'warm s':>8}  same figures")
    for r in rows:
        print(f"{r['model_id']:<40} {r['status']:<12} "
              f"{r['fresh_s'] if r['fresh_s'] is not None else float('nan'):>8.1f} "
              f"{r['warm_s'] if r['warm_s'] is not None else float('nan'):>8.1f}  "
              f"{'yes' if r['same_figures'] else 'NO'}")
    print(f"{'mean per model':<53} {summary['fresh_s_per_model']:>8.1f} "
          f"{summary['warm_s_per_model']:>8.1f}")
    target = args.json or out / "warm_workers.json"
    target.write_text(json.dumps({"summary": summary, "models": rows}, indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
