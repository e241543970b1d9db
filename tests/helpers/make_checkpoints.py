"""Make several checkpoints in one framework process, paying its imports once (the fixture
`checkpoints` in tests/conftest.py batches each framework's recipes this way).

    python tests/helpers/make_checkpoints.py MODULE JOBS.json

MODULE is a source's maker (converters.<source>.make_checkpoint); JOBS.json is a list of
argument lists for its main(), each writing its own --out.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

if __name__ == "__main__":
    maker = importlib.import_module(sys.argv[1])
    for argv in json.loads(Path(sys.argv[2]).read_text()):
        maker.main(argv)
