"""Publish signed, passed artifacts into a store, safely under crashes and concurrency.

    STORE/NAME/<version>/{model.onnx, report.json, provenance.json, model.sig}
    STORE/index.json, STORE/index.md

A version directory holds exactly the signed files, so `model_signing verify key` accepts the
published copy too; its publish time is the directory's mtime.

- Every signature is verified before anything is copied.
- <version> = report creation time + the first 12 hex of model.sig's sha256, so the same
  artifact always maps to the same version and publishing it twice changes nothing.
- Each version is copied into a hidden staging directory, flushed, and renamed into place:
  a reader never sees a half-copied version.
- index.json/index.md are rebuilt from the versions present and replaced atomically (write,
  fsync, rename), so a publisher killed at any moment leaves the old index or the new one,
  and the next publish heals whatever the killed one did not finish.
- An exclusive flock on STORE/.lock serialises publishers; the kernel drops it when a
  publisher dies, so a kill never leaves the store locked.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from manifests.bounded import read_json
from release.signing import SIGNATURE, SigningError, links_in, verify_directory

ARTIFACT_FILES = ("model.onnx", "report.json", "provenance.json", SIGNATURE)
# Crash tests set this to widen the window between steps (seconds); never set in normal use.
_STEP_DELAY = float(os.environ.get("MODEL_CONVERT_PUBLISH_STEP_DELAY", "0") or 0)


@dataclass
class PublishResult:
    published: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)      # "NAME: why"
    rejected: list[str] = field(default_factory=list)     # signature or content problems
    removed: list[str] = field(default_factory=list)      # by retention


def _pause() -> None:
    if _STEP_DELAY:
        time.sleep(_STEP_DELAY)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextmanager
def store_lock(store: Path, say=print):
    """STORE/.lock held exclusively; says so when another publisher holds it and it waits."""
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting: another publisher holds {store / '.lock'}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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


def publish(source: Path, store: Path, public_key: Path, keep: int | None = None,
            say=print) -> PublishResult:
    result = PublishResult()
    if not source.is_dir():
        raise FileNotFoundError(f"--from {source} is not a directory")
    with store_lock(store, say):
        for stale in store.glob(".staging-*"):  # left by a killed publisher; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        for artifact, report in _candidates(source, result, say):
            name = artifact.name
            try:
                verify_directory(artifact, public_key)
            except SigningError as exc:
                result.rejected.append(f"{name}: {exc}")
                say(f"  reject    {exc}")
                continue
            if (store / name).is_symlink():
                result.rejected.append(f"{name}: {store / name} in the store is a symbolic "
                                       "link; not followed, nothing published through it")
                say(f"  reject    {result.rejected[-1]}")
                continue
            version = version_of(artifact, report)
            final = store / name / version
            if final.is_dir():
                result.unchanged.append(f"{name}/{version}")
                say(f"  same      {name}/{version} is already published")
                continue
            staging = store / f".staging-{uuid.uuid4().hex}"
            staging.mkdir()
            for file_name in ARTIFACT_FILES:
                shutil.copyfile(artifact / file_name, staging / file_name)
                _pause()
            _fsync_tree(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(final)
            result.published.append(f"{name}/{version}")
            say(f"  publish   {name}/{version}")
            _pause()
        if keep is not None:
            result.removed = _retain(store, keep)
            for gone in result.removed:
                say(f"  retire    {gone} (keeping the newest {keep})")
        write_index(store)
    return result


def _real_dirs(folder: Path) -> list[Path]:
    """Visible subdirectories, symbolic links left out (never followed: a link could point
    anywhere outside the store)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and not p.is_symlink() and p.is_dir())


def _versions(store: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for model in _real_dirs(store):
        # Versions appear only by rename from staging, so every visible one is complete.
        versions = _real_dirs(model)
        if versions:
            out[model.name] = versions
    return out


def _retain(store: Path, keep: int) -> list[str]:
    removed = []
    for name, versions in _versions(store).items():
        for old in versions[:-keep] if keep > 0 else versions:
            trash = store / f".staging-trash-{uuid.uuid4().hex}"
            old.rename(trash)  # invisible at once; deleted below (or by the next publisher)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(f"{name}/{old.name}")
    return removed


def _figure(report: dict, name: str, model: str = "simplified"):
    for check in report.get("checks", []):
        if check["name"] == name and check.get("scope", {}).get("model") == model:
            return check
    return None


def _index_row(name: str, version: Path) -> dict:
    report = read_json(version / "report.json")
    published = dt.datetime.fromtimestamp(version.stat().st_mtime, dt.timezone.utc)
    worst = _figure(report, "max_abs_diff")
    cosine = _figure(report, "cosine_min")
    accuracy = report.get("accuracy")
    return {
        "name": name, "version": version.name, "source": report["source"]["framework"],
        "model_id": report["source"]["model_id"],
        "precision": "+".join(["fp32", *(p for p, v in (report.get("variants") or {}).items()
                                         if v.get("file"))]),
        "model_sha256": report["onnx"]["sha256"],
        "signature": f"{name}/{version.name}/{SIGNATURE}",
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
        "created": report["created"], "published": published.isoformat(timespec="seconds"),
    }


def write_index(store: Path) -> list[dict]:
    rows = [_index_row(name, version)
            for name, versions in _versions(store).items() for version in versions]
    _write_atomic(store / "index.json", json.dumps(
        {"generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
         "artifacts": rows}, indent=2) + "\n")
    _write_atomic(store / "index.md", render_markdown(rows))
    return rows


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
