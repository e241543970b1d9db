"""Compare the report.json files of two pipeline runs key by key, with what differs from run
to run masked: timings and throughput, the creation time, run ids, the git commit, the
converting process's pid, and absolute paths (work directories, caches).

    python scripts/compare_reports.py BEFORE_OUT AFTER_OUT [--json DIFF.json]

BEFORE_OUT and AFTER_OUT are --out folders (one NAME/report.json per entry). Used to show
that a refactor keeps the reports (docs/architecture.md, "Changing the code"). Exits 0 when
every entry's masked report is the same, 1 with the differing keys listed otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# keys whose values are measured or made per run, wherever they appear
MASKED_KEYS = {"timings", "created", "run_id", "git_commit", "worker", "throughput",
               "seconds", "wall_s", "images_per_s", "wall_images_per_s"}


def masked(value, key: str = ""):
    if key in MASKED_KEYS:
        return "<masked>"
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return "<path>"
    return value


def differences(a, b, where: str = "") -> list[str]:
    """Every key path where the masked values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a:
                out.append(f"{where}.{key}: only after")
            elif key not in b:
                out.append(f"{where}.{key}: only before")
            else:
                out += differences(a[key], b[key], f"{where}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"]


def compare(before: Path, after: Path) -> dict[str, list[str]]:
    names = sorted({p.parent.name for p in before.glob("*/report.json")} |
                   {p.parent.name for p in after.glob("*/report.json")})
    found = {}
    for name in names:
        a, b = before / name / "report.json", after / name / "report.json"
        if not (a.is_file() and b.is_file()):
            found[name] = [f"report.json only in {'after' if b.is_file() else 'before'}"]
            continue
        found[name] = differences(masked(json.loads(a.read_text())),
                                  masked(json.loads(b.read_text())))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--json", type=Path, help="write {entry: [differences]} here")
    args = parser.parse_args(argv)
    found = compare(args.before, args.after)
    if not found:
        print(f"no report.json under {args.before} or {args.after}")
        return 1
    for name, diffs in found.items():
        print(f"{name}: {'same' if not diffs else f'{len(diffs)} difference(s)'}")
        for d in diffs:
            print(f"  {d}")
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
