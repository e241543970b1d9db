"""Feed a source's checkpoint reader random byte strings; every one must be refused as a
format error, or as unsafe when the bytes happen to parse as a pickle that asks for a global
off the allow-list (never an internal error, never loaded). Seeded, so a failure reproduces.
Runs in that source's environment.

    python tests/helpers/fuzz_loader.py SOURCE WORKDIR COUNT
"""
import os
import sys
from pathlib import Path

from converters.protocol import WorkerError


def reader(source):
    if source == "mmpretrain":
        from converters.mmpretrain.checkpoint import load_checkpoint
        return load_checkpoint
    if source == "paddleclas":
        from converters.paddleclas.checkpoint import load_pdparams
        return load_pdparams
    from converters.mindcv.checkpoint import load_ckpt
    return lambda path: load_ckpt(path, set())


def main(source, workdir, count):
    load = reader(source)
    rng = __import__("random").Random(1234)
    prefixes = [b"", b"\x80\x04\x95", b"\x80\x02}q\x00", b"PK\x03\x04", b"\n\x0c", b"\x0a"]
    bad = []
    for i in range(int(count)):
        path = Path(workdir) / f"{source}-{i}.bin"
        size = rng.choice([1, 7, 64, 513, 4096, 70000])
        path.write_bytes(rng.choice(prefixes) + rng.randbytes(size))
        try:
            load(path)
            bad.append((i, "loaded"))
        except WorkerError as exc:
            if exc.kind not in ("checkpoint_format", "checkpoint_unsafe"):
                bad.append((i, exc.kind, exc.message[:120]))
        except Exception as exc:  # noqa: BLE001 - exactly what the test is looking for
            bad.append((i, type(exc).__name__, str(exc)[:120]))
    print(f"{source}: {count} random files, {len(bad)} not refused as format errors")
    for item in bad:
        print("  ", item)
    sys.stdout.flush()
    os._exit(1 if bad else 0)


if __name__ == "__main__":
    main(*sys.argv[1:])
