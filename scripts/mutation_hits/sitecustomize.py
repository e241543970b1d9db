"""Under `make mutation` only: tell mutmut which mutated functions a subprocess ran.

mutmut learns which tests reach a function by recording trampoline hits inside the pytest
process. Many fast tests reach the code through `python pipeline.py ...` subprocesses; their
hits were lost, so mutmut marked those functions "no tests" and never ran their mutants
(about half of all mutants on the first run, see docs/testing.md, "Mutation testing"). The mutant
itself always reached the subprocess (the MUTANT_UNDER_TEST variable is inherited); only the
attribution was missing.

tests/conftest.py puts this directory on PYTHONPATH while mutmut runs. In a subprocess that
runs in mutmut's stats phase, this file writes the functions it hit to MUTATION_HITS_DIR at
exit, and the conftest adds them to the running test's hits before mutmut's own teardown hook
reads them. It does nothing anywhere else: not outside mutmut, not while a mutant is tested,
and not in a framework's environment (no mutmut there, and nothing there is mutated).
"""
import os

if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("MUTATION_HITS_DIR"):
    try:
        import atexit
        import json
        import uuid

        from mutmut.configuration import config
        from mutmut.state import state
    except ImportError:
        pass
    else:
        # mutmut reads its configuration from ./pyproject.toml; a subprocess may start in any
        # directory, so load it once from the working copy's root.
        _cwd = os.getcwd()
        try:
            os.chdir(os.environ["MUTATION_ROOT"])
            config()
        finally:
            os.chdir(_cwd)

        def _write_hits() -> None:
            hits = sorted(state()._stats)
            if not hits:
                return
            folder = os.environ["MUTATION_HITS_DIR"]
            name = os.path.join(folder, f"{os.getpid()}-{uuid.uuid4().hex}")
            with open(name + ".part", "w", encoding="utf-8") as fh:
                json.dump(hits, fh)
            os.replace(name + ".part", name + ".json")

        atexit.register(_write_hits)
