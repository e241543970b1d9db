"""Publish signed, passed artifacts into a store, safely under crashes and concurrency.

    STORE/NAME/<version>/<every file of the signed artifact>
    STORE/index.json, STORE/index.md

STORE is a folder or an s3:// URL (release/store.py: how each keeps the guarantees below).
A version holds exactly the artifact's signed files (models, contract, labels, report,
provenance, signature), so `verify-artifact` and `model_signing verify key` accept the
published copy too.

- Every signature is verified before anything is copied.
- <version> = report creation time + the first 12 hex of model.sig's sha256, so the same
  artifact always maps to the same version and publishing it twice changes nothing.
- A version becomes visible only when all its files are in the store.
- index.json/index.md are rebuilt from the versions present and replaced atomically, so a
  publisher killed at any moment leaves the old index or the new one, and the next publish
  heals whatever the killed one did not finish.
- Concurrent publishers never corrupt the index (a lock on a folder, a conditional write on
  S3), and a killed publisher never leaves the store locked.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from manifests.bounded import read_json
from release.signing import SIGNATURE, SigningError, links_in, verify_directory
from release.store import open_store, pause


@dataclass
class PublishResult:
    published: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)      # "NAME: why"
    rejected: list[str] = field(default_factory=list)     # signature or content problems
    removed: list[str] = field(default_factory=list)      # by retention


def version_of(artifact: Path, report: dict) -> str:
    created = dt.datetime.fromisoformat(report["created"]).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256((artifact / SIGNATURE).read_bytes()).hexdigest()[:12]
    return f"{created}-{digest}"


def _candidates(source: Path, result: PublishResult, say):
    """Visible artifact directories of OUT that are passed and signed."""
    for artifact in sorted(p for p in source.iterdir()
                           if p.is_dir() and not p.name.startswith(".")):
        links = links_in(artifact)
        if links:   # checked before anything in it is read
            result.rejected.append(f"{artifact.name}: holds symbolic links, which are never "
                                   f"followed or published: {', '.join(links[:5])}")
            say(f"  reject    {result.rejected[-1]}")
            continue
        report_path = artifact / "report.json"
        if not report_path.is_file():
            result.skipped.append(f"{artifact.name}: no report.json")
            continue
        try:
            report = read_json(report_path, f"{artifact.name}/report.json")
        except (OSError, ValueError) as exc:   # DocumentTooLarge and bad JSON included
            result.skipped.append(f"{artifact.name}: report.json unreadable: {exc}")
            continue
        if not isinstance(report, dict):
            result.skipped.append(f"{artifact.name}: report.json unreadable: a JSON "
                                  f"{type(report).__name__}, not an object")
            continue
        if report.get("passed") is not True:
            result.skipped.append(f"{artifact.name}: did not pass "
                                  f"({report.get('decided_by', 'see its report')})")
            continue
        if not (artifact / SIGNATURE).is_file():
            result.skipped.append(f"{artifact.name}: not signed (run with --signing-key)")
            continue
        yield artifact, report


def signed_files(artifact: Path) -> list[str]:
    """The artifact's regular files: what its signature covers, and what a version holds."""
    return sorted(p.name for p in artifact.iterdir()
                  if p.is_file() and not p.is_symlink() and not p.name.startswith("."))


def publish(source: Path, store, public_key: Path, keep: int | None = None,
            say=print) -> PublishResult:
    """Publish OUT's passed, signed artifacts into STORE (a path or URL, or an opened store).
    Raises StoreError when the store cannot be used (nothing is published then, and nothing
    in OUT is touched), FileNotFoundError when OUT is not a folder."""
    result = PublishResult()
    if not source.is_dir():
        raise FileNotFoundError(f"--from {source} is not a directory")
    store = open_store(store)
    with store.session(say):
        for artifact, report in _candidates(source, result, say):
            name = artifact.name
            try:
                verify_directory(artifact, public_key)
            except SigningError as exc:
                result.rejected.append(f"{name}: {exc}")
                say(f"  reject    {exc}")
                continue
            refused = store.refuses(name)
            if refused:
                result.rejected.append(f"{name}: {refused}")
                say(f"  reject    {result.rejected[-1]}")
                continue
            version = version_of(artifact, report)
            if store.has(name, version):
                result.unchanged.append(f"{name}/{version}")
                say(f"  same      {name}/{version} is already published")
                continue
            store.put(name, version, artifact, signed_files(artifact))
            result.published.append(f"{name}/{version}")
            say(f"  publish   {name}/{version}")
            pause()
        if keep is not None:
            result.removed = _retain(store, keep)
            for gone in result.removed:
                say(f"  retire    {gone} (keeping the newest {keep})")
        write_index(store, say)
    return result


