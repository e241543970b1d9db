"""One error type (converters/protocol.py PipelineError): every stage's expected failure is
one, with kind, message and details, and survives pickling whole (a Ray task's error)."""
from __future__ import annotations

import pickle

import pytest

from converters.protocol import PipelineError, WorkerError
from converters.runner import WorkerFailed
from converters.simplify import OnnxCheckFailed
from fetch.download import FetchError
from orchestrator.accuracy import AccuracyFailed
from orchestrator.derive import DeriveFailed
from orchestrator.localize import LocalizeFailed


@pytest.mark.parametrize("cls", [WorkerError, WorkerFailed, OnnxCheckFailed, FetchError,
                                 AccuracyFailed, DeriveFailed, LocalizeFailed])
def test_each_stage_error_is_a_pipeline_error_and_pickles_whole(cls):
    error = cls("timeout", "did not finish", {"seconds": 3})
    assert isinstance(error, PipelineError) and str(error) == "did not finish"
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert (back.kind, back.message, back.details) == ("timeout", "did not finish",
                                                       {"seconds": 3})
    assert cls("export", "no rule").details == {}


def test_an_error_is_named_for_the_stage_it_leaves_and_keeps_it_through_pickling():
    """No stage wraps another's error to say where it happened: the Timer's stage names a
    PipelineError leaving it (the innermost, when stages nest), and a Ray task's error keeps
    its stage. Other exceptions pass untouched (the entry reports them as internal)."""
    from converters.protocol import Timer, in_stage

    timer = Timer()
    with pytest.raises(FetchError) as caught:
        with timer.stage("fetch"):
            raise FetchError("digest_mismatch", "sha256 differs")
    assert caught.value.stage == "fetch" and "fetch" in timer.seconds
    with pytest.raises(WorkerFailed) as caught:
        with timer.stage("convert"), in_stage("inner"):
            raise WorkerFailed("export", "no rule", {"op": "fold"})
    assert caught.value.stage == "inner"
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is WorkerFailed
    assert (back.stage, back.kind, back.message, back.details) == (
        "inner", "export", "no rule", {"op": "fold"})
    assert PipelineError("k", "m").stage is None
    with pytest.raises(KeyError) as other:
        with timer.stage("simplify"):
            raise KeyError("x")
    assert not hasattr(other.value, "stage") and timer.current == "simplify"


def test_a_full_disk_is_named_as_such_not_an_internal_error(tmp_path, monkeypatch):
    """A conversion that finds the disk full (a zoo sweep's models once filled this
    machine's) is `disk_full`, with the free space where the work directory is and what to
    do; any other unforeseen exception stays `internal`. The ENOSPC is real: /dev/full,
    written from inside the entry's stages, and the entry task reports it so."""
    import orchestrator.run as run
    from conftest import manifest_entries
    from manifests.loader import Entry
    from orchestrator.run import _unforeseen
    from orchestrator.stages.context import CheckpointRef, RunOptions

    def stages_on_a_full_disk(ctx):
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 65536)
            full.flush()

    monkeypatch.setattr(run, "run_stages", stages_on_a_full_disk)
    monkeypatch.setenv("MODEL_CONVERT_WORK", str(tmp_path / "work"))
    entry = Entry(manifest_entries()["res2net50-w14-s8"], None)   # every field: no derive
    said = []
    prepared = run.prepare_entry(entry, [entry], RunOptions(tmp_path / "out", tmp_path / "c"),
                                 CheckpointRef({}, str(tmp_path / "c")), None, "e", said.append)
    error = prepared.report.to_json()["error"]
    assert error["kind"] == "disk_full" and prepared.status == "error", error
    assert error["message"].startswith("no space left on the device"), error
    assert any("/disk_full] no space left" in line for line in said), said

    try:
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 65536)
            full.flush()
    except OSError as exc:
        kind, message = _unforeseen(exc, tmp_path / "entry-m")
    assert kind == "disk_full", message
    assert message.startswith("no space left on the device writing a file (")
    assert f"MiB free where the work directory {tmp_path / 'entry-m'} is" in message
    assert "MODEL_CONVERT_WORK" in message
    assert _unforeseen(OSError(13, "denied"), tmp_path) == ("internal",
                                                           "PermissionError: [Errno 13] denied")
    assert _unforeseen(KeyError("x"), tmp_path) == ("internal", "KeyError: 'x'")
