"""One entry's report: what each stage filled in, typed, and the verdict in one place.

`EntryReport` is what the stages fill (orchestrator/stages/, one section each) and what
`to_json()` turns into report.json, with the keys and their order that docs/report.md
documents. A section that no stage reached is left out of report.json, as before; `error`
is always there (null when nothing failed), `signature` on a passed artifact (null when
unsigned). The sections inside stay the JSON their stage writes (their keys: docs/report.md);
the release code (release/provenance.py, release/contract_files.py, release/publish.py) reads
the JSON form, the same as a deployer reading an artifact.

The verdict (`passed`, `status`, `decided_by`) is set only through `decide` and `fail`, so
the three cannot disagree. Imports nothing outside the standard library.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Section = dict[str, Any]

STATUSES = ("passed", "failed", "error", "unsupported", "unavailable", "unchanged")


@dataclass
class ReportError:
    """What stopped the entry: the stage, the kind of failure, the message, and details
    (a traceback for an unforeseen one)."""
    stage: str
    kind: str
    message: str
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"stage": self.stage, "kind": self.kind, "message": self.message,
                "details": self.details}

    @property
    def decided_by(self) -> str:
        return f"{self.stage}: {self.kind}"


@dataclass
class EntryReport:
    name: str
    created: str                  # ISO time, UTC, seconds
    run_id: str                   # provenance's invocationId
    pipeline: Section             # {git_commit}
    entry: Section                # the manifest entry, with its derived fields once derived
    source: Section               # framework, model_id; checkpoint (fetch); versions, worker,
    #                               export_fixups (convert)
    timings: dict[str, Any] = field(default_factory=dict)   # stage -> seconds; worker: {...}
    checks: list[dict] = field(default_factory=list)        # verify.compare.Check.as_dict()
    error: ReportError | None = None
    derived: Section | None = None        # orchestrator/derive.py
    verification: Section | None = None   # stages fetch (images), verify, localize
    onnx: Section | None = None           # stage simplify; batch when exported at batch 1
    warnings: list[str] = field(default_factory=list)
    deploy: Section | None = None         # the preprocessing contract and its gate
    runtimes: Section | None = None       # the runtime matrix (orchestrator/runtimes.py)
    inputs: Section | None = None         # --data: what was read (orchestrator/fingerprint.py)
    accuracy: Section | None = None       # --data: the fp32 accuracy gate
    variants: Section | None = None       # fp16 / int8: per precision
    passed: bool = False
    status: str | None = None
    decided_by: str | None = None
    signature: Section | None = None      # set on a passed artifact (null: unsigned)

    def decide(self, status: str, decided_by: str) -> None:
        """The entry's verdict: `passed` follows from the status, never set apart from it."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.status, self.decided_by, self.passed = status, decided_by, status == "passed"

    def fail(self, stage: str, kind: str, message: str, details: dict | None = None,
             status: str | None = None) -> str:
        """Records what stopped the entry; returns what decided it ("stage: kind"). With a
        `status`, that is the verdict too (else the driver decides it later)."""
        self.error = ReportError(stage, kind, message, details or {})
        if status is not None:
            self.decide(status, self.error.decided_by)
        return self.error.decided_by

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    def to_json(self) -> dict:
        """report.json's object. Its sections are this report's own dicts, not copies:
        write it out, do not keep it (release/contract_files.py updates onnx, variants and
        deploy through it)."""
        out: dict[str, Any] = {
            "name": self.name, "passed": self.passed, "created": self.created,
            "run_id": self.run_id, "pipeline": self.pipeline, "entry": self.entry,
            "source": self.source, "checks": self.checks, "timings": self.timings,
            "error": self.error.to_json() if self.error else None}
        optional = {"derived": self.derived, "verification": self.verification,
                    "onnx": self.onnx, "warnings": self.warnings or None,
                    "deploy": self.deploy, "runtimes": self.runtimes, "inputs": self.inputs,
                    "accuracy": self.accuracy,
                    "variants": self.variants, "decided_by": self.decided_by,
                    "status": self.status}
        out.update((key, value) for key, value in optional.items() if value is not None)
        if self.status == "passed" or self.signature is not None:
            out["signature"] = self.signature
        return out
