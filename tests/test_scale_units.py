"""The pieces of scale-out that need no framework: work-dir sweep, shard planning, the shard
merge, the inputs fingerprint, and the local executor's order."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

from conftest import REPO
from converters.registry import SOURCES
from orchestrator import fingerprint
from orchestrator.accuracy import (AccuracyFailed, Selection, ShardResult, _contract_part,
                                   merge_shards, plan_shards, runtime_accuracy)
from orchestrator.executor import LocalExecutor, Reporter
from orchestrator.workdir import run_dir, sweep_stale
from verify.accuracy import AccuracyMeter, concat_scores, score
from verify.dataset import Dataset


# --------------------------------------------------------------------------- work dirs
def test_sweep_removes_only_directories_whose_owner_died(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_CONVERT_WORK", str(tmp_path))
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]);"
            "from orchestrator.workdir import run_dir\n"
            "with run_dir('victim') as d:\n"
            "    print(d, flush=True); time.sleep(600)")
    owner = subprocess.Popen([sys.executable, "-c", code, str(REPO)], stdout=subprocess.PIPE,
                             text=True)
    victim = Path(owner.stdout.readline().strip())
    assert victim.is_dir()
    with run_dir("live") as live:
        assert sweep_stale(tmp_path) == []              # both owners alive: nothing goes
        assert victim.is_dir() and live.is_dir()
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert victim.is_dir()                          # SIGKILL ran no cleanup
        assert sweep_stale(tmp_path) == [victim]        # its lock died with it
        assert live.is_dir()
    assert not live.exists()                            # removed by its owner on exit
    with run_dir("kept", keep=True) as kept:
        pass
    assert kept.is_dir() and sweep_stale(tmp_path) == [] and kept.is_dir()  # --keep-work
    shutil.rmtree(kept)


# --------------------------------------------------------------------------- shards
def test_shards_start_on_batch_boundaries_and_cover_everything_once():
    assert plan_shards(10, None, 4) == [range(0, 10)]
    assert plan_shards(10, 100, 4) == [range(0, 10)]
    assert plan_shards(10, 4, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    # 5 is rounded up to whole batches of 4: 8.
    assert plan_shards(20, 5, 4) == [range(0, 8), range(8, 16), range(16, 20)]
    parts = plan_shards(50000, 256, 32)
    assert all(p.start % 32 == 0 for p in parts)
    assert [i for p in parts for i in p] == list(range(50000))


def _entry():
    class Entry(dict):
        data = {"published": None}
    return Entry(accuracy={"onnx_top1_delta": 0.1, "disagreement": 0.1, "unreadable": 50.0,
                           "published_top1_delta": 0.3, "batch_size": 4},
                 preprocess={"pipeline": "x"}, variants={"fp16": {"max_top1_drop": 1.0}},
                 source="mmpretrain",
                 deploy={"runtimes": ["onnxruntime"], "max_level_diff": 1.0,
                         "max_top1_delta": 0.1})


def test_merged_shards_equal_one_pass_over_the_same_logits(tmp_path):
    rng = np.random.default_rng(1)
    n, k = 13, 20
    labels = rng.integers(0, k, n)
    src = rng.normal(0, 1, (n, k)).astype(np.float32)
    onnx = src + rng.normal(0, 1e-3, (n, k)).astype(np.float32)
    fp16 = src + rng.normal(0, 0.5, (n, k)).astype(np.float32)   # flips some top-1s
    unreadable = {6}
    used = np.array([i for i in range(n) if i not in unreadable])
    paths = [tmp_path / f"{i}.JPEG" for i in range(n)]
    selection = Selection(Dataset(tmp_path, "val.txt", paths, labels.tolist()),
                          list(range(n)), None)

    one = AccuracyMeter(("onnx", "fp16"))
    one.add(labels[used], used, src[used], {"onnx": onnx[used], "fp16": fp16[used]})

    shards = []
    for index, part in enumerate(plan_shards(n, 4, 4)):   # shards of 4, in any order
        mine = np.array([i for i in part if i not in unreadable])
        shards.append(ShardResult(index, part.start, len(part), mine, concat_scores([
            score(src[mine[:2]], {"onnx": onnx[mine[:2]], "fp16": fp16[mine[:2]]}),
            score(src[mine[2:]], {"onnx": onnx[mine[2:]], "fp16": fp16[mine[2:]]})]),
            [{"index": 6, "path": str(paths[6]), "error": "bad"}] if 6 in part else []))
    checks, report, per_variant = merge_shards(_entry(), selection, shards[::-1], False,
                                               ["fp16"], 1.0)
    assert report["source"] == one.side("source") and report["onnx"] == one.side("onnx")
    assert report["disagree"] == len(one.disagree)
    assert report["max_abs_logit_diff"] == one.max_abs_diff
    assert report["unreadable"] == 1 and report["source"]["images"] == n - 1
    assert per_variant["fp16"][1]["disagree"] == len(one.disagreeing["fp16"]) > 0
    assert per_variant["fp16"][1]["max_abs_logit_diff"] == one.max_diff["fp16"]
    assert report["disagree_images"] == [str(paths[i]) for i in one.disagree]
    assert report["throughput"]["shards"] == 4


def test_the_report_lists_the_first_50_images_and_counts_them_all(tmp_path):
    """docs/usage.md: `disagree`, `near_ties` and `unreadable` are full counts; each lists its first
    50 images, in dataset order, across shards."""
    n, k = 130, 10
    src = np.tile(np.eye(k, dtype=np.float32)[0] * 5, (n, 1))          # source: class 0
    onnx = np.tile(np.eye(k, dtype=np.float32)[1] * 5, (n, 1))         # ONNX: class 1
    onnx[:3] = src[:3]                                                   # 3 agree
    paths = [tmp_path / f"{i}.JPEG" for i in range(n)]
    bad = set(range(0, n, 2))                                            # 65 unreadable
    selection = Selection(Dataset(tmp_path, "val.txt", paths, [0] * n), list(range(n)), None)
    shards = []
    for index, part in enumerate(plan_shards(n, 40, 40)):
        mine = np.array([i for i in part if i not in bad])
        shards.append(ShardResult(index, part.start, len(part), mine,
                                  score(src[mine], {"onnx": onnx[mine]}),
                                  [{"index": i, "path": str(paths[i]), "error": "bad"}
                                   for i in part if i in bad]))
    _, report, _ = merge_shards(_entry(), selection, shards[::-1], False, [], 1.0)
    readable = [i for i in range(n) if i not in bad]
    disagreeing = [i for i in readable if i >= 3]
    assert report["unreadable"] == len(bad) == 65
    assert [u["path"] for u in report["unreadable_images"]] == [str(paths[i])
                                                                for i in sorted(bad)][:50]
    assert report["disagree"] == len(disagreeing) > 50
    assert report["disagree_images"] == [str(paths[i]) for i in disagreeing[:50]]


def test_merged_report_in_full_with_contract_variant_and_another_runtime(tmp_path):
    """Every field merge_shards reports, worked out by hand for two shards of three images:
    the fp32 gates, the contract's (tensors and top-1), a failing fp16 variant, OpenVINO's
    figures on the same tensors, and the throughput sums."""
    k, labels = 5, [0, 1, 2, 3, 4, 0]

    def logits(top1):
        x = np.tile(-np.arange(k, dtype=np.float64), (len(top1), 1))
        x[np.arange(len(top1)), top1] = 100.0
        return x

    src = logits([0, 1, 2, 3, 0, 1])              # 4 of 6 right: 66.6667 %
    fp16 = logits([0, 1, 2, 0, 0, 1])             # 3 of 6: a 16.67 point drop
    ov = logits([0, 1, 2, 3, 4, 1])               # 5 of 6 on OpenVINO: +16.67 points
    paths = [tmp_path / f"{i}.JPEG" for i in range(6)]
    selection = Selection(Dataset(tmp_path, "val.txt", paths, labels), list(range(6)), None)
    parts = [{"images": 3, "exact_images": 3, "max_level_diff": 0.0, "worst_image": "a",
              "errors": []},
             {"images": 3, "exact_images": 2, "max_level_diff": 0.5, "worst_image": "e",
              "errors": []}]
    shards = []
    for index, rows in enumerate((slice(0, 3), slice(3, 6))):
        scored = score(src[rows], {"onnx": src[rows], "fp16": fp16[rows],
                                   "contract": src[rows], "onnx@openvino": ov[rows],
                                   "fp16@openvino": fp16[rows]})
        shards.append(ShardResult(
            index, rows.start, 3, np.arange(rows.start, rows.stop), scored, [],
            {"evaluate": 2.0 * (index + 1), "forward": 1.0 + index / 2},
            {"workers": 2, "images": 3, "unreadable": 0, "data_wait_s": 0.5 / (index + 1)},
            0.5 / (index + 1), 10.0 + 2 * index, parts[index]))
    entry = _entry()
    entry["deploy"]["runtimes"] = ["onnxruntime", "openvino"]
    checks, report, per_variant = merge_shards(entry, selection, shards[::-1], False,
                                               ["fp16"], 20.0)
    assert [(c.name, c.passed) for c in checks] == [
        ("onnx_top1_delta", True), ("top1_disagreement", True), ("unreadable_images", True),
        ("contract_preprocess", True), ("contract_top1_delta", True)]
    scope = {"stage": "accuracy", "model": "contract", "images": 6}
    assert checks[3].as_dict() == {"name": "contract_preprocess", "passed": True,
                                   "measured": 0.5, "limit": 1.0, "scope": scope,
                                   "detail": "max over 6 images, worst e; 5 bit-exact"}
    assert checks[4].as_dict() == {
        "name": "contract_top1_delta", "passed": True, "measured": 0.0, "limit": 0.1,
        "scope": scope, "detail": "top-1 66.667% with preprocess.json + ONNX vs 66.667% with "
                                  "mmpretrain's own preprocessing + model on 6 images "
                                  "(two-sided)"}
    runtimes = report.pop("runtimes")
    assert report == {
        "source": {"top1": 66.6667, "top5": 100.0, "images": 6},
        "onnx": {"top1": 66.6667, "top5": 100.0, "images": 6},
        "disagree": 0, "disagree_images": [], "near_ties": 0, "near_tie_images": [],
        "max_abs_logit_diff": 0.0, "unreadable": 0, "unreadable_images": [],
        "dataset": selection.describe(), "preprocess": "x",
        "published": {"applied": False, "why": "the entry names no published accuracy"},
        "limits": {"onnx_top1_delta": 0.1, "disagreement": 0.1, "unreadable": 50.0,
                   "published_top1_delta": 0.3},
        "throughput": {"images_per_s": 1.0, "wall_s": 20.0, "wall_images_per_s": 0.3,
                       "onnxruntime_s": 0.75, "shards": 2, "shard_s": [10.0, 12.0],
                       "worker": {"evaluate": 6.0, "forward": 2.5},
                       "loader": {"workers": 2, "images": 6, "unreadable": 0,
                                  "data_wait_s": 0.75}},
        "contract": {"images": 6, "exact_images": 5, "max_level_diff": 0.5,
                     "worst_image": "e", "errors": [], "top1": 66.6667, "top5": 100.0,
                     "disagree": 0},
        "variants": {"fp16": {"top1": 50.0, "top5": 100.0, "images": 6, "disagree": 1,
                              "near_ties": 0, "max_abs_logit_diff": 103.0}}}
    drop, figures = per_variant["fp16"]
    assert (drop.name, drop.passed, drop.measured, drop.limit) == ("top1_drop", False,
                                                                   16.6667, 1.0)
    assert figures == report["variants"]["fp16"]
    fp32_ov, fp16_ov = runtimes["openvino"]["fp32"], runtimes["openvino"]["fp16"]
    assert fp32_ov["figures"] == {"top1": 83.3333, "top5": 100.0, "images": 6, "disagree": 1}
    assert (fp32_ov["check"].name, fp32_ov["check"].passed, fp32_ov["check"].measured) == (
        "onnx_top1_delta", False, 16.6667)
    assert fp32_ov["check"].scope == {"model": "simplified", "runtime": "openvino",
                                      "stage": "accuracy"}
    assert (fp16_ov["check"].name, fp16_ov["check"].passed) == ("top1_drop", False)
    assert fp16_ov["check"].scope["runtime"] == "openvino"


# --------------------------------------------------------------------------- fingerprint
def test_every_input_changes_the_fingerprint(tmp_path, monkeypatch):
    spec = SOURCES["mmpretrain"]
    base = dict(entry_data={"name": "a", "tolerances": {"atol": 1e-4}}, spec=spec,
                checkpoint_sha256="ab" * 32, dataset="cd" * 32, precisions=("fp32",),
                signer="ef" * 32, options={"max_image_pixels": 50_000_000})
    ref = fingerprint.entry_inputs(**base)["fingerprint"]
    assert fingerprint.entry_inputs(**base)["fingerprint"] == ref      # deterministic
    changed = {"entry_data": {"name": "a", "tolerances": {"atol": 2e-4}},
               "checkpoint_sha256": "00" * 32, "dataset": "11" * 32,
               "precisions": ("fp32", "fp16"), "signer": None,
               "options": {"max_image_pixels": 1000}}
    for key, value in changed.items():
        assert fingerprint.entry_inputs(**{**base, key: value})["fingerprint"] != ref, key
    # Lock files and code: a copy of the tree where one lock line or one module changes.
    root = tmp_path / "tree"
    for part in (*fingerprint.CODE_DIRS, "envs", "verify"):
        shutil.copytree(REPO / part, root / part, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in fingerprint.CODE_FILES:
        shutil.copy(REPO / name, root / name)
    monkeypatch.setattr(fingerprint, "REPO_ROOT", root)
    fingerprint.code_digest.cache_clear()
    try:
        before = fingerprint.entry_inputs(**base)
        lock = root / "envs" / "mmpretrain.lock.txt"
        lock.write_text(lock.read_text() + "extra==1.0\n")
        assert fingerprint.entry_inputs(**base)["fingerprint"] != before["fingerprint"]
        assert fingerprint.env_resource("mmpretrain") != fingerprint.env_resource("paddle")
        fingerprint.code_digest.cache_clear()
        code = fingerprint.code_digest()
        (root / "README.md").write_text("docs do not change artifacts\n")
        fingerprint.code_digest.cache_clear()
        assert fingerprint.code_digest() == code
        module = root / "verify" / "compare.py"
        module.write_text(module.read_text() + "\n# changed\n")
        fingerprint.code_digest.cache_clear()
        changed_code = fingerprint.code_digest()
        assert changed_code != code
        # A source's own eval configs change what a five-field entry derives.
        configs = root / "converters" / "mindcv" / "eval_configs.json"
        configs.write_text(configs.read_text().replace('"image_resize":256',
                                                       '"image_resize":288', 1))
        fingerprint.code_digest.cache_clear()
        assert fingerprint.code_digest() != changed_code
    finally:
        fingerprint.code_digest.cache_clear()


def test_dataset_digest_sees_files_sizes_labels_and_limit(tmp_path):
    paths = [tmp_path / f"{i}.JPEG" for i in range(4)]
    for p in paths:
        p.write_bytes(b"x" * 10)

    def digest(labels=(0, 1, 2, 3), positions=(0, 1, 2, 3), limit=None):
        data = Dataset(tmp_path, "val.txt", paths, list(labels))
        return fingerprint.dataset_digest(Selection(data, list(positions), limit))

    ref = digest()
    assert digest() == ref
    assert digest(labels=(0, 1, 2, 4)) != ref
    assert digest(positions=(0, 1, 2), limit=3) != ref
    paths[1].write_bytes(b"x" * 11)
    assert digest() != ref


# --------------------------------------------------------------------------- executor
def test_a_task_in_the_drivers_process_hands_its_files_over_by_moving_them(tmp_path):
    """orchestrator/workdir.py: with a hand-over folder (the local executor's tasks run in
    the driver's process) a task's file is moved there, same inode, and the driver uses it
    where it lies; without one (a Ray task on any node) its bytes travel, and the driver
    writes them once."""
    from orchestrator.executor import Executor
    from orchestrator.workdir import hand_over, placed

    made = tmp_path / "task" / "model.onnx"
    made.parent.mkdir()
    made.write_bytes(b"graph")
    inode = made.stat().st_ino
    handed = hand_over(made, tmp_path / "driver" / "entry")
    assert handed == tmp_path / "driver" / "entry" / "model.onnx" and not made.exists()
    assert handed.stat().st_ino == inode
    assert placed(handed, tmp_path / "elsewhere.onnx") == handed
    assert not (tmp_path / "elsewhere.onnx").exists()

    made.write_bytes(b"graph")
    data = hand_over(made, None)
    assert data == b"graph" and made.exists()
    target = placed(data, tmp_path / "written.onnx")
    assert target == tmp_path / "written.onnx" and target.read_bytes() == b"graph"
    assert LocalExecutor.shares_files and not Executor.shares_files


def test_the_driver_hands_a_local_tasks_files_over_as_paths_and_a_remote_ones_as_bytes(
        tmp_path, monkeypatch):
    """orchestrator/driver.py run_all with the real local executor: the entry task's
    model.onnx comes back as a path in the driver's folder for the entry (moved, not read
    into memory: the move itself is the test above); an executor whose tasks run elsewhere
    (Ray's case: shares_files False) gets the same file's bytes. The stages (and deriving
    fields from the source) are stood in for: they write the two files a conversion
    leaves."""
    import orchestrator.driver as driver
    import orchestrator.run as run
    from conftest import manifest_entries
    from manifests.loader import Entry
    from orchestrator.stages.context import RunOptions

    def stages(ctx):
        (ctx.workdir / "model.onnx").write_bytes(b"graph")
        (ctx.workdir / "worker.log").write_text("log")
        made.append(ctx.workdir)
        return [], {}, False

    returned, made = [], []

    def recorded(*args, **kwargs):
        prepared = run.prepare_entry(*args, **kwargs)   # (the driver's folder goes at the end)
        returned.append({name: ("path", data.parent.name, data.read_bytes())
                         if isinstance(data, Path) else data
                         for name, data in prepared.files.items()})
        return prepared

    class Elsewhere(LocalExecutor):
        shares_files = False

    monkeypatch.setattr(run, "run_stages", stages)
    monkeypatch.setattr(run, "needs_source", lambda entry: False)   # no framework worker
    monkeypatch.setattr(driver, "prepare_entry", recorded)
    monkeypatch.setenv("MODEL_CONVERT_WORK", str(tmp_path / "work"))
    entry = Entry(manifest_entries()["res2net50-w14-s8"], None)   # every field: no derive
    for executor in (LocalExecutor(Reporter(lambda _: None)),
                     Elsewhere(Reporter(lambda _: None))):
        opts = RunOptions(tmp_path / "out", tmp_path / "cache")
        driver.run_all([entry], [entry], opts, executor, Reporter(lambda _: None))
    local, remote = returned
    assert local == {"model.onnx": ("path", entry.name, b"graph"),
                     "worker.log": ("path", entry.name, b"log")}
    assert remote == {"model.onnx": b"graph", "worker.log": b"log"}
    # Either way the failed entry's report keeps the worker's log beside it.
    assert (tmp_path / "out" / entry.name / "worker.log").read_text() == "log"


def test_local_executor_runs_lowest_priority_first_and_keeps_errors():
    said = []
    ex = LocalExecutor(Reporter(said.append))
    order = []

    def task(name, say):
        say(f"ran {name}")
        order.append(name)
        if name == "bad":
            raise ValueError("boom")
        return name

    handles = {ex.submit(task, n, env=None, cpus=1, priority=p, label=n): n
               for n, p in (("entry2", (2, 0)), ("entry1", (1, 0)), ("bad", (1, 1, 0)))}
    outcomes = []
    while handles:
        out = ex.wait_any(list(handles))
        handles.pop(out.handle)
        outcomes.append(out)
    assert order == ["entry1", "bad", "entry2"]
    assert said == ["ran entry1", "ran bad", "ran entry2"]        # printed as they ran
    assert isinstance(outcomes[1].error, ValueError) and outcomes[2].value == "entry2"


def test_merged_report_keeps_its_decimals_sums_every_shard_s_keys_and_names_images(tmp_path):
    """The throughput and listing fields with awkward numbers, worked out by hand: shards in
    any order, with timing and loader keys that only some shards have; a published figure
    applied for a pinned checkpoint and not for another; the disagreeing and unreadable
    images named by path."""
    k, labels = 4, [0, 1, 2, 3]
    src = np.tile(-np.arange(k, dtype=np.float64), (4, 1))
    src[np.arange(4), labels] = 10.0                     # the source is right on all four
    onnx = src.copy()
    onnx[2] = src[2][::-1] * 3                           # image 2: ONNX picks another class
    paths = [tmp_path / f"img{i}.JPEG" for i in range(5)]
    selection = Selection(Dataset(tmp_path, "val.txt", paths, labels + [1]),
                          list(range(5)), None)
    first = ShardResult(0, 0, 1, np.array([0]), score(src[:1], {"onnx": onnx[:1]}), [],
                        {"evaluate": 0.7, "forward": 0.1234},
                        {"workers": 2, "images": 1, "data_wait_s": 0.0006}, 0.1234, 1.23456)
    second = ShardResult(1, 1, 4, np.array([1, 2, 3]), score(src[1:], {"onnx": onnx[1:]}),
                         [{"index": 4, "path": str(paths[4]), "error": "truncated",
                           "kind": "decode"}],
                         {"forward": 0.0004, "load": 0.5},
                         {"workers": 2, "images": 3, "unreadable": 1, "data_wait_s": 0.0001},
                         0.0004, 2.0004)
    entry = _entry()
    entry.data = {"published": {"top1": 75.0, "top5": 100.0, "reference": "the zoo"}}
    entry["accuracy"]["unreadable"] = 50.0
    _, report, _ = merge_shards(entry, selection, [second, first], True, [], 7.12345)
    assert report["throughput"] == {
        "images_per_s": 7.14,                        # 5 / 0.7: only one shard timed it
        "wall_s": 7.123, "wall_images_per_s": 0.7,   # 5 / 7.12345 = 0.7019
        "onnxruntime_s": 0.124, "shards": 2, "shard_s": [1.235, 2.0],
        "worker": {"forward": 0.124, "load": 0.5, "evaluate": 0.7},
        "loader": {"workers": 2, "images": 4, "unreadable": 1, "data_wait_s": 0.001}}
    assert report["disagree_images"] == [str(paths[2])]
    assert report["unreadable_images"] == [{"path": str(paths[4]), "error": "truncated"}]
    assert report["published"]["applied"] is True and report["published"]["top1"] == 75.0
    assert report["published"]["delta"] == 25.0      # the source's 100 % vs 75 %
    _, unpinned, _ = merge_shards(entry, selection, [first, second], False, [], 7.12345)
    assert unpinned["published"]["applied"] is False
    assert "not the pinned published file" in unpinned["published"]["why"]
    # One shard: the loader's other fields are that shard's.
    one = ShardResult(0, 0, 5, np.array([0, 1, 2, 3]), score(src, {"onnx": onnx}), [],
                      {}, {"workers": 3, "images": 4}, 0.0, 0.5)
    _, alone, _ = merge_shards(entry, selection, [one], True, [], 0.0)
    assert alone["throughput"]["loader"] == {"workers": 3, "images": 4, "unreadable": 0,
                                             "data_wait_s": 0}
    assert alone["throughput"]["images_per_s"] is None           # no evaluate time recorded
    assert alone["throughput"]["wall_images_per_s"] is None      # no wall time
    assert alone["throughput"]["worker"] == {}


def test_a_selection_describes_the_dataset_and_what_was_taken_of_it(tmp_path):
    data = Dataset(tmp_path, "imagefolder", [tmp_path / f"{i}.JPEG" for i in range(6)],
                   [0, 0, 1, 1, 2, 2], note="n")
    assert Selection(data, [0, 1, 4], 3).describe() == {
        "dir": str(tmp_path), "layout": "imagefolder", "images": 6, "classes": 3, "note": "n",
        "limit": 3, "selected": 3, "selected_classes": 2}


def test_another_runtime_s_top1_is_gated_like_onnx_runtime_s_at_the_exact_limit():
    """runtime_accuracy in full: OpenVINO's fp32 top-1 10 points under the source's passes a
    10-point limit and fails a 9.5-point one; its int8 copy gets the variant's top1_drop
    check; names without a runtime are not its business."""
    labels = np.arange(10) % 3
    src = np.eye(3)[labels] * 5.0
    ov = src.copy()
    ov[4] = np.roll(ov[4], 1)                     # one of ten wrong on OpenVINO
    meter = AccuracyMeter(("onnx", "int8", "onnx@openvino", "int8@openvino"))
    meter.add(labels, np.arange(10), src, {"onnx": src, "int8": src, "onnx@openvino": ov,
                                          "int8@openvino": ov})
    entry = _entry()
    entry["accuracy"]["onnx_top1_delta"] = 10.0
    entry["variants"] = {"int8": {"max_top1_drop": 5.0}}
    out = runtime_accuracy(entry, meter, ["onnx", "onnx@openvino", "int8", "int8@openvino"])
    assert list(out) == ["openvino"] and list(out["openvino"]) == ["fp32", "int8"]
    fp32, int8 = out["openvino"]["fp32"], out["openvino"]["int8"]
    assert fp32["check"].as_dict() == {
        "name": "onnx_top1_delta", "passed": True, "measured": -10.0, "limit": 10.0,
        "detail": "openvino top-1 90.000% vs source 100.000% on 10 images",
        "scope": {"model": "simplified", "runtime": "openvino", "stage": "accuracy"}}
    assert fp32["figures"] == {"top1": 90.0, "top5": 100.0, "images": 10, "disagree": 1}
    assert (int8["check"].name, int8["check"].passed, int8["check"].measured,
            int8["check"].limit) == ("top1_drop", False, 10.0, 5.0)
    assert int8["check"].scope == {"model": "int8", "runtime": "openvino", "stage": "accuracy"}
    entry["accuracy"]["onnx_top1_delta"] = 9.5
    assert runtime_accuracy(entry, meter, ["onnx@openvino"])["openvino"]["fp32"][
        "check"].passed is False


def test_a_shard_s_contract_figures_name_its_worst_image_by_path():
    """A shard's deploy-contract part: how many images, how many bit-exact, the largest level
    difference and the path of the image it came from (batch indices are shard positions)."""
    job = types.SimpleNamespace(paths=[f"img{i}.JPEG" for i in range(8)])
    errors = [{"path": "img6.JPEG", "error": "cannot identify image"}]
    assert _contract_part(job, np.array([5, 3, 7]), np.array([0.0, 2.0, 0.5]), errors) == {
        "images": 3, "exact_images": 1, "max_level_diff": 2.0, "worst_image": "img3.JPEG",
        "errors": errors}
    assert _contract_part(job, np.array([], dtype=np.int64), np.array([]), []) == {
        "images": 0, "exact_images": 0, "max_level_diff": 0.0, "worst_image": None,
        "errors": []}


def test_a_failed_shard_becomes_the_entrys_accuracy_error_and_the_first_one_stays():
    """What the report's error says when a shard fails: an AccuracyFailed keeps its kind,
    message and details under stage 'accuracy'; anything else a task raises is
    'task_failed' naming the shard; a later failure does not replace the first."""
    from types import SimpleNamespace

    from orchestrator.driver import _EntryState, _shard_returned

    state = _EntryState(1, None, "h", None, None, None)
    events = []
    reporter = SimpleNamespace(emit_event=lambda *a, **k: events.append(a))
    _shard_returned(state, 2, SimpleNamespace(error=AccuracyFailed(
        "timeout", "evaluation did not finish", {"images": 3})), reporter)
    _shard_returned(state, 0, SimpleNamespace(error=MemoryError("out")), reporter)
    err = state.accuracy_error
    assert (err.stage, err.kind, err.message, err.details) == (
        "accuracy", "timeout", "evaluation did not finish", {"images": 3})
    assert state.shards == {2: None, 0: None} and not events
    other = _EntryState(1, None, "h", None, None, None)
    _shard_returned(other, 4, SimpleNamespace(error=MemoryError("out")), reporter)
    assert (other.accuracy_error.kind, other.accuracy_error.message) == (
        "task_failed", "shard 4: MemoryError: out")
    assert AccuracyFailed("shards", "x").details == {}


def test_ray_failures_of_a_nodes_state_say_what_to_do_and_drop_ray_ids():
    """A node whose disk is too full for Ray to spill (the CI run that found it printed Ray's
    object-id tuple as bytes) is reported as what it is, with the fix, without the ids; a
    full object store likewise; Ray's other failures pass unchanged; the report's text
    gives an expected failure's kind, anything else its exception type."""
    import ray.exceptions as rex

    from orchestrator.driver import _EntryState, _entry_returned, _failure_text
    from orchestrator.executor import ray_failure

    raw = rex.OutOfDiskError("c2668a65bda616c1ffff", b"\n\x1c\x80~Gh", "")
    assert "b'" in str(raw)
    found = ray_failure(raw)
    assert found.kind == "OutOfDiskError"
    assert "free disk space" in found.message and "over capacity" in found.message
    assert "c2668a65" not in found.message and "\\x1c" not in found.message
    # raised inside the task (its return value could not be stored): RayTaskError's
    # instance of the cause, as the executor gets it, names a process, not the ids
    wrapped = rex.RayTaskError("prepare_entry", "Traceback ...\nray.exceptions.OutOfDiskError",
                               raw).as_instanceof_cause()
    inside = ray_failure(wrapped)
    assert (inside.kind, inside.message) == (found.kind, found.message)
    full = ray_failure(rex.ObjectStoreFullError("id"))
    assert full.kind == "ObjectStoreFullError" and "--object-store-memory" in full.message
    died = rex.WorkerCrashedError()
    assert ray_failure(died) is died
    assert _failure_text(found).startswith("OutOfDiskError: a node's object store is full")
    assert _failure_text(MemoryError("out")) == "MemoryError: out"

    from types import SimpleNamespace

    from manifests.loader import Entry
    entry = Entry({"name": "e", "source": "mmpretrain", "model_id": "m"}, None)
    state = _EntryState(0, entry, "h", None, None, None)
    said = []
    _entry_returned(state, SimpleNamespace(error=found), None, None, {}, None, said.append)
    error = state.prepared.report.to_json()["error"]
    assert (error["stage"], error["kind"]) == ("executor", "task_failed")
    assert error["message"] == _failure_text(found) and "b'" not in said[0]


def test_each_node_checks_the_dataset_is_the_drivers_before_any_work(tmp_path):
    """docs/usage.md: `--data` must be readable at the same path on every node; each node checks
    the selected files and their sizes, and says what differs (run_all stops on it)."""
    from orchestrator.fingerprint import dataset_digest
    from orchestrator.driver import check_dataset_here

    paths = []
    for i in range(4):
        paths.append(tmp_path / "val" / f"{i}.JPEG")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_bytes(b"x" * (10 + i))
    selection = Selection(Dataset(tmp_path / "val", "val.txt", paths, [0, 1, 2, 3]),
                          [0, 2, 3], None)
    driver = dataset_digest(selection)
    assert check_dataset_here(selection, driver) is None
    paths[1].unlink()                                   # not selected: no matter
    assert check_dataset_here(selection, driver) is None
    paths[2].write_bytes(b"y" * 12)                     # same size, other bytes: sizes only
    assert check_dataset_here(selection, driver) is None
    paths[3].write_bytes(b"z" * 99)
    assert check_dataset_here(selection, driver) == (
        f"the images under {tmp_path / 'val'} differ (file sizes) from the driver's")
    paths[0].unlink()
    assert check_dataset_here(selection, driver) == f"{paths[0]} is missing"
    shutil.rmtree(tmp_path / "val")
    assert check_dataset_here(selection, driver) == (
        f"dataset folder {tmp_path / 'val'} does not exist")
