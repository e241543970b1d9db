"""provenance.json: where an artifact came from, in one file that the signature covers."""
from __future__ import annotations

import datetime as dt
import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def package_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def build_provenance(report: dict, signer_key_id: str | None) -> dict:
    """Manifest entry as used, checkpoint, git commit, every tool and framework version."""
    return {
        "name": report["name"],
        "created": report["created"],
        "signed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "manifest_entry": report["entry"],
        "checkpoint": {key: report["source"]["checkpoint"].get(key) for key in
                       ("url", "path", "sha256", "pinned", "digest_check", "bytes", "layout",
                        "demo", "note")},
        "pipeline": {"git_commit": report["pipeline"]["git_commit"]},
        "source_framework": report["source"].get("versions", {}),
        "orchestrator": {
            "python": sys.version.split()[0], "platform": platform.platform(),
            **{pkg: package_version(pkg) for pkg in (
                "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "numpy",
                "model-signing")}},
        "onnx_sha256": report["onnx"]["sha256"],
        # Digest of every input (orchestrator/fingerprint.py): what --skip-unchanged compares.
        "inputs": report.get("inputs"),
        "signer_public_key_sha256": signer_key_id,
    }
