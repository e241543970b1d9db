"""What the eval-config scripts (paddleclas_eval_configs.py, mindcv_eval_configs.py) share:
reading a source's repository at a commit with `git show`, and writing one JSON line per
model, so a moved commit is reviewable as a diff."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True,
                          capture_output=True, text=True).stdout


def yaml_files(git_dir: str, commit: str, root: str) -> tuple[str, list[str]]:
    """(the full commit, the .yaml files under ROOT at it)."""
    commit = git(git_dir, "rev-parse", commit).strip()
    return commit, [f for f in git(git_dir, "ls-tree", "-r", "--name-only", commit, root).split()
                    if f.endswith(".yaml")]


def write_models(out: str | Path, repository: str, commit: str, models: dict,
                 files: int) -> None:
    lines = [f'  "{name}": {json.dumps(block, separators=(",", ":"))}'
             for name, block in models.items()]
    Path(out).write_text(f'{{"repository": "{repository}",\n"commit": "{commit}",\n'
                         '"models": {\n' + ",\n".join(lines) + "\n}}\n")
    print(f"{len(models)} configs from {files} files at {commit[:12]} -> {out}")
