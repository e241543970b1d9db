"""Stage 5, before signing: make a passed artifact usable alone.

Every shipped model file gets the metadata of deploy/metadata.py (preprocessing contract,
labels, source, accuracy, pipeline), and the directory gets preprocess.json and labels.txt
beside them, all covered by the signature. Metadata changes only the file's
`metadata_props`, never the graph verified a moment earlier; the report's digests are
re-taken of the files that ship.
"""
from __future__ import annotations

import json
from pathlib import Path

from deploy.labels import resolve
from deploy.metadata import embed
from fetch.download import sha256_file

PREPROCESS_FILE = "preprocess.json"
LABELS_FILE = "labels.txt"


def _accuracy(entry, report: dict, precision: str) -> dict:
    published = entry.data.get("published")   # None: the source publishes no figure
    out = {"published": {"top1": published["top1"], "top5": published["top5"],
                         "reference": published["reference"]} if published else None}
    measured = (report.get("accuracy") or {}).get("onnx") if precision == "fp32" else \
        ((report.get("variants") or {}).get(precision) or {}).get("accuracy")
    if measured:
        out["measured"] = {"top1": measured["top1"], "top5": measured["top5"],
                           "images": measured["images"],
                           "dataset": (report.get("inputs") or {}).get("parts", {}).get(
                               "dataset_sha256")}
    return out


def make_deployable(entry, report: dict, files: dict[str, Path], workdir: Path
                    ) -> dict[str, Path]:
    """`files` (artifact name -> path) with metadata embedded in each model and the two
    documents added; updates report['onnx'], report['variants'] and report['deploy']."""
    spec = report["deploy"]["contract"]
    names, origin = resolve(entry.data.get("labels"), entry["num_classes"])
    checkpoint = report["source"]["checkpoint"]
    source = {"framework": entry.source, "model_id": entry["model_id"],
              "num_classes": entry["num_classes"], "checkpoint_sha256": checkpoint["sha256"],
              "checkpoint_url": checkpoint.get("url"), "manifest_name": entry.name}
    out: dict[str, Path] = {}
    shipped: dict[str, str] = {}
    for name, path in files.items():
        if not name.endswith(".onnx"):
            out[name] = path
            continue
        precision = "fp32" if name == "model.onnx" else name.split(".")[1]
        target = workdir / f"shipped-{name}"
        embed(path, target, {
            "preprocess": spec, "labels": names, "source": source,
            "accuracy": _accuracy(entry, report, precision),
            "pipeline": {"git_commit": report["pipeline"]["git_commit"],
                         "precision": precision, "run_id": report["run_id"],
                         "created": report["created"]}})
        digest, size = sha256_file(target), target.stat().st_size
        section = report["onnx"] if precision == "fp32" else report["variants"][precision]
        section["sha256_verified_graph"] = section["sha256"]
        section["sha256"], section["bytes"] = digest, size
        out[name] = target
        shipped[name] = digest
    (workdir / PREPROCESS_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    (workdir / LABELS_FILE).write_text("".join(n + "\n" for n in names), encoding="utf-8")
    for name in (PREPROCESS_FILE, LABELS_FILE):
        out[name] = workdir / name
        shipped[name] = sha256_file(workdir / name)
    report["deploy"]["labels"] = {"count": len(names), "source": origin}
    report["deploy"]["files"] = shipped
    return out
