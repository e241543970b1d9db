"""provenance.json: where an artifact came from, as SLSA v1 provenance (an in-toto Statement),
in one file that the signature covers. Any SLSA/in-toto tool can read it; `verify-artifact`
checks its subjects against the files and its checkpoint against the checkpoint lock."""
from __future__ import annotations

import datetime as dt
import platform
import sys

from converters.protocol import package_version

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# This pipeline's build type (docs/artifact.md, "Provenance v1"): what externalParameters and
# resolvedDependencies hold for one manifest entry converted to ONNX.
BUILD_TYPE = "https://github.com/model-convert/model-convert/blob/main/README.md#provenance-v1"
BUILDER_ID = "https://github.com/model-convert/model-convert/pipeline.py"


class ProvenanceError(ValueError):
    """provenance.json is not the SLSA v1 statement this artifact needs; says what differs."""


def _subjects(report: dict) -> list[dict]:
    """The model files the artifact ships, with their digests (fp32 and passed variants)."""
    subjects = [{"name": "model.onnx", "digest": {"sha256": report["onnx"]["sha256"]}}]
    for variant in (report.get("variants") or {}).values():
        if variant.get("file"):
            subjects.append({"name": variant["file"], "digest": {"sha256": variant["sha256"]}})
    for name, digest in ((report.get("deploy") or {}).get("files") or {}).items():
        if not name.endswith(".onnx"):   # preprocess.json, labels.txt
            subjects.append({"name": name, "digest": {"sha256": digest}})
    return subjects


def build_provenance(report: dict, signer_key_id: str | None) -> dict:
    """An in-toto Statement with an SLSA v1 provenance predicate: the model files as subjects;
    the manifest entry and run options as external parameters; the checkpoint, the source tree
    commit and each environment's lock file as resolved dependencies; tool and framework
    versions with the builder; start and finish times."""
    checkpoint = report["source"]["checkpoint"]
    inputs = report.get("inputs") or {}
    parts = inputs.get("parts") or {}
    dependencies = [{
        "name": "checkpoint",
        "uri": checkpoint.get("url") or f"file://{checkpoint.get('path')}",
        "digest": {"sha256": checkpoint["sha256"]},
        "annotations": {key: checkpoint.get(key) for key in
                        ("pinned", "digest_check", "bytes", "layout", "demo", "note")
                        if checkpoint.get(key) is not None}}]
    commit = report["pipeline"]["git_commit"]
    if commit and commit != "unknown":
        sha, _, dirty = commit.partition("+")
        dependencies.append({"name": "source", "uri": "git+file://model-convert",
                             "digest": {"gitCommit": sha},
                             **({"annotations": {"uncommitted_changes": True}} if dirty else {})})
    for env, digest in sorted((parts.get("locks") or {}).items()):
        dependencies.append({"name": f"envs/{env}.lock.txt", "digest": {"sha256": digest}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(report),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "manifest_entry": report["entry"],
                    "precisions": parts.get("precisions"),
                    "dataset_sha256": parts.get("dataset_sha256"),
                    "options": parts.get("options"),
                },
                # Digest of every input (orchestrator/fingerprint.py): --skip-unchanged.
                "internalParameters": {"inputs": inputs,
                                       "signer_public_key_sha256": signer_key_id},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {
                    "python": sys.version.split()[0], "platform": platform.platform(),
                    **{pkg: package_version(pkg) for pkg in (
                        "onnx", "onnxruntime", "onnxsim", "onnxconverter-common", "numpy",
                        "model-signing")},
                    **{f"source:{k}": v for k, v in report["source"].get("versions", {}).items()}}},
                "metadata": {
                    "invocationId": report.get("run_id") or report["created"],
                    "startedOn": report["created"],
                    "finishedOn": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
            },
        },
    }


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise ProvenanceError(f"provenance.json: {what}")


def check_statement(statement: dict) -> None:
    """The fields SLSA v1 provenance requires, with their types (raises ProvenanceError).

    By hand, not with in-toto's library: in-toto-attestation 0.9.3 (in the environment, for
    model-signing) ships no SLSA provenance predicate, only scai, and its Statement.validate
    covers the envelope alone (type, a subject with a digest, a predicate type) with
    messages that do not say which subject ("Wrong statement type")."""
    _need(isinstance(statement, dict), "not a JSON object")
    _need(statement.get("_type") == STATEMENT_TYPE, f"_type is not {STATEMENT_TYPE}")
    _need(statement.get("predicateType") == PREDICATE_TYPE,
          f"predicateType is not {PREDICATE_TYPE}")
    subjects = statement.get("subject")
    _need(isinstance(subjects, list) and subjects, "subject must be a non-empty list")
    for subject in subjects:
        _need(isinstance(subject, dict) and isinstance(subject.get("name"), str)
              and isinstance(subject.get("digest"), dict) and subject["digest"],
              f"subject {subject!r} needs a name and a digest")
    predicate = statement.get("predicate") or {}
    build = predicate.get("buildDefinition") or {}
    _need(isinstance(build.get("buildType"), str) and ":" in build["buildType"],
          "predicate.buildDefinition.buildType must be a URI")
    _need(isinstance(build.get("externalParameters"), dict),
          "predicate.buildDefinition.externalParameters must be an object")
    for dep in build.get("resolvedDependencies") or []:
        _need(isinstance(dep, dict) and (dep.get("uri") or dep.get("digest") or
                                         dep.get("content")),
              f"resolvedDependency {dep!r} needs a uri, digest or content")
    run = predicate.get("runDetails") or {}
    _need(isinstance((run.get("builder") or {}).get("id"), str),
          "predicate.runDetails.builder.id must be a URI")
    for key in ("startedOn", "finishedOn"):
        value = (run.get("metadata") or {}).get(key)
        if value is not None:
            try:
                dt.datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise ProvenanceError(f"provenance.json: runDetails.metadata.{key} "
                                      f"{value!r} is not a timestamp") from None


def checkpoint_dependency(statement: dict) -> dict | None:
    for dep in statement["predicate"]["buildDefinition"].get("resolvedDependencies") or []:
        if dep.get("name") == "checkpoint":
            return dep
    return None
