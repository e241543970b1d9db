"""The score and the surviving mutants of a mutmut run (scripts/mutation.sh), as Markdown and
JSON. Runs in the mutation environment, in mutmut's working copy.

Caught = killed by a test, timed out (the mutant hung the tests), or "segfault" (mutmut's name
for a worker that died by a signal: SIGSEGV, e.g. None passed into ONNX Runtime's C++, or
SIGKILL a second after the CPU limit's SIGXCPU). Not caught = survived,
no test covers it, or not run yet (a run cut by its budget). A survivor listed in the
equivalent file (one `mutant_name  # why` per line) is reported apart, with the reason, and
left out of the score's denominator; a listed name that no longer survives is reported as
stale so the list cannot rot.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from fnmatch import fnmatch
from pathlib import Path

CAUGHT = {"killed", "timeout", "segfault"}
# What a resumed run keeps: a test failed on the mutant. Timeouts and deaths by a signal are
# tested again: a hang can be the machine's (a worker waiting on a lock another one died
# holding) rather than the mutant's, and mutmut files a hang's SIGKILL under "segfault".
KEPT = {"killed"}
DIFFED = {"survived", "suspicious"}


def read_equivalent(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, why = line.partition("#")
        if name.strip():
            out[name.strip()] = why.strip() or "(no reason given)"
    return out


def collect() -> dict[str, dict[str, str]]:
    """mutmut's own records: source file -> {mutant name: status}."""
    from mutmut.__main__ import SourceFileMutationData, walk_mutatable_files
    from mutmut.stats import status_by_exit_code

    files = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        if data.exit_code_by_key:
            files[str(path)] = {name: status_by_exit_code[code]
                                for name, code in data.exit_code_by_key.items()}
    return files


def diff_of(name: str, path: str) -> str:
    from mutmut.__main__ import get_diff_for_mutant

    try:
        return get_diff_for_mutant(name, path=Path(path))
    except Exception as exc:  # noqa: BLE001 - a missing diff must not lose the report
        return f"(no diff: {type(exc).__name__}: {exc})"


def score(files: dict[str, dict[str, str]], equivalent: dict[str, str]) -> dict:
    by_package: dict[str, Counter] = defaultdict(Counter)
    by_file: dict[str, Counter] = {}
    for path, mutants in files.items():
        counts = Counter("equivalent" if name in equivalent and status not in CAUGHT
                         else status for name, status in mutants.items())
        by_file[path] = counts
        by_package[path.split("/")[0]] += counts

    def figures(counts: Counter) -> dict:
        total = sum(counts.values())
        caught = sum(counts[s] for s in CAUGHT)
        judged = total - counts["equivalent"]
        return {"mutants": total, "caught": caught, "equivalent": counts["equivalent"],
                "score_percent": round(100.0 * caught / judged, 1) if judged else None,
                "by_status": dict(sorted(counts.items()))}

    everything = sum(by_package.values(), Counter())
    return {"total": figures(everything),
            "packages": {k: figures(v) for k, v in sorted(by_package.items())},
            "files": {k: figures(v) for k, v in sorted(by_file.items())}}


