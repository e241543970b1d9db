#!/usr/bin/env bash
# `make mutation`: mutmut (envs/mutation.lock.txt) over the gate, signing, store, manifest
# and fetch code ([tool.mutmut] in pyproject.toml says which files) against the fast
# tests, within a time budget; then scripts/mutation_report.py writes the score and every
# surviving mutant (with its diff) to MUTATION_OUT/mutation.{md,json}.
#
# It runs in a copy of the tree (MUTATION_WORK, kept between runs): mutmut resumes there; a
# killed mutant of an unchanged function keeps its result, and so does a survivor listed as
# equivalent; everything else is re-tested. A
# run cut by the budget reports what it finished; the next run goes on from there.
#   MUTATION_BUDGET  seconds for `mutmut run` (default 3600)
#   MUTATION_JOBS    parallel mutants (default: cores)
#   MUTATION_OUT     where the report goes (default ./mutation-report)
#   MUTATION_WORK    the working copy (default ~/.cache/model-convert/mutation/<tree>)
#   MUTATION_SRC     the tree to test (default this checkout; tests point it at a toy tree)
#   MUTATION_ONLY    mutant name patterns to (re-)test, e.g. "release.* verify.localize.*";
#                    other results stay as they are (default: every mutant not yet caught)
#   MUTATION_FRESH   1: forget every earlier result (default: keep kills and the survivors
#                    listed as equivalent, re-test the rest with a fresh test map; see
#                    reopen() in scripts/mutation_report.py)
set -euo pipefail
set -f   # MUTATION_ONLY patterns reach mutmut and --reopen unexpanded
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(cd "${MUTATION_SRC:-$here}" && pwd)
budget=${MUTATION_BUDGET:-3600}
jobs=${MUTATION_JOBS:-$(nproc)}
out=${MUTATION_OUT:-$here/mutation-report}
work=${MUTATION_WORK:-$HOME/.cache/model-convert/mutation/$(basename "$src")}
only=${MUTATION_ONLY:-}
fresh=${MUTATION_FRESH:-0}
# Settings read above are not passed on, nor is the state of a mutmut run this one was
# started from (its mutant, the subprocess-hit crediting): a run the tests start
# (tests/test_mutation.py under `make mutation`) gets only its own.
unset MUTATION_SRC MUTATION_BUDGET MUTATION_JOBS MUTATION_OUT MUTATION_WORK MUTATION_ONLY \
    MUTATION_FRESH MUTANT_UNDER_TEST MUTATION_HITS_DIR MUTATION_ROOT
"$here/scripts/setup_env.sh" mutation >&2
bin="${VENV_ROOT:-$here/.venvs}/mutation/bin"

mkdir -p "$work" "$out"
out=$(cd "$out" && pwd)   # the report goes here, not into the working copy cd'ed to below
# The tree as git sees it (tracked and untracked, not ignored), into the working copy; what
# mutmut keeps there (mutants/) stays, so it can resume.
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$src" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$work"
else
  (cd "$src" && tar --exclude=./mutants -cf - .) | tar -xf - -C "$work"
fi
cd "$work"
if [ "$fresh" = 1 ]; then
  rm -rf mutants
elif [ -d mutants ]; then
  # shellcheck disable=SC2086 # $only is a list of patterns, split on purpose
  "$bin/python" "$here/scripts/mutation_report.py" --reopen $only \
      --equivalent "$src/tests/mutation_equivalent.txt" >&2
fi
echo "mutation: mutmut in $work (a copy of $src), budget ${budget}s, $jobs jobs" >&2
status=0
# shellcheck disable=SC2086 # $only is a list of patterns, split on purpose
timeout --signal=INT --kill-after=60 "$budget" "$bin/mutmut" run --max-children "$jobs" \
    $only || status=$?
case $status in
  0) finished=true ;;
  124|130) finished=false; echo "mutation: budget of ${budget}s reached; reporting what ran (run again to go on)" >&2 ;;
  *) echo "mutation: mutmut run failed (exit $status)" >&2; exit "$status" ;;
esac
"$bin/python" "$here/scripts/mutation_report.py" --out "$out" --finished "$finished" \
    --equivalent "$src/tests/mutation_equivalent.txt"
