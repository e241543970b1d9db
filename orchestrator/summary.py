"""The table printed at the end of a run: entry, status, the figure that decided it, time;
then each entry's runtime matrix in one line."""
from __future__ import annotations


def format_summary(results) -> str:
    rows = [("entry", "status", "decided by", "time")]
    rows += [(r.name, r.status.upper() if r.status != "passed" else r.status,
              r.decided_by if len(r.decided_by) <= 90 else r.decided_by[:87] + "...",
              f"{r.seconds:.1f} s") for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    passed = sum(r.status == "passed" for r in results)
    unchanged = sum(r.status == "unchanged" for r in results)
    unsupported = sum(r.status == "unsupported" for r in results)
    matrix = [(r.name, r.runtimes) for r in results if getattr(r, "runtimes", "")]
    if matrix:
        lines.append("runtimes (besides ONNX Runtime CPU):")
        lines += [f"  {name}: {line}" for name, line in matrix]
    lines.append(f"{passed}/{len(results)} passed"
                 + (f", {unchanged} unchanged (skipped)" if unchanged else "")
                 + (f", {unsupported} unsupported by the source's own code or the "
                    "preprocessing contract" if unsupported else ""))
    return "\n".join(lines)
