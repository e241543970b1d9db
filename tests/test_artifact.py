"""Artifacts appear whole or not at all."""
from __future__ import annotations

import json
import os

import pytest

from release.artifact import write_artifact


def test_artifact_has_files_and_report(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    final = write_artifact(tmp_path / "out", "res", {"passed": True}, {"model.onnx": model})
    assert sorted(p.name for p in final.iterdir()) == ["model.onnx", "report.json"]
    assert json.loads((final / "report.json").read_text()) == {"passed": True}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["res"]  # no staging left


def test_scratch_files_are_moved_in_not_copied(tmp_path):
    """move=True (the driver's own scratch: orchestrator/stages/package.py): the file is
    renamed into the artifact (same inode on the same file system) and leaves its folder;
    without it the source stays as it was."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    inode = model.stat().st_ino
    final = write_artifact(tmp_path / "out", "res", {"passed": True}, {"model.onnx": model},
                           move=True)
    assert (final / "model.onnx").read_bytes() == b"onnx" and not model.exists()
    assert (final / "model.onnx").stat().st_ino == inode
    model.write_bytes(b"kept")
    final = write_artifact(tmp_path / "out", "res", {"passed": True}, {"model.onnx": model})
    assert model.read_bytes() == b"kept" and (final / "model.onnx").stat().st_ino != \
        model.stat().st_ino


def test_failed_rerun_replaces_an_earlier_model(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    out = tmp_path / "out"
    write_artifact(out, "res", {"passed": True}, {"model.onnx": model})
    write_artifact(out, "res", {"passed": False})
    assert sorted(p.name for p in (out / "res").iterdir()) == ["report.json"]


def test_interrupted_write_leaves_nothing_visible(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        write_artifact(out, "res", {"passed": True}, {"model.onnx": tmp_path / "missing"})
    assert list(out.iterdir()) == []


def test_stale_staging_of_a_dead_run_is_cleaned(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".res.staging-999999999-abcd1234"
    dead.mkdir()
    live = out / f".res.staging-{os.getpid()}-abcd1234"
    live.mkdir()
    write_artifact(out, "res", {"passed": False})
    assert not dead.exists() and live.exists()


def test_a_failing_finalize_step_propagates_and_nothing_becomes_visible(tmp_path):
    """Signing runs as the finalize step: its exception must reach the caller (which fails
    the entry) and leave neither the new model nor a staging directory."""
    from release.signing import SigningError

    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    out = tmp_path / "out"

    def failing_signer(staging):
        assert (staging / "model.onnx").exists()     # called on the complete directory
        raise SigningError("key unusable")

    with pytest.raises(SigningError, match="key unusable"):
        write_artifact(out, "res", {"passed": True}, {"model.onnx": model},
                       finalize=failing_signer)
    assert list(out.iterdir()) == []


def test_keygen_writes_a_private_key_only_its_owner_can_read_and_names_it_by_digest(tmp_path):
    import hashlib
    import stat

    from release.signing import check_signing_key, generate_key

    private = tmp_path / "keys" / "k.pem"
    public = generate_key(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public == tmp_path / "keys" / "k.pub"
    assert b"BEGIN PUBLIC KEY" in public.read_bytes()
    # The key id is the sha256 of the public key's PEM, as reports and the store index say.
    assert check_signing_key(private) == hashlib.sha256(public.read_bytes().strip()).hexdigest()
    with pytest.raises(FileExistsError):              # never overwrites a key
        generate_key(private)
