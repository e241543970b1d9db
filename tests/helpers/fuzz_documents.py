"""Seeded fuzz campaign over the parsers of user documents: the manifest loader (mutations of
manifests/all.yaml and hostile YAML constructs), each dataset layout (val.txt, val_map.txt,
image folders) and the publisher's reading of an artifact's report.json.

Each input is either loaded whole (a mutation can leave a valid document: a cut at the end of
a line, a repeated comment) or refused with the parser's own error (ManifestError,
DatasetError; the publisher skips or refuses it and never publishes it), within its time
budget. Anything else (another exception, a hang, memory past the address space limit the
test sets) is a failure. The campaign is a fixed number of inputs per parser, so that a run
does the same work on a fast or a loaded machine. Prints the refused/loaded counts and one
line per failure, and exits 1 if any.

    python tests/helpers/fuzz_documents.py WORKDIR SEED INPUTS_PER_PARSER
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from manifests.loader import ManifestError, load_manifest  # noqa: E402
from release.publish import publish  # noqa: E402
from verify.dataset import DatasetError, load_dataset  # noqa: E402

PER_INPUT_S = 2.0
HOSTILE_YAML = [
    "&a [*a]", "[" * 3000, "{" * 3000, "a: !!python/object:os.system x", "? " * 2000,
    "x: &x " + "[" * 60 + "]" * 60, "*undefined", "%YAML 9.9\n---\na: 1", "\t\x00\x7f",
    "models: !!binary AAAA", "a: &a {b: *a}", "<<: *nothing", "models: [&m {}, *m, *m]",
]


def mutate_text(rng: random.Random, text: str) -> str:
    choice = rng.randrange(6)
    at = rng.randrange(len(text))
    if choice == 0:                      # flip a few characters
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            chars[rng.randrange(len(chars))] = chr(rng.randrange(1, 0x3000))
        return "".join(chars)
    if choice == 1:                      # cut
        return text[:at]
    if choice == 2:                      # a hostile construct spliced in
        return text[:at] + rng.choice(HOSTILE_YAML) + text[at:]
    if choice == 3:                      # a line repeated
        lines = text.splitlines()
        k = rng.randrange(len(lines))
        return "\n".join(lines[:k] + [lines[k]] * rng.randint(2, 50) + lines[k:])
    if choice == 4:                      # anchors and aliases on random lines
        lines = text.splitlines()
        for _ in range(rng.randint(1, 20)):
            k = rng.randrange(len(lines))
            lines[k] = lines[k] + rng.choice([" &a", " *a", " &b", " *b"])
        return "\n".join(lines)
    return rng.choice(HOSTILE_YAML) * rng.randint(1, 200)


def label_lines(rng: random.Random, names: list[str]) -> str:
    pieces = []
    for _ in range(rng.randint(0, 40)):
        name = rng.choice(names + ["../../etc/passwd", "", " ", "a\tb", "x" * 300, "\x00",
                                   "/abs.JPEG", "dup.JPEG", "dup.JPEG"])
        label = rng.choice(["1", "-1", "999999999999", "n01440764", "1.5", "", "0x10", "٣"])
        sep = rng.choice([" ", "\t", "  ", ""])
        pieces.append(f"{name}{sep}{label}")
    return "\n".join(pieces) + rng.choice(["", "\n", "\r\n"])


def run(work: Path, seed: int, inputs: int) -> tuple[dict, list[str]]:
    rng = random.Random(seed)
    manifest = (REPO / "manifests" / "all.yaml").read_text()
    failures, counts = [], {"manifest": 0, "dataset": 0, "report": 0}
    refused = {kind: 0 for kind in counts}

    def attempt(kind: str, fn, expected: tuple, label: str) -> None:
        counts[kind] += 1
        start = time.monotonic()
        try:
            fn()
        except expected:
            refused[kind] += 1
        except Exception as exc:  # noqa: BLE001 - exactly what the campaign looks for
            failures.append(f"{kind} #{counts[kind]} ({label}): {type(exc).__name__}: "
                            f"{str(exc)[:160]}")
        took = time.monotonic() - start
        if took > PER_INPUT_S:
            failures.append(f"{kind} #{counts[kind]} ({label}): took {took:.1f} s")

    for i in range(inputs):
        # Manifest loader.
        path = work / f"m{i}.yaml"
        path.write_text(mutate_text(rng, manifest), encoding="utf-8", errors="surrogatepass")
        attempt("manifest", lambda path=path: load_manifest(path), (ManifestError,), path.name)
        path.unlink()
        # Dataset layouts.
        root = work / f"d{i}"
        root.mkdir()
        names = []
        for k in range(rng.randint(0, 4)):
            name = rng.choice([f"ILSVRC2012_val_{k:08d}.JPEG", f"img{k}.png", "dup.JPEG"])
            (root / name).write_bytes(rng.randbytes(rng.randint(0, 64)))
            names.append(name)
        layout = rng.choice(["val.txt", "val_map.txt", "folders"])
        if layout == "folders":
            for k in range(rng.randint(0, 3)):
                folder = root / rng.choice(["n01440764", "n01443537", "cat", "1", ".hidden"])
                folder.mkdir(exist_ok=True)
                (folder / f"x{k}.JPEG").write_bytes(b"")
        else:
            (root / layout).write_text(label_lines(rng, names), encoding="utf-8")
        attempt("dataset", lambda root=root: load_dataset(root), (DatasetError,), f"{layout}")
        # An artifact's report.json, as the publisher reads it.
        out = work / f"o{i}"
        (out / "a").mkdir(parents=True)
        report = json.dumps({"name": "a", "passed": True, "checks": [[1] * 3]})
        cut = rng.randrange(len(report))
        hostile = rng.choice([report[:cut], report[:cut] + "[" * 5000, "{" * 100000,
                              '{"passed": true, "created": 5}', report.replace("true", "1"),
                              "\ufeff" + report, "null", "[]"])
        (out / "a" / "report.json").write_text(hostile)
        store = work / f"s{i}"
        # Every hostile report is unsigned or unreadable: the publisher must skip or refuse
        # it (a line in result.skipped/rejected), never raise, never publish.
        result = []
        attempt("report", lambda result=result, out=out, store=store: result.append(
            publish(out, store, REPO / "missing.pub", say=lambda _: None)), (), "report.json")
        if result and (result[0].published or not (result[0].skipped or result[0].rejected)):
            failures.append(f"report #{counts['report']}: neither skipped nor refused")
        elif result:
            refused["report"] += 1
        if store.exists() and any(p.name == "a" for p in store.iterdir()):
            failures.append(f"report #{counts['report']}: published a hostile artifact")
    summary = {kind: {"refused": refused[kind], "loaded": counts[kind] - refused[kind]}
               for kind in counts}
    print(f"fuzz_documents seed {seed}: {json.dumps(summary)}, {len(failures)} failure(s)")
    return summary, failures


if __name__ == "__main__":
    work, seed, inputs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    _, problems = run(work, seed, inputs)
    for line in problems[:50]:
        print("  ", line)
    sys.exit(1 if problems else 0)
