"""Stage package, on the driver: the verdict (what decided it, in one line), and for a passed
entry the deployable metadata (release/contract_files.py: preprocess.json, labels), the
provenance, the signature and the artifact folder (release/artifact.py), written whole or
not at all. A failed or errored entry gets its report and worker log only."""
from __future__ import annotations

from pathlib import Path

from manifests.loader import Entry
from orchestrator.report import EntryReport
from orchestrator.stages.context import RunOptions, fmt
from release.artifact import write_artifact
from release.contract_files import make_deployable
from release.provenance import build_provenance
from release.signing import SIGNATURE, SigningError, sign_directory
from verify.compare import Check, failed


def decided_by(checks: list[Check], passed: bool, accuracy: dict | None = None,
               warnings: list[str] | None = None) -> str:
    bad = failed(checks)
    if bad:
        c = bad[0]
        where = (f"; first diverging layer {c.scope['first_diverging_layer']}"
                 if c.scope.get("first_diverging_layer") else "")
        return (f"{c.name} ({c.scope.get('model', '')}) {fmt(c.measured)} vs limit "
                f"{fmt(c.limit)}{where}")
    worst = max((c for c in checks if c.name == "max_abs_diff"), key=lambda c: c.measured,
                default=None)
    text = (f"max|diff| {fmt(worst.measured)} <= {fmt(worst.limit)}" if worst and passed
            else "no logit check ran")
    if accuracy:
        text += (f"; top-1 source {accuracy['source']['top1']:.2f}% / ONNX "
                 f"{accuracy['onnx']['top1']:.2f}% ({accuracy['source']['images']} images)")
    if passed and warnings:   # a pass whose gate power is not shown says so (verify/canary.py)
        text += f"; WARNING: {warnings[0]}"
    return text


def package(entry: Entry, report: EntryReport, artifact_files: dict[str, Path],
            files: dict[str, Path], workdir: Path, opts: RunOptions, say) -> None:
    """Writes the entry's artifact folder. A passed entry whose metadata or signature cannot
    be made becomes an error: fail closed, nothing ships without them."""
    if report.passed:
        try:
            artifact_files = make_deployable(entry, report.to_json(), artifact_files, workdir)
        except (OSError, ValueError) as exc:  # fail closed: nothing ships without its metadata
            report.fail("package", "metadata", f"{type(exc).__name__}: {exc}", status="error")
            say(f"  ERROR     [package/metadata] {exc}")
    if report.passed:
        try:
            artifact = _write_passed(entry, report, artifact_files, opts)
            if opts.signing_key:
                say(f"  sign      {artifact / 'model.sig'} (key {opts.signing_key_id[:12]})")
        except SigningError as exc:  # fail closed: no unsigned model when signing was asked
            # nothing unsigned ships: write_artifact dropped the staging folder whole
            report.fail("sign", "signing", str(exc), status="error")
            say(f"  ERROR     [sign/signing] {exc}")
    if not report.passed:
        write_artifact(opts.out_dir, entry.name, report.to_json(),
                       {k: v for k, v in files.items() if k == "worker.log"})


def _write_passed(entry: Entry, report: EntryReport, files: dict[str, Path],
                  opts: RunOptions) -> Path:
    """model.onnx + report.json + provenance.json, signed in staging when a key is given."""
    report.signature = ({"file": SIGNATURE, "public_key_sha256": opts.signing_key_id}
                        if opts.signing_key else None)
    provenance = build_provenance(report.to_json(), opts.signing_key_id)
    finalize = ((lambda staging: sign_directory(staging, opts.signing_key))
                if opts.signing_key else None)
    # The files are the driver's scratch (release/contract_files.py make_deployable wrote
    # them): moved into the artifact, not copied.
    return write_artifact(opts.out_dir, entry.name, report.to_json(), files,
                          documents={"provenance.json": provenance}, finalize=finalize,
                          move=True)
