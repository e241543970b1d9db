#!/usr/bin/env python
"""Convert image-classifier checkpoints to verified ONNX artifacts: the command line.

`python pipeline.py --help` says what it does; the commands live in commands/ (convert: the
run itself; artifacts: verify-artifact, publish, predict, keygen; tools: bench,
lock-checkpoints, localize, add, list-models).
"""
from __future__ import annotations

import commands.artifacts  # noqa: F401 - registers its commands on cli
import commands.tools  # noqa: F401 - registers its commands on cli
from commands.convert import cli

if __name__ == "__main__":
    cli()  # pylint: disable=no-value-for-parameter
