"""The orchestrator imports no deep-learning framework: each lives in its own worker."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MINDSPORE_PYTHON, MM_PYTHON, PADDLE_PYTHON, REPO, run_in_env

FRAMEWORKS = ("torch", "torchvision", "paddle", "mindspore", "tensorflow", "jax", "mmpretrain",
              "mmcv", "mmengine", "paddleclas", "mindcv", "paddle2onnx")


SOURCES = ("mmpretrain", "paddleclas", "mindcv")   # converters/<source>/: worker side only
ORCHESTRATOR_SIDE = ("orchestrator", "deploy", "verify", "release", "fetch", "manifests",
                     "benchmarks")


def _orchestrator_modules() -> list[str]:
    """Every module the orchestrator side has: its packages, pipeline.py, and the top level
    of converters/ (protocol, registry, runner, ...), found on disk, not listed by hand."""
    paths = [REPO / "pipeline.py", *(REPO / "converters").glob("*.py")]
    for package in ORCHESTRATOR_SIDE:
        paths += (REPO / package).rglob("*.py")
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in paths
                  if p.name != "__init__.py")


def test_orchestrator_modules_import_no_framework():
    modules = [m for m in _orchestrator_modules() if not m.startswith("benchmarks.")]
    assert {"pipeline", "orchestrator.run", "orchestrator.localize", "verify.localize",
            "converters.runner", "converters.variants", "release.provenance"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_orchestrator_module_imports_a_framework_or_a_worker_even_lazily():
    """Imports inside functions too (ast), so a lazy import cannot slip through."""
    import ast

    bad = []
    for name in _orchestrator_modules():
        path = REPO / (name.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for target in targets:
                top = target.split(".")[0]
                if top in FRAMEWORKS or any(target.startswith(f"converters.{source}")
                                            for source in SOURCES):
                    bad.append(f"{name}: imports {target}")
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("source,python", [("mmpretrain", MM_PYTHON),
                                           ("paddleclas", PADDLE_PYTHON),
                                           ("mindcv", MINDSPORE_PYTHON)])
def test_checkpoint_readers_refuse_random_bytes_as_format_errors(source, python, tmp_path):
    run_in_env(python, str(REPO / "tests" / "helpers" / "fuzz_loader.py"), source,
               str(tmp_path), "60")


@pytest.mark.slow
@pytest.mark.parametrize("source,python", [("mmpretrain", MM_PYTHON),
                                           ("paddleclas", PADDLE_PYTHON),
                                           ("mindcv", MINDSPORE_PYTHON)])
def test_checkpoint_readers_refuse_crafted_files_within_budget(source, python, tmp_path):
    """Nesting 200,000 deep, zip members that lie about their size, a deflate bomb, 10^10
    elements declared over 4 stored (torch view, numpy array, MindSpore protobuf dims),
    lengths past the end: each a format error in under 20 s, under 3 GiB peak."""
    proc = run_in_env(python, str(REPO / "tests" / "helpers" / "fuzz_loader.py"), source,
                      str(tmp_path), "hostile")
    assert f"{source}: 0 hostile file(s) not refused within budget" in proc.stdout

