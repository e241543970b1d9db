#!/usr/bin/env bash
# Create or update one environment from envs/NAME.lock.txt.
# Idempotent: the venv records the sha256 of the lock it was built from and is left alone
# while that matches, so `make setup` is fast when nothing changed.
# Every file installed is checked against the sha256 hashes in the lock (--require-hashes):
# a wheel whose hash does not match stops setup, naming the package. The installer is uv
# (envs/uv.lock.txt, itself installed by pip with hash checking): it builds the four
# environments several times faster than pip (docs/environments.md), from the same lock files.
#   usage: scripts/setup_env.sh NAME        (VENV_ROOT defaults to ./.venvs; SETUP_UV: a uv
#                                            binary to use instead of the pinned one;
#                                            LOCK_DIR defaults to ./envs)
set -euo pipefail
name=${1:?usage: setup_env.sh NAME}
here=$(cd "$(dirname "$0")/.." && pwd)
lock_dir=${LOCK_DIR:-$here/envs}
lock="$lock_dir/$name.lock.txt"
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
site_packages() { "$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))'; }
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.lock-sha256" 2>/dev/null)" = "$want" ]; then
  # An environment built before setup compiled its bytecode (or whose stamp is gone):
  # compiled in place, not rebuilt.
  if [ ! -f "$venv/.bytecode" ]; then
    echo "setup: compiling $name's bytecode ($venv) ..."
    "$venv/bin/python" -m compileall -q -j 0 "$(site_packages)" >/dev/null || true
    touch "$venv/.bytecode"
  fi
  echo "setup: $name environment up to date ($venv)"
  exit 0
fi
pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$pyver" != "3.11" ]; then
  echo "setup: the locks are for CPython 3.11, $python is $pyver (set PYTHON=python3.11)" >&2
  exit 2
fi
uv=${SETUP_UV:-$("$here/scripts/bootstrap_uv.sh")}
echo "setup: building $name environment in $venv (from $lock) ..."
# The stamp is written last: an interrupted build has none and is rebuilt next time.
rm -rf "$venv"
"$python" -m venv "$venv"
# uv does not read pip's configuration: hand it the indexes pip would use on this machine.
mapfile -t index_args < <("$python" "$here/scripts/uv_index_args.py")
# --no-deps: the lock is a complete freeze, installed exactly as resolved by `make lock`
# (PaddleClas's declared pins would otherwise fight paddle 3; see envs/paddle-nodeps.in).
# unsafe-best-match: pick the best file over all indexes, as pip does; the hashes, not the
# index order, decide what may be installed.
# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set
# (it is on the machines this project is built on) Python never writes them either, so every
# process would compile each module it imports from source again: `import mmpretrain.models`
# took 9.6 s without them and 4.4 s with them (docs/environments.md).
if ! "$uv" pip install --quiet --python "$venv/bin/python" --no-deps --require-hashes \
     --compile-bytecode \
     --index-strategy unsafe-best-match "${index_args[@]}" -r "$lock"; then
  echo "setup: installing $name from $lock failed (a hash mismatch names the package above);" \
       "the environment was not built" >&2
  rm -rf "$venv"
  exit 1
fi
touch "$venv/.bytecode"
echo "$want" > "$venv/.lock-sha256"
echo "setup: $name environment ready"
