"""The orchestrator imports no deep-learning framework: each lives in its own worker."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import (MINDSPORE_PYTHON, MM_PYTHON, NOT_UNDER_MUTMUT, PADDLE_PYTHON, REPO,
                      run_in_env)

FRAMEWORKS = ("torch", "torchvision", "paddle", "mindspore", "tensorflow", "jax", "mmpretrain",
              "mmcv", "mmengine", "paddleclas", "mindcv", "paddle2onnx")


SOURCES = ("mmpretrain", "paddleclas", "mindcv")   # converters/<source>/: worker side only
ORCHESTRATOR_SIDE = ("orchestrator", "deploy", "verify", "release", "fetch", "manifests",
                     "benchmarks", "commands")


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
    assert {"pipeline", "commands.convert", "orchestrator.run", "orchestrator.localize",
            "verify.localize", "converters.runner", "converters.variants",
            "release.provenance"} <= set(modules)
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


# The layers, lowest first (docs/architecture.md): a module imports nothing of a package
# listed against it. The worker side (WORKER_SIDE: it runs inside a framework's environment)
# and the orchestrator's ONNX work meet only in converters/protocol.py and the data loader.
WORKER_SIDE = ("converters.worker_flow", "converters.worker_tasks",
               *(f"converters.{s}" for s in SOURCES))
ORCHESTRATOR_ONNX = ("converters.simplify", "converters.variants", "converters.runner",
                     "converters.limits", "verify.ort_runner", "verify.ov_runner",
                     "verify.runners")
UPPER = ("orchestrator", "pipeline", "commands", "release", "fetch", "benchmarks", "scripts")
FORBIDDEN = {
    "converters.protocol": ("converters.", "manifests", "verify", "deploy", *UPPER),
    "converters.data_loader": ("converters.worker_flow", "manifests", "verify", *UPPER),
    **{side: (*ORCHESTRATOR_ONNX, *UPPER) for side in WORKER_SIDE},
    "converters": UPPER,   # the orchestrator-side top level (simplify, variants, runner, ...)
    # the source registry (pure data: every per-source fact) is the one converters module
    "manifests": ("verify", "converters.protocol", "converters.data_loader", *ORCHESTRATOR_ONNX,
                  *WORKER_SIDE, *UPPER),
    "deploy": ("manifests", *UPPER),
    "verify": UPPER,
    "fetch": ("verify", "deploy", "orchestrator", "pipeline", "release", "benchmarks"),
    "release": ("orchestrator", "pipeline", "benchmarks", *WORKER_SIDE),
    "orchestrator": ("pipeline", "commands", "benchmarks", *WORKER_SIDE),
    "commands": ("pipeline", "benchmarks", *WORKER_SIDE),   # the command line, on top
}


def _rule(module: str) -> tuple[str, tuple[str, ...]]:
    """The most specific FORBIDDEN key that covers `module`."""
    keys = [k for k in FORBIDDEN if module == k or module.startswith(k + ".")]
    key = max(keys, key=len)
    return key, FORBIDDEN[key]


def _imports(path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _covers(prefix: str, target: str) -> bool:
    return (target.startswith(prefix) if prefix.endswith(".") else
            target == prefix or target.startswith(prefix + "."))


# The project's packages (the layers below), each file of which the two tests below read.
PACKAGES = ("converters", "manifests", "deploy", "verify", "fetch", "release", "orchestrator",
            "commands")


def test_each_layer_imports_only_the_layers_below_it():
    """No import goes up a layer or across the worker/orchestrator line (lazy ones included):
    converters.variants once imported release.provenance, and orchestrator/bench.py the
    worker-only converters.worker_flow."""
    paths = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    assert len(paths) > 60
    bad = []
    for path in paths:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        key, forbidden = _rule(module)
        for target in _imports(path):
            if any(_covers(f, target) for f in forbidden) and not _covers(key, target):
                bad.append(f"{module} imports {target} ({key} may not import {forbidden})")
    assert not bad, "\n".join(bad)


MAX_MODULE_LINES = 400   # issue 32: a module a newcomer can read whole


@NOT_UNDER_MUTMUT
def test_no_module_outside_the_tests_is_over_400_lines():
    """run.py had grown to 971 lines doing seven jobs; each split since kept a module to one
    job. A module that grows past this is split the same way (docs/architecture.md).

    It reads the project's folders, not git's index: `make mutation` runs the fast tests in a
    copy of the tree that is no git checkout, and this test's `git ls-files` failed there,
    stopping every mutation run at its first pass."""
    paths = [REPO / "pipeline.py", *(p for folder in (*PACKAGES, "benchmarks", "scripts")
                                     for p in (REPO / folder).rglob("*.py"))]
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in paths}
    assert len(sizes) > 60
    over = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"over {MAX_MODULE_LINES} lines: {over}"


def test_the_layer_rules_catch_an_upward_import(tmp_path):
    """The rule set itself: an import each rule forbids is found, one it allows is not."""
    assert _rule("converters.mindcv.worker")[0] == "converters.mindcv"
    assert _rule("converters.simplify")[0] == "converters"
    for module, target, caught in [
            ("converters.variants", "release.provenance", True),
            ("orchestrator.bench", "converters.worker_flow", True),
            ("converters.mindcv.worker", "converters.simplify", True),
            ("converters.protocol", "converters.registry", True),
            ("verify.compare", "orchestrator.run", True),
            ("orchestrator.bench", "converters.protocol", False),
            ("converters.mindcv.worker", "converters.mindcv.rewrites", False),
            ("release.provenance", "converters.protocol", False),
            ("manifests.schema", "converters.registry", False),
            ("manifests.schema", "converters.runner", True)]:
        key, forbidden = _rule(module)
        found = any(_covers(f, target) for f in forbidden) and not _covers(key, target)
        assert found is caught, (module, target)


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

