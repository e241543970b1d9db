#!/usr/bin/env python
"""int8 build: onnxruntime's percentile calibrator vs the pipeline's in-graph percentile
ranges; and the time `pipeline.py localize` takes on each model.

For each demo entry (one per source; `make demo` makes the checkpoints) it runs the pipeline
once with --keep-work to get what a real run calibrates on: the simplified fp32 model, the
calibration images preprocessed by the source's own transforms, the logit-check tensors and
the source's logits on them. Then it builds int8 twice from the same data, with
onnxruntime's own calibrator (2048-bin histograms in numpy) and with converters/variants.py's
in-graph ranges, and measures for each: build seconds, cosine_min and top-1 agreement against
the source's logits (the gates' figures), and the two int8 models against each other. Then it
times `pipeline.py localize` (source capture + layer comparison) on the fp32 model. Prints a
table, writes JSON.

    make bench-int8 [CALIBRATION_IMAGES=256]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from converters.variants import make_int8  # noqa: E402
from verify.ort_runner import OrtRunner  # noqa: E402

DEMO = {"res2net50-w14-s8": "demo/res2net50-w14-s8.pth",
        "paddleclas-res2net50-14w-8s": "demo/paddleclas-res2net50-14w-8s.pdparams",
        "mindcv-res2net50": "demo/mindcv-res2net50.ckpt"}


def _figures(out: np.ndarray, ref: np.ndarray) -> dict:
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    return {"cosine_min": round(float(cos.min()), 5),
            "top1_agreement": round(float((out.argmax(1) == ref.argmax(1)).mean()), 4)}


def prepare(name: str, images: int, tmp: Path) -> dict[str, Path]:
    """One pipeline run with --keep-work: the files a real int8 build starts from."""
    entry = {e["name"]: e for e in yaml.safe_load(
        (REPO / "manifests" / "all.yaml").read_text())["models"]}[name]
    entry.setdefault("variants", {}).setdefault("int8", {})["calibration_images"] = images
    manifest = tmp / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump({"version": 1, "models": [entry]}, sort_keys=False))
    work = tmp / f"work-{name}"
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "--manifest", str(manifest),
                           "--only", name, "--checkpoint", f"{name}={REPO / DEMO[name]}",
                           "--out", str(tmp / "out"), "--precisions", "fp32,int8",
                           "--keep-work"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MODEL_CONVERT_WORK": str(work)})
    if proc.returncode != 0:
        raise SystemExit(f"{name}: pipeline failed\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    files = {}
    for key, pattern in (("model", "model.onnx"), ("calibration", "calibration.npy"),
                         ("inputs", "inputs.npy"), ("reference", "reference_logits.npy")):
        found = sorted(work.rglob(pattern))
        if not found:
            raise SystemExit(f"{name}: no {pattern} under {work}")
        files[key] = found[0]
    return files


def measure(args, rows: list, tmp: Path) -> None:
    """Rows for each entry: both int8 builds from the same files, and the localize time."""
    for name in args.entries.split(","):
        if not (REPO / DEMO[name]).is_file():
            raise SystemExit(f"{DEMO[name]} missing: run `make demo` once first")
        files = prepare(name, args.calibration_images, tmp)
        calibration = np.load(files["calibration"])
        inputs, reference = np.load(files["inputs"]), np.load(files["reference"])
        cfg = {"calibration": "percentile", "percentile": 99.999}
        outs = {}
        for label, fast in (("onnxruntime", False), ("in-graph", True)):
            path = tmp / f"{name}-{label}.int8.onnx"
            start = time.perf_counter()
            make_int8(files["model"], path, calibration, cfg, in_graph_percentile=fast)
            seconds = time.perf_counter() - start
            outs[label] = OrtRunner(path).infer(inputs, len(inputs))
            rows.append({"entry": name, "ranges": label, "build_s": round(seconds, 1),
                         "calibration_images": len(calibration),
                         **_figures(outs[label], reference)})
        same = _figures(outs["in-graph"], outs["onnxruntime"])
        rows[-1]["vs_onnxruntime_int8"] = same
        rows[-1]["speedup"] = round(rows[-2]["build_s"] / rows[-1]["build_s"], 2)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "localize",
                               str(files["model"]), "--model", name, "--checkpoint",
                               str(REPO / DEMO[name])], cwd=REPO, capture_output=True, text=True)
        localize_s = round(time.perf_counter() - start, 1)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{name}: localize failed\n{proc.stdout}{proc.stderr[-2000:]}")
        rows[-1]["localize_s"] = rows[-2]["localize_s"] = localize_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--entries", default=",".join(DEMO))
    parser.add_argument("--json", type=Path, default=REPO / "bench-int8.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as scratch:
        measure(args, rows, Path(scratch))
    args.json.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2)
                         + "\n")
    print(f"\n{'entry':<30} {'ranges':<12} {'build s':>8} {'speedup':>8} "
          f"{'cosine_min':>10} {'top1 agree':>10} {'in-graph vs ORT int8 (cos, top1)':>32} "
          f"{'localize s':>10}")
    for r in rows:
        same = r.get("vs_onnxruntime_int8")
        ort_figures = (f"{same['cosine_min']}, {same['top1_agreement']}" if same else "")
        print(f"{r['entry']:<30} {r['ranges']:<12} {r['build_s']:>8} "
              f"{r.get('speedup', ''):>8} {r['cosine_min']:>10} {r['top1_agreement']:>10} "
              f"{ort_figures:>32} "
              f"{r['localize_s'] if same else '':>10}")
    print(f"\n{rows[0]['calibration_images']} calibration images per entry; wrote {args.json}")


if __name__ == "__main__":
    main()
