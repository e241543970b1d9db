"""Mutants numbered as mutmut names them (x_FUNC__mutmut_N), with what each changes, to read
an entry of tests/mutation_equivalent.txt against its mutant (runs in the mutation env).

    mutation/bin/python scripts/mutant_list.py FILE FUNC [REV|-] [FROM TO]
    mutation/bin/python scripts/mutant_list.py --equivalents tests/mutation_equivalent.txt

The first form lists FUNC's mutants (REV: a git revision to read FILE at, - for the working
tree; FROM TO: a range of numbers). The second prints every listed equivalent beside the
mutant it names today and its reason, and '??' where no such mutant exists (the code moved:
the entry is stale). Module-level functions only; methods (xǁClassǁname) are skipped.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import libcst as cst
from mutmut.mutation.file_mutation import create_mutations

_MODULE = cst.Module([])


def mutants(path: str, rev: str | None = None) -> dict[str, list]:
    """Function name -> its mutations, in mutmut's numbering order."""
    code = Path(path).read_text() if rev is None else subprocess.run(
        ["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    _, found, *_ = create_mutations(path, code)
    per: dict[str, list] = {}
    for mutation in found:
        function = mutation.contained_by_top_level_function
        per.setdefault(getattr(getattr(function, "name", None), "value", None), []).append(mutation)
    return per


def change(mutation) -> str:
    before = _MODULE.code_for_node(mutation.original_node).strip().replace("\n", " ")
    after = _MODULE.code_for_node(mutation.mutated_node).strip().replace("\n", " ")
    return f"{before[:80]!r} -> {after[:80]!r}"


def equivalents(listing: Path) -> int:
    cache: dict[str, dict] = {}
    stale = 0
    for line in listing.read_text().splitlines():
        found = re.match(r"^(\S+)\.x_(\w+?)__mutmut_(\d+)\s+#\s*(.*)$", line)
        if not found:
            continue
        module, function, number, why = found.groups()
        path = module.replace(".", "/") + ".py"
        per = cache.setdefault(path, mutants(path))
        listed = per.get(function, [])
        if int(number) > len(listed):
            stale += 1
            print(f"?? {module}.{function}_{number}: no such mutant   # {why}")
            continue
        print(f"{path}:{function}_{number}: {change(listed[int(number) - 1])}\n    # {why}")
    return 1 if stale else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--equivalents"]:
        return equivalents(Path(argv[1]))
    path, function = argv[0], argv[1]
    rev = argv[2] if len(argv) > 2 and argv[2] != "-" else None
    low, high = (int(argv[3]), int(argv[4])) if len(argv) > 4 else (1, 10**9)
    for number, mutation in enumerate(mutants(path, rev).get(function, []), start=1):
        if low <= number <= high:
            print(f"{function}__mutmut_{number}: {change(mutation)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
