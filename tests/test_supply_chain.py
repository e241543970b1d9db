"""Hash-locked environments and the workflows' static analysis (issue 14, items 2 and 5).

- every pinned package of every lock carries sha256 hashes, and setup installs with
  --require-hashes: a tampered hash stops setup with a message naming the package, while the
  same line with the real hash installs;
- `zizmor --offline` finds nothing of medium or high severity in any workflow file.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOT_UNDER_MUTMUT, REPO, VENV_ROOT

sys.path.insert(0, str(REPO / "scripts"))
from uv_index_args import pip_settings, uv_args  # noqa: E402

LOCKS = sorted((REPO / "envs").glob("*.lock.txt"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _requirements(lock: Path) -> dict[str, list[str]]:
    """name==version -> its hashes, from a lock in pip's --require-hashes format."""
    text = lock.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = PIN.match(line.strip())
        if match:
            found[f"{match[1]}=={match[2]}"] = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
    return found


def test_every_pinned_package_has_sha256_hashes():
    assert {lock.name for lock in LOCKS} >= {"orchestrator.lock.txt", "mmpretrain.lock.txt",
                                             "paddle.lock.txt", "mindspore.lock.txt",
                                             "uv.lock.txt"}
    for lock in LOCKS:
        requirements = _requirements(lock)
        assert requirements, lock
        unhashed = [req for req, hashes in requirements.items() if not hashes]
        assert not unhashed, f"{lock.name}: no --hash for {unhashed}"


def test_uv_gets_the_indexes_pip_is_configured_with():
    listing = ("global.extra-index-url='file:///a/simple file:///b/simple'\n"
               "global.find-links='/opt/wheels'\n"
               ":env:.find-links='/env/wheels'\n"
               "global.cert='/etc/ssl/cert.pem'\n"
               "install.index-url='https://mirror.example/simple'\n")
    settings = pip_settings(listing)
    assert settings == {"extra-index-url": ["file:///a/simple", "file:///b/simple"],
                        "find-links": ["/env/wheels"],            # PIP_FIND_LINKS wins
                        "index-url": ["https://mirror.example/simple"]}
    assert uv_args(settings) == ["--index-url", "https://mirror.example/simple",
                                 "--extra-index-url", "file:///a/simple",
                                 "--extra-index-url", "file:///b/simple",
                                 "--find-links", "/env/wheels"]


