"""Mutants of FILE's function FUNC, numbered as mutmut names them (x_FUNC__mutmut_N), with
what each changes, to read an entry of tests/mutation_equivalent.txt against its mutant.

    mutation/bin/python scripts/mutant_list.py FILE FUNC [REV|-] [FROM TO]

REV: a git revision to read FILE at (- for the working tree); FROM TO: a range of numbers.
"""
import subprocess, sys
import libcst as cst
from mutmut.mutation.file_mutation import create_mutations
path, func = sys.argv[1], sys.argv[2]
rev = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] != "-" else None
lo, hi = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (1, 10**9)
code = open(path).read() if rev is None else subprocess.run(
    ["git", "show", f"{rev}:{path}"], capture_output=True, text=True).stdout
module, mutations, *_ = create_mutations(path, code)
mod = cst.Module([])
n = 0
for mu in mutations:
    f = mu.contained_by_top_level_function
    name = getattr(getattr(f, "name", None), "value", None)
    if name != func:
        continue
    n += 1
    if lo <= n <= hi:
        a = mod.code_for_node(mu.original_node).strip().replace("\n", " ")[:90]
        b = mod.code_for_node(mu.mutated_node).strip().replace("\n", " ")[:90]
        print(f"{func}__mutmut_{n}: {a!r} -> {b!r}")
