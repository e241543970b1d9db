"""Print, one per line, the uv arguments that name the package indexes pip would use here.

uv does not read pip's configuration (pip.conf, PIP_* variables). Machines that mirror PyPI
on disk configure pip, not uv, so setup and `make lock` ask pip for its effective settings
(`pip config list`, which includes PIP_* variables) and hand them to uv:
    mapfile -t args < <(python3 scripts/uv_index_args.py)
Runs on the system Python (standard library only): it is used before any environment exists.
"""

from __future__ import annotations

import ast
import subprocess
import sys

# pip key -> uv flag. extra-index-url and find-links hold space-separated lists.
FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "find-links": "--find-links"}


def pip_settings(listing: str) -> dict[str, list[str]]:
    """Parse `pip config list` lines (`global.key='value'`, `:env:.key='value'`).

    Environment variables override files in pip, so `:env:` values win over any file's."""
    found: dict[str, tuple[int, list[str]]] = {}
    for line in listing.splitlines():
        scope_key, sep, raw = line.partition("=")
        if not sep or "." not in scope_key:
            continue
        scope, key = scope_key.rsplit(".", 1)
        if key not in FLAGS or scope not in (":env:", "global", "install"):
            continue
        rank = {":env:": 2, "install": 1, "global": 0}[scope]
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw.strip("'\"")
        if key not in found or rank > found[key][0]:
            found[key] = (rank, str(value).split())
    return {key: values for key, (_, values) in found.items()}


def uv_args(settings: dict[str, list[str]]) -> list[str]:
    args: list[str] = []
    for key, flag in FLAGS.items():
        for value in settings.get(key, []):
            args += [flag, value]
    return args


def main() -> int:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, check=False).stdout
    print("\n".join(uv_args(pip_settings(listing))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
