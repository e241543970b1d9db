"""A stand-in worker that holds memory, for the worker memory limit (converters/runner.py).

    python -m tests.helpers.memory_hog WORKDIR/job.json

job.json: {"mb": how much to hold, "in_child": hold it in a child process instead}. It
touches the memory 20 MB at a time, then writes result.json {"ok": true} as a worker does.
"""
import json
import subprocess
import sys
import time
from pathlib import Path


def hold(mb: int) -> list:
    chunks = []
    for _ in range(0, mb, 20):
        chunks.append(bytearray(b"\1" * (20 * 2**20)))   # written, so resident
        time.sleep(0.01)
    time.sleep(0.5)
    return chunks


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    if job.get("in_child"):
        subprocess.run([sys.executable, "-c",
                        f"import tests.helpers.memory_hog as m; m.hold({job['mb']})"],
                       check=True)
    else:
        hold(job["mb"])
    (Path(job_path).parent / "result.json").write_text(json.dumps({"ok": True}))


if __name__ == "__main__":
    main(sys.argv[1])
