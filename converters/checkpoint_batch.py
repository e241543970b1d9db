"""Make several checkpoints in one framework process, paying the framework's imports once
(8-12 s of a small model's checkpoint here). Runs inside a framework environment:

    python -m converters.checkpoint_batch MODULE JOBS.json

MODULE is a source's maker (converters.<source>.make_checkpoint); JOBS.json is a list of
argument lists for its main(), each writing its own --out. Stdout carries one JSON line
when a job starts and one when it ends, nothing else (the makers' own output goes to
stderr), so that a caller can time each job, stop one that runs too long, and go on with the
rest in a new process:

    {"job": 0, "event": "start"}
    {"job": 0, "event": "done" | "cannot_build" | "error", "message": "..."}

"cannot_build": the source's own code cannot build or run the model here (the maker's
CannotBuild, the exit status CANNOT_BUILD when it runs alone). Exit status 0 when every
job was done, 1 otherwise. Each job reseeds the framework itself (its maker's --seed): a
checkpoint made here after other models is the one made alone, byte for byte
(tests/test_zoo.py's sweep test checks it for each source).
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

CANNOT_BUILD = 3   # exit status of a maker run alone: the source's own code failed


class CannotBuild(SystemExit):
    """The source's own code cannot build or run the model here: unsupported, not an error
    of the maker. Alone, the maker exits with CANNOT_BUILD after an `unsupported:` line."""

    def __init__(self, message: str):
        super().__init__(CANNOT_BUILD)
        self.message = message


def cannot(framework: str, what: str, exc: Exception) -> None:
    """The source's own code failed, so the model is unsupported here (as the worker says):
    raises CannotBuild, which scripts/zoo_sweep.py reads through run_jobs (alone: exit
    status CANNOT_BUILD after an `unsupported:` line)."""
    from converters.worker_flow import source_failure

    message = source_failure(framework, what, exc)
    print(f"unsupported: {message}", file=sys.stderr)
    raise CannotBuild(message) from None


def run_jobs(maker, jobs: list[list[str]], emit) -> bool:
    ok = True
    for number, argv in enumerate(jobs):
        emit({"job": number, "event": "start"})
        event: dict = {"job": number, "event": "done"}
        try:
            maker.main(argv)
        except SystemExit as exc:   # CannotBuild (by its code: run with -m, this module is
            if exc.code == CANNOT_BUILD and hasattr(exc, "message"):   # __main__ too), argparse
                event.update(event="cannot_build", message=exc.message)
            elif exc.code not in (0, None):   # or a maker's own refusal
                event.update(event="error", message=f"exit status {exc.code}" if isinstance(
                    exc.code, int) else str(exc.code))
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the rest
            traceback.print_exc()
            event.update(event="error", message=f"{type(exc).__name__}: {exc}")
        ok &= event["event"] == "done"
        emit(event)
        gc.collect()
    return ok


def main(argv=None) -> int:
    module, jobs_file = argv if argv is not None else sys.argv[1:]
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # the makers' prints and the frameworks' C++ logs: stderr

    def emit(event: dict) -> None:
        channel.write(json.dumps(event) + "\n")

    maker = importlib.import_module(module)
    return 0 if run_jobs(maker, json.loads(Path(jobs_file).read_text()), emit) else 1


if __name__ == "__main__":
    sys.exit(main())