def _pinned_uv() -> str:
    """The pinned uv, installed into VENV_ROOT by the project's own bootstrap if it is not
    there yet (cached environments may predate it)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap_uv.sh")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "VENV_ROOT": str(VENV_ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _script(tmp_path, script: str, *args: str):
    """scripts/SCRIPT against the lock files in tmp_path/locks and venvs in tmp_path/venvs."""
    env = {**os.environ, "VENV_ROOT": str(tmp_path / "venvs"), "LOCK_DIR": str(tmp_path / "locks"),
           "SETUP_UV": _pinned_uv(),
           "UV_CACHE_DIR": str(tmp_path / "uv-cache")}    # a cached wheel is no shortcut
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _setup(tmp_path, name: str, lock_line: str):
    locks = tmp_path / "locks"
    locks.mkdir(exist_ok=True)
    (locks / f"{name}.lock.txt").write_text(lock_line + "\n")
    return _script(tmp_path, "setup_env.sh", name)


@pytest.mark.index
def test_lock_hashes_keeps_the_pins_and_adds_every_published_files_hash(tmp_path):
    """`make lock-hashes` (lock_env.sh --hash-only): the pins stay, the hashes are those of the
    index's files for that version (the same the real locks carry)."""
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "tiny.lock.txt").write_text("# hand-written\nsix==1.17.0\n")
    proc = _script(tmp_path, "lock_env.sh", "--hash-only", "tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = _requirements(tmp_path / "locks" / "tiny.lock.txt")
    assert list(written) == ["six==1.17.0"]
    assert set(written["six==1.17.0"]) == set(
        _requirements(REPO / "envs" / "mindspore.lock.txt")["six==1.17.0"])


@pytest.mark.index
def test_setup_refuses_a_wheel_whose_hash_does_not_match(tmp_path):
    """A small real package from a real lock: installed with its hashes, refused with one
    digit of each changed (what a mirror serving another file would look like)."""
    requirement = "six==1.17.0"
    hashes = _requirements(REPO / "envs" / "mindspore.lock.txt")[requirement]
    good = requirement + "".join(f" --hash=sha256:{h}" for h in hashes)
    tampered = requirement + "".join(
        f" --hash=sha256:{h[:-1]}{'0' if h[-1] != '0' else '1'}" for h in hashes)

    ok = _setup(tmp_path, "good", good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    venv = tmp_path / "venvs" / "good"
    assert (venv / ".lock-sha256").exists()
    # Its bytecode is compiled at setup: with PYTHONDONTWRITEBYTECODE set, no process would
    # ever write it. An environment built without it is compiled in place, not rebuilt.
    compiled = next(venv.glob("lib/python3.*/site-packages/__pycache__/six.cpython-*.pyc"))
    compiled.unlink()
    (venv / ".bytecode").unlink()
    again = _setup(tmp_path, "good", good)
    assert again.returncode == 0 and "compiling good's bytecode" in again.stdout, again.stdout
    assert "building" not in again.stdout and compiled.exists()

    bad = _setup(tmp_path, "tampered", tampered)
    assert bad.returncode != 0
    assert "six" in bad.stderr and "hash" in bad.stderr.lower(), bad.stderr
    assert "tampered" in bad.stderr and "was not built" in bad.stderr
    # Nothing half-built is left that a later run could take for a working environment.
    assert not (tmp_path / "venvs" / "tampered").exists()


def zizmor_findings(workflows: list[Path]) -> list[dict]:
    """zizmor's findings on WORKFLOWS, after making sure it audited every one of them: given
    a file it cannot parse beside good ones, zizmor 1.32 warns, skips it and exits 0 with
    "[]" (alone, it exits 3 with no output). --no-exit-codes: 0 means it ran, whatever it
    found; the JSON is what is judged."""
    zizmor = Path(sys.executable).parent / "zizmor"
    result = subprocess.run([str(zizmor), "--offline", "--no-exit-codes", "--format", "json",
                             *map(str, workflows)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    audited = [wf for wf in workflows if f"completed {wf}" in result.stderr]
    assert audited == workflows, f"not audited: {set(workflows) - set(audited)}\n" + \
        result.stderr[-3000:]
    return json.loads(result.stdout)


def test_workflows_have_no_medium_or_high_zizmor_finding():
    workflows = sorted((REPO / ".github" / "workflows").glob("*.y*ml"))
    assert workflows
    serious = [(f["ident"], f["determinations"]["severity"],
                f["locations"][0]["symbolic"]["key"]["Local"]["given_path"])
               for f in zizmor_findings(workflows)
               if f["determinations"]["severity"] in ("Medium", "High")]
    assert not serious, serious


def test_a_workflow_zizmor_cannot_parse_fails_the_check(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text((REPO / ".github" / "workflows" / "nightly.yml").read_text())
    bad = tmp_path / "bad.yml"
    bad.write_text("name: w\non: push\njobs: [\n")
    zizmor_findings([good])
    with pytest.raises(AssertionError, match="not audited"):
        zizmor_findings([bad, good])


@pytest.mark.parametrize("line", ["uses: actions/checkout@v4",
                                  'run: echo "${{ vars.RAY_ADDRESS }}"'])
def test_zizmor_flags_what_the_workflow_no_longer_does(tmp_path, line):
    """The check above can fail: an unpinned action is High, a template in `run:` is found."""
    wf = tmp_path / ".github" / "workflows"
    wf.mkdir(parents=True)
    key, value = line.split(": ", 1)
    (wf / "w.yml").write_text(
        "name: w\non: push\npermissions: {}\njobs:\n  j:\n    runs-on: ubuntu-latest\n"
        f"    steps:\n      - {key}: {json.dumps(value)}\n")
    idents = {f["ident"] for f in zizmor_findings([wf / "w.yml"])}
    assert idents & {"unpinned-uses", "template-injection"}, idents


@NOT_UNDER_MUTMUT   # `make test` lints first, and the mutated modules are not clean
def test_make_test_fast_and_offline_leave_out_what_the_readme_says():
    """README/docs: `make test-offline` runs everything but the `index` tests, `make
    test-fast` neither `slow` nor `index` ones, `make test` everything on up to 4 workers.
    Read from what each target collects (pytest --collect-only through make)."""
    def collected(target: str) -> set[str]:
        proc = subprocess.run(["make", "--no-print-directory", "-s", target, "TEST_WORKERS=1",
                               f"VENV_ROOT={VENV_ROOT}", "PYTEST_ARGS=--collect-only -q"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return {line for line in proc.stdout.splitlines() if "::" in line}

    everything, offline, fast = collected("test"), collected("test-offline"), \
        collected("test-fast")
    index = {t for t in everything if "refuses_a_wheel" in t or "lock_hashes_keeps" in t
             or "mutation_run_scores" in t}
    assert len(index) == 3 and not offline & index and offline | index == everything
    assert not fast & index and any("test_scale.py" in t for t in offline)
    assert not any("test_scale.py" in t or "test_demo.py" in t for t in fast)
    assert len(fast) > 300
    workers = min(len(os.sched_getaffinity(0)), 4)
    dry = subprocess.run(["make", "-n", "test", f"VENV_ROOT={VENV_ROOT}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60).stdout
    assert (f"-n {workers} --dist loadgroup" in dry) is (workers > 1), dry
    # ruff runs before the tests (README/docs/testing.md: `make test` is ruff, then pytest).
    lines = dry.splitlines()
    ruff = [i for i, line in enumerate(lines) if "-m ruff check ." in line]
    pytest_at = [i for i, line in enumerate(lines) if "-m pytest" in line]
    assert ruff and pytest_at and ruff[0] < pytest_at[0], dry


@NOT_UNDER_MUTMUT
def test_make_lint_passes_on_the_repository_and_the_config_fails_a_finding(tmp_path):
    """`make lint` (run first by `make test`, so by CI) is clean on this tree, and the
    project's ruff configuration does fail a finding (an unused import, a bugbear loop
    variable): a lint step that passed whatever the code said would prove nothing."""
    proc = subprocess.run(["make", "--no-print-directory", "-s", "lint",
                           f"VENV_ROOT={VENV_ROOT}"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (tmp_path / "bad.py").write_text("import os\n\n\ndef f(xs):\n"
                                     "    return [lambda: x for x in xs]\n")
    bad = subprocess.run([sys.executable, "-m", "ruff", "check", "--config",
                          str(REPO / "pyproject.toml"), str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "F401" in bad.stdout and "B023" in bad.stdout, bad.stdout
