"""Feed a source's checkpoint reader random byte strings; every one must be refused as a
format error, or as unsafe when the bytes happen to parse as a pickle that asks for a global
off the allow-list (never an internal error, never loaded). Seeded, so a failure reproduces.
Runs in that source's environment.

    python tests/helpers/fuzz_loader.py SOURCE WORKDIR COUNT
    python tests/helpers/fuzz_loader.py SOURCE WORKDIR hostile   (crafted files, budgets)
"""
import os
import sys
import time
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


BUDGET_S = 20.0                    # per hostile input
BUDGET_RSS = 3 * 2**30             # peak resident memory of this process, all inputs


def deep_pickle(depth: int = 200_000) -> bytes:
    """Lists nested `depth` deep, built by the unpickler's own stack (MARK ... LIST)."""
    return b"\x80\x02" + b"(" * depth + b"l" * depth + b"."


def hostile_files(source: str, workdir: Path) -> dict[str, Path]:
    """Crafted inputs per reader: nesting, declared sizes and shapes that lie."""
    import pickle
    import zipfile

    files = {}

    def put(name: str, data: bytes) -> None:
        files[name] = workdir / f"hostile-{name}"
        files[name].write_bytes(data)

    put("deep-pickle", deep_pickle())
    if source == "mmpretrain":
        import torch

        good = workdir / "good.pth"
        torch.save({"state_dict": {"w": torch.ones(4)}}, good)
        data = bytearray(good.read_bytes())
        # Every central-directory record claims a 2 GB member.
        at = 0
        while (at := data.find(b"PK\x01\x02", at)) >= 0:
            data[at + 20:at + 28] = (0x7FFFFFFF).to_bytes(4, "little") * 2
            at += 4
        put("zip-lying-sizes", bytes(data))
        # A member whose local header declares a 2 GB deflated entry.
        with zipfile.ZipFile(workdir / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("archive/data.pkl", b"\0" * (64 * 2**20))
        put("zip-deflate-bomb", (workdir / "bomb.zip").read_bytes())
        # 10^10 elements declared over a 4-element storage (as_strided view and a plain one).
        torch.save({"w": torch.ones(4).as_strided((100_000, 100_000), (0, 0))},
                   workdir / "view.pth")
        put("huge-shape-view", (workdir / "view.pth").read_bytes())
        # The pickle inside the archive altered after the fact (its CRC no longer matches).
        text = bytearray((workdir / "view.pth").read_bytes())
        put("zip-member-altered", bytes(text).replace(b"K\x00K\x00", b"K\x01K\x00", 1))
    elif source == "paddleclas":
        import numpy as np

        class Lying:
            def __reduce__(self):
                return (np.ndarray.__reduce__(np.zeros(0))[0], (np.ndarray, (0,), b"b"),
                        (1, (100_000, 100_000), np.dtype("float32"), False, b"\0" * 16))

        put("huge-shape", pickle.dumps({"w": Lying()}, protocol=2))
        put("huge-bytes-length", b"\x80\x02}q\x00X\x01\x00\x00\x00wB\xff\xff\xff\x7f")
    else:
        from mindspore.train import checkpoint_pb2

        ckpt = checkpoint_pb2.Checkpoint()
        value = ckpt.value.add()
        value.tag = "w"
        value.tensor.dims.extend([100_000, 100_000])
        value.tensor.tensor_type = "Float32"
        value.tensor.tensor_content = b"\0" * 16
        put("huge-dims", ckpt.SerializeToString())
        # A length-delimited field that declares 2 GB and ends after 3 bytes.
        put("huge-length", b"\x0a\xff\xff\xff\xff\x07abc")
    return files


def hostile(source, workdir):
    """Each crafted file: a format error (or unsafe), within the time and memory budget."""
    import resource

    load = reader(source)
    bad = []
    for name, path in hostile_files(source, Path(workdir)).items():
        start = time.monotonic()
        outcome = "loaded"
        try:
            load(path)
            bad.append((name, "loaded"))
        except WorkerError as exc:
            outcome = f"{exc.kind}: {exc.message[:90]}"
            if exc.kind not in ("checkpoint_format", "checkpoint_unsafe"):
                bad.append((name, exc.kind, exc.message[:160]))
        except BaseException as exc:  # noqa: BLE001 - exactly what the test is looking for
            bad.append((name, type(exc).__name__, str(exc)[:160]))
        took = time.monotonic() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"  {name}: {took:.2f} s, peak {peak / 2**20:.0f} MiB, {outcome}")
        if took > BUDGET_S:
            bad.append((name, f"took {took:.1f} s"))
        if peak > BUDGET_RSS:
            bad.append((name, f"peak memory {peak / 2**30:.1f} GiB"))
    print(f"{source}: {len(bad)} hostile file(s) not refused within budget")
    for item in bad:
        print("  ", item)
    sys.stdout.flush()
    os._exit(1 if bad else 0)


def main(source, workdir, count):
    if count == "hostile":
        return hostile(source, workdir)
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
