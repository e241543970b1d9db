#!/usr/bin/env bash
# Install the pinned uv (envs/uv.lock.txt, hash-checked by pip) into $VENV_ROOT/.uv once and
# print the path of its binary. Used by setup_env.sh and `make lock`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${VENV_ROOT:-$here/.venvs}
lock="$here/envs/uv.lock.txt"
tool="$root/.uv"
python=${PYTHON:-python3}
mkdir -p "$root"
exec 8>"$root/.uv.setup-lock"
flock 8
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -x "$tool/bin/uv" ] || [ "$(cat "$tool/.lock-sha256" 2>/dev/null)" != "$want" ]; then
  rm -rf "$tool"
  "$python" -m venv "$tool"
  "$tool/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
      -r "$lock" >&2
  echo "$want" > "$tool/.lock-sha256"
fi
echo "$tool/bin/uv"