def _retain(store, keep: int) -> list[str]:
    removed = []
    for name, versions in store.versions().items():
        for old in versions[:-keep] if keep > 0 else versions:
            store.retire(name, old)
            removed.append(f"{name}/{old}")
    return removed


def _figure(report: dict, name: str, model: str = "simplified"):
    for check in report.get("checks", []):
        if check["name"] == name and check.get("scope", {}).get("model") == model:
            return check
    return None


def _index_row(store, name: str, version: str) -> dict:
    report = store.read_json(name, version, "report.json")
    published = store.published_at(name, version)
    worst = _figure(report, "max_abs_diff")
    cosine = _figure(report, "cosine_min")
    accuracy = report.get("accuracy")
    return {
        "name": name, "version": version, "source": report["source"]["framework"],
        "model_id": report["source"]["model_id"],
        "precision": "+".join(["fp32", *(p for p, v in (report.get("variants") or {}).items()
                                         if v.get("file"))]),
        "model_sha256": report["onnx"]["sha256"],
        "signature": f"{name}/{version}/{SIGNATURE}",
        "public_key_sha256": (report.get("signature") or {}).get("public_key_sha256"),
        "logits": {"max_abs_diff": worst and worst["measured"],
                   "limit": worst and worst["limit"],
                   "cosine_min": cosine and cosine["measured"]},
        "accuracy": accuracy and {
            "source": accuracy["source"], "onnx": accuracy["onnx"],
            "disagree": accuracy["disagree"], "unreadable": accuracy.get("unreadable", 0),
            "dataset": {k: accuracy["dataset"].get(k) for k in ("layout", "images", "selected")},
            "published": accuracy.get("published")},
        "checkpoint_pinned": report["source"]["checkpoint"].get("pinned"),
        "demo_checkpoint": bool(report["source"]["checkpoint"].get("demo")),
        # What --skip-unchanged compares (orchestrator/fingerprint.py), read from the index.
        "inputs_fingerprint": (report.get("inputs") or {}).get("fingerprint"),
        "created": report["created"], "published": published.isoformat(timespec="seconds"),
    }


def write_index(store, say=print) -> list[dict]:
    """Rebuild STORE's index.json and index.md from the versions present."""
    store = open_store(store)

    def build():
        rows = [_index_row(store, name, version)
                for name, versions in store.versions().items() for version in versions]
        text = json.dumps({"generated": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"), "artifacts": rows}, indent=2) + "\n"
        return rows, text

    return store.write_index(build, render_markdown, say)


def _acc(accuracy: dict | None, side: str) -> str:
    if not accuracy or side not in accuracy:
        return "not measured"
    return (f"{accuracy[side]['top1']:.2f} / {accuracy[side]['top5']:.2f} "
            f"({accuracy[side]['images']} images)")


def render_markdown(rows: list[dict]) -> str:
    lines = ["# Published ONNX models", "",
             "| model | version | source | precision | top-1/top-5 source | top-1/top-5 ONNX "
             "| worst logit diff (limit) | signed | checkpoint | when |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        logits = row["logits"]
        diff = (f"{logits['max_abs_diff']:.2e} ({logits['limit']:.2e})"
                if logits["max_abs_diff"] is not None else "n/a")
        checkpoint = ("demo (random init)" if row["demo_checkpoint"] else
                      "pinned" if row["checkpoint_pinned"] else "not the pinned file")
        lines.append(
            f"| {row['name']} | {row['version']} | {row['source']} | {row['precision']} "
            f"| {_acc(row['accuracy'], 'source')} | {_acc(row['accuracy'], 'onnx')} | {diff} "
            f"| yes, key {str(row['public_key_sha256'])[:12]} | {checkpoint} "
            f"| {row['published']} |")
    if not rows:
        lines.append("| (nothing published yet) | | | | | | | | | |")
    return "\n".join(lines) + "\n"
