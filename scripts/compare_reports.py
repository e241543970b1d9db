"""Compare the report.json files of two pipeline runs key by key, with what differs from run
to run masked: timings and throughput, the creation time, run ids, the git commit, the
converting process's pid, and absolute paths (work directories, caches). The code's digest
(and the inputs fingerprint made from it) is masked too: it is what a refactor changes. The
digests of shipped model files are masked because each file carries its run's metadata
(creation time, run id, commit); instead every model file of both runs is compared with its
metadata left out, graph and weights byte for byte.

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
# (throughput holds every rate and wall time of the accuracy gate)
MASKED_KEYS = {"timings", "created", "run_id", "git_commit", "worker", "throughput"}


# keys the code's own digest decides (inputs.parts.code_sha256 and the fingerprint of them)
CODE_KEYS = {"code_sha256", "fingerprint"}


def _file_digest(where: str) -> bool:
    """A shipped model file's digest: its bytes hold the run's metadata."""
    return (where in (".onnx.sha256", ".onnx.bytes") or where.startswith(".deploy.files.")
            or (where.startswith(".variants.") and where.endswith((".sha256", ".bytes"))))


def masked(value, key: str = "", where: str = ""):
    if key in MASKED_KEYS or key in CODE_KEYS or _file_digest(where):
        return "<masked>"
    if isinstance(value, dict):
        return {k: masked(v, k, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, where=f"{where}[]") for v in value]
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


def model_differences(a: Path, b: Path) -> list[str]:
    """The two model files' graphs and weights, their metadata_props left out."""
    import onnx

    first, second = onnx.load(str(a)), onnx.load(str(b))
    for model in (first, second):
        del model.metadata_props[:]
    if first.SerializeToString() == second.SerializeToString():
        return []
    return [f"{a.name}: the graph or its weights differ (metadata left out)"]


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
        models = sorted({p.name for d in (before, after) for p in (d / name).glob("*.onnx")})
        for model in models:
            x, y = before / name / model, after / name / model
            found[name] += (model_differences(x, y) if x.is_file() and y.is_file() else
                            [f"{model} only in {'after' if y.is_file() else 'before'}"])
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