def reopen(patterns: list[str], equivalent: dict[str, str]) -> tuple[int, int]:
    """Before a resumed run: forget every result that is not a catch, and the test map.
    With `patterns` (MUTATION_ONLY), only the results of the mutants they match: the others
    are not run, so their results stay as they were.

    mutmut keeps a mutant's result until its function changes, and runs a test map for new
    test names only. A survivor or a "no tests" mutant would then stand after the tests that
    kill it were written; a catch cannot be undone by adding tests. So a resumed run re-tests
    what was not caught, and the timeouts and signal deaths, with a test map made afresh (one
    pass of the fast tests). Killed mutants keep their result, and so do the survivors listed
    as equivalent (no test can kill one, and each ran every test of its function, a minute or
    two: half a resumed run's time went on them); a changed function's mutants are new to
    mutmut and run anyway. MUTATION_FRESH=1 (scripts/mutation.sh) forgets all of it, and the
    report then names a listed mutant that was caught as stale. Returns (reopened,
    equivalents kept).
    """
    from mutmut.__main__ import SourceFileMutationData, walk_mutatable_files
    from mutmut.stats import status_by_exit_code

    reopened = kept = 0
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in data.exit_code_by_key.items():
            if code is None or status_by_exit_code[code] in KEPT:
                continue
            if name in equivalent and status_by_exit_code[code] == "survived":
                kept += 1
            elif not patterns or any(fnmatch(name, p) for p in patterns):
                data.exit_code_by_key[name] = None
                reopened += 1
        data.save()
    Path("mutants/mutmut-stats.json").unlink(missing_ok=True)
    return reopened, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--equivalent", type=Path)
    parser.add_argument("--finished", choices=["true", "false"], default="true")
    parser.add_argument("--reopen", nargs="*", metavar="PATTERN",
                        help="only reopen the results that are not catches, of the mutants "
                             "matching PATTERN if given (see reopen())")
    args = parser.parse_args()
    if args.equivalent is None:
        parser.error("--equivalent is required")
    equivalent = read_equivalent(args.equivalent)
    if args.reopen is not None:
        reopened, kept = reopen(args.reopen, equivalent)
        print(f"mutation: {reopened} earlier results that were not catches will be re-tested; "
              f"{kept} listed as equivalent keep theirs")
        return
    if args.out is None:
        parser.error("--out is required")
    files = collect()
    result = score(files, equivalent)
    # mutmut exits 0 when stopped with Ctrl-C too: unrun mutants say whether it finished.
    result["finished"] = args.finished == "true" and not result["total"]["by_status"].get(
        "not checked")
    found = {name: (path, status) for path, mutants in files.items()
             for name, status in mutants.items()}
    # Diffs for the mutants a test ran and missed; the uncovered and unrun ones by name (a
    # diff each would cost a parse of its file, thousands of times).
    result["survivors"] = [
        {"name": name, "file": path, "status": status,
         "diff": diff_of(name, path) if status in DIFFED else ""}
        for name, (path, status) in sorted(found.items())
        if status not in CAUGHT and name not in equivalent]
    result["equivalent"] = [{"name": n, "why": why, "status": found[n][1]}
                            for n, why in sorted(equivalent.items())
                            if n in found and found[n][1] not in CAUGHT]
    result["stale_equivalent"] = sorted(n for n in equivalent
                                        if n not in found or found[n][1] in CAUGHT)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mutation.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "mutation.md").write_text(markdown(result))
    total = result["total"]
    print(f"mutation: {total['caught']} of {total['mutants']} mutants caught, "
          f"{total['equivalent']} equivalent: score {total['score_percent']}%"
          f"{'' if result['finished'] else ' (run cut by its budget: not every mutant ran)'}")
    for package, fig in result["packages"].items():
        print(f"  {package:<14} {fig['score_percent']!s:>6}%  {fig['caught']}/{fig['mutants']}"
              f"  {fig['by_status']}")
    print(f"report: {args.out / 'mutation.md'} ({len(result['survivors'])} survivors listed)")


def markdown(result: dict) -> str:
    lines = ["# Mutation testing report", "",
             "Caught = killed or timed out; the score leaves out mutants listed as "
             "equivalent (tests/mutation_equivalent.txt).", "",
             "| package | mutants | caught | equivalent | score | statuses |",
             "|---|---|---|---|---|---|"]
    for name, fig in [*result["packages"].items(), ("**total**", result["total"])]:
        lines.append(f"| {name} | {fig['mutants']} | {fig['caught']} | {fig['equivalent']} | "
                     f"{fig['score_percent']}% | {fig['by_status']} |")
    if not result["finished"]:
        lines += ["", "The run was cut by its budget: not every mutant ran."]
    if result["stale_equivalent"]:
        lines += ["", "## Stale equivalent entries (no longer surviving or gone)", ""]
        lines += [f"- `{n}`" for n in result["stale_equivalent"]]
    lines += ["", "## Equivalent (survive by design)", ""]
    lines += [f"- `{e['name']}`: {e['why']}" for e in result["equivalent"]] or ["(none)"]
    diffed = [s for s in result["survivors"] if s["diff"]]
    lines += ["", f"## Survivors a test ran and missed ({len(diffed)})", ""]
    for s in diffed:
        lines += [f"### `{s['name']}` ({s['status']})", "", "```diff", s["diff"].rstrip(), "```",
                  ""]
    rest = [s for s in result["survivors"] if not s["diff"]]
    lines += ["", f"## Not covered by a fast test, or not run ({len(rest)})", ""]
    by_function: dict[tuple[str, str], int] = Counter()
    for s in rest:
        by_function[(s["status"], s["name"].rsplit("__mutmut_", 1)[0])] += 1
    lines += [f"- {status}: `{function}` ({count})"
              for (status, function), count in sorted(by_function.items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
