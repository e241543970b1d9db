#!/usr/bin/env bash
# Write envs/NAME.lock.txt: every package pinned to one version with the sha256 of each of
# its published files (pip's --require-hashes format), which setup_env.sh installs.
#   scripts/lock_env.sh NAME              re-resolve envs/NAME.in (+ NAME-nodeps.in) with pip,
#                                         then hash the resolved pins
#   scripts/lock_env.sh --hash-only NAME  keep today's pins, recompute their hashes
# Resolution stays with pip (the environments were resolved that way; PaddleClas needs the
# --no-deps second step); uv only looks up the hashes of the pinned files on the indexes.
# LOCK_DIR (default ./envs): where NAME.in and NAME.lock.txt are; SETUP_UV: a uv binary to
# use instead of the pinned one.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
envs=${LOCK_DIR:-$here/envs}
hash_only=0
if [ "${1:-}" = "--hash-only" ]; then hash_only=1; shift; fi
name=${1:?usage: lock_env.sh [--hash-only] NAME}
python=${PYTHON:-python3}
lock="$envs/$name.lock.txt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $hash_only = 1 ]; then
  # The pins of the current lock, without hashes or comments.
  sed -e 's/ *\\$//' -e '/^ *--hash/d' -e '/^ *#/d' -e '/^ *$/d' "$lock" > "$work/pins.txt"
else
  "$python" -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet -r "$envs/$name.in"
  if [ -f "$envs/$name-nodeps.in" ]; then
    "$work/venv/bin/pip" install --quiet --no-deps -r "$envs/$name-nodeps.in"
  fi
  "$work/venv/bin/pip" freeze > "$work/pins.txt"
fi
uv=${SETUP_UV:-$("$here/scripts/bootstrap_uv.sh")}
mapfile -t index_args < <("$python" "$here/scripts/uv_index_args.py")
{
  echo "# envs/$name.lock.txt: written by scripts/lock_env.sh (\`make lock\`) from envs/$name.in;"
  echo "# installed by scripts/setup_env.sh with --no-deps --require-hashes. Do not edit by hand."
  "$uv" pip compile --quiet --no-deps --generate-hashes --python-version 3.11 \
      --index-strategy unsafe-best-match "${index_args[@]}" --no-header --no-annotate \
      "$work/pins.txt"
} > "$work/lock.txt"
mv "$work/lock.txt" "$lock"
echo "lock: wrote $lock ($(grep -c '^[A-Za-z0-9]' "$lock") packages)"
