#!/usr/bin/env bash
# Create or update one environment from envs/NAME.lock.txt.
# Idempotent: the venv records the sha256 of the lock it was built from and is left alone
# while that matches, so `make setup` is fast when nothing changed.
#   usage: scripts/setup_env.sh NAME        (VENV_ROOT defaults to ./.venvs)
set -euo pipefail
name=${1:?usage: setup_env.sh NAME}
here=$(cd "$(dirname "$0")/.." && pwd)
lock="$here/envs/$name.lock.txt"
root=${VENV_ROOT:-$here/.venvs}
venv="$root/$name"
python=${PYTHON:-python3}

[ -f "$lock" ] || { echo "setup: no lock file $lock" >&2; exit 2; }
mkdir -p "$root"
# One builder per environment at a time: a second `make setup` (another CI job, a second
# terminal) waits here instead of deleting the venv the first one is filling.
exec 9>"$root/.$name.setup-lock"
flock 9
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.lock-sha256" 2>/dev/null)" = "$want" ]; then
  echo "setup: $name environment up to date ($venv)"
  exit 0
fi
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$pyver" != "3.11" ]; then
  echo "setup: the locks are for CPython 3.11, $python is $pyver (set PYTHON=python3.11)" >&2
  exit 2
fi
echo "setup: building $name environment in $venv (from envs/$name.lock.txt) ..."
# The stamp is written last: an interrupted build has none and is rebuilt next time.
rm -rf "$venv"
"$python" -m venv "$venv"
# --no-deps: the lock is a complete freeze, installed exactly as resolved by `make lock`
# (PaddleClas's declared pins would otherwise fight paddle 3; see envs/paddle-nodeps.in).
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$lock"
echo "$want" > "$venv/.lock-sha256"
echo "setup: $name environment ready"
