"""scripts/checkpoint_jobs.py: many checkpoints in one maker process, each with its own
outcome. A model that cannot be built, raises, exits, kills its process or runs past the
limit fails alone; the models after it are still made (in a new process where the old one
is gone)."""
from __future__ import annotations

import sys
from pathlib import Path

from scripts.checkpoint_jobs import make_checkpoints

TOY = "tests.helpers.toy_maker"


def _jobs(tmp_path: Path, plan: dict[str, str]) -> dict:
    return {name: (["--out", str(tmp_path / f"{name}.ckpt"), "--do", do],
                   tmp_path / f"{name}.ckpt") for name, do in plan.items()}


def test_each_way_a_maker_can_end_is_that_models_outcome_and_the_rest_are_made(tmp_path):
    plan = {"a": "write", "cannot": "cannot", "raises": "raise", "exits": "exit",
            "b": "write", "dies": "die", "c": "write", "silent": "nothing", "d": "write"}
    seen = []
    made = make_checkpoints(Path(sys.executable), TOY, _jobs(tmp_path, plan), timeout=120,
                            on_result=lambda key, result: seen.append(key))
    assert seen == list(plan)   # each reported as it ended, in order
    status = {key: m.status for key, m in made.items()}
    assert status == {"a": "done", "cannot": "cannot_build", "raises": "error",
                      "exits": "error", "b": "done", "dies": "error", "c": "done",
                      "silent": "error", "d": "done"}
    assert made["cannot"].message == "the source cannot build cannot"
    assert made["raises"].message == "ValueError: bad weights in raises"
    assert made["exits"].message == "--arch refused for exits"
    assert made["dies"].message.startswith("the maker's process ended with status -9 (killed")
    assert made["silent"].message == "the maker wrote no silent.ckpt"
    for key in "abcd":   # after the killed process, c and d in a new one
        assert (tmp_path / f"{key}.ckpt").read_bytes() == f"weights of {key}".encode()
    assert not (tmp_path / "dies.ckpt").exists()


def test_a_model_past_the_limit_is_stopped_and_the_next_one_made(tmp_path):
    made = make_checkpoints(Path(sys.executable), TOY,
                            _jobs(tmp_path, {"slow": "hang", "next": "write"}), timeout=10)
    assert made["slow"].status == "timeout" and made["slow"].message == "still running after 10 s"
    assert made["next"].status == "done"
    assert (tmp_path / "next.ckpt").is_file()


def test_a_maker_that_cannot_start_fails_every_model_with_its_last_words(tmp_path):
    made = make_checkpoints(Path(sys.executable), "tests.helpers.no_such_maker",
                            _jobs(tmp_path, {"a": "write", "b": "write"}), timeout=120)
    assert {m.status for m in made.values()} == {"error"}
    assert "before any job" in made["a"].message
    assert "No module named 'tests.helpers.no_such_maker'" in made["a"].message
