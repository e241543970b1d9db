"""A checkpoint maker for testing scripts/checkpoint_jobs.py's process handling (no
framework: what is tested is the runner's handling of each way a maker can end).

    main(["--out", PATH, "--do", "write" | "cannot" | "raise" | "exit" | "die" | "hang"])
"""
from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from converters.checkpoint_batch import CannotBuild


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--do", default="write")
    args = parser.parse_args(argv)
    print(f"making {args.out.name}")   # a maker's own output: must not reach the protocol
    if args.do == "cannot":
        raise CannotBuild(f"the source cannot build {args.out.stem}")
    if args.do == "raise":
        raise ValueError(f"bad weights in {args.out.stem}")
    if args.do == "exit":
        raise SystemExit(f"--arch refused for {args.out.stem}")
    if args.do == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if args.do == "hang":
        time.sleep(3600)
    if args.do != "nothing":
        args.out.write_bytes(b"weights of " + args.out.stem.encode())
