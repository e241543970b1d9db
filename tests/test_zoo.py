"""Whole model zoos from a five-field entry (issue 16): fields derived from the source's own
files, `add` / `list-models`, model families beyond Res2Net, `unsupported` reported cleanly,
and the zoo sweep on a small sample per source."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (MINDSPORE_PYTHON, MM_PYTHON, PADDLE_PYTHON, REPO, run_in_env,
                      run_pipeline)
from converters.worker_tasks import closest_ids
from deploy.preprocess import contract, preprocess_batch, validate
from manifests.add import default_name
from manifests.loader import load_manifest
from orchestrator.derive import describe_many, list_models, merge
from orchestrator.contract_gate import level_diffs
from verify.images import ODD_KINDS, generate_images, synth_image, write_jpeg

PYTHONS = {"mmpretrain": MM_PYTHON, "paddleclas": PADDLE_PYTHON, "mindcv": MINDSPORE_PYTHON}
sys.path.insert(0, str(REPO / "scripts"))
import zoo_sweep  # noqa: E402
from peer_lists import PEER_LISTS  # noqa: E402


def _five_fields(tmp_path: Path, url: str, **extra) -> object:
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"version": 1, "models": [{
        "name": "m", "source": "mmpretrain", "model_id": "some-model", "num_classes": 1000,
        "checkpoint": {"url": url, "sha256_prefix": "abcdef12"}, **extra}]}))
    return load_manifest(tmp_path / "m.yaml")[0]


DESCRIBED = {
    "model_id": "some-model", "family": "fam", "num_classes": 1000,
    "preprocess": {"pipeline": "mmpretrain", "decode": "cv2", "resize_short": 292,
                   "crop": 256, "interpolation": "bicubic", "resize_backend": "pillow",
                   "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0], "scale": 1.0,
                   "to_rgb": True},
    "input_shape": [3, 256, 256],
    "published": {"top1": 70.0, "top5": 90.0, "reference": "ref"},
    "checkpoint": {"url": "https://host/a/some-model_2021-abcdef12.pth"},
    "derived_from": {"preprocess": "cfg.py", "input_shape": "cfg.py", "published": "meta.yml"},
    "versions": {"mmpretrain": "1.2.0"},
}


# --------------------------------------------------------------------------- no framework
def test_five_field_entry_loads_and_takes_every_other_field_from_the_source(tmp_path):
    entry = _five_fields(tmp_path, "https://mirror/x/some-model_2021-abcdef12.pth")
    assert "preprocess" not in entry.data and "published" not in entry.data
    assert "input_shape" not in entry.data           # no 224 default: the source says
    full, section = merge(entry, DESCRIBED)
    assert full["preprocess"] == DESCRIBED["preprocess"]
    assert full["input_shape"] == [3, 256, 256]
    # The checkpoint is the file the figures are for (same name on another host).
    assert full["published"] == DESCRIBED["published"]
    assert section["fields"] == {"preprocess": "cfg.py", "input_shape": "cfg.py",
                                 "published": "meta.yml"}
    # What the run fingerprints is the entry as written, not the derived fields.
    assert full.as_written == entry.data and "preprocess" not in full.as_written


def test_published_figures_are_not_taken_for_another_checkpoint(tmp_path):
    entry = _five_fields(tmp_path, "file:///ckpt/my-finetune.pth")
    full, section = merge(entry, DESCRIBED)
    assert "published" not in full.data and "published" not in section["fields"]
    assert any("my-finetune.pth" in n and "some-model_2021-abcdef12.pth" in n
               for n in section["notes"])


def test_a_written_field_wins_and_input_shape_follows_its_crop(tmp_path):
    written = dict(DESCRIBED["preprocess"], resize_short=219, crop=192,
                   interpolation="bilinear")
    entry = _five_fields(tmp_path, "file:///c.pth", preprocess=written)
    assert entry["input_shape"] == [3, 192, 192]     # from the written crop, at load
    full, section = merge(entry, DESCRIBED)
    assert full["preprocess"] == written and full["input_shape"] == [3, 192, 192]
    assert section["fields"] == {}                   # nothing taken: both were written,
    assert "published" not in full.data              # and the figures are another file's


def _configs_from_a_commit(script: str, repo: Path, tmp_path: Path) -> tuple[str, dict]:
    """REPO's files committed in a new git repository, then scripts/SCRIPT run on its .git:
    (the commit, the JSON it wrote)."""
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "configs"]):
        subprocess.run(git[:3] + args if args[0] == "init" else git + args, check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    out = tmp_path / "eval_configs.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), str(repo / ".git"),
                           "HEAD", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return commit, json.loads(out.read_text())


def test_paddleclas_eval_configs_are_read_from_a_repository_commit(tmp_path):
    """README: `python scripts/paddleclas_eval_configs.py GIT_DIR [COMMIT [OUT]]` records each
    per-model config's Eval transforms with its file and the commit; a pipeline the contract
    cannot express is recorded as such, with its steps. The shipped data names a commit and
    files of that layout."""
    repo = tmp_path / "PaddleClas"
    folder = repo / "ppcls" / "configs" / "ImageNet" / "Fam"
    folder.mkdir(parents=True)
    eval_ops = [{"DecodeImage": {"to_rgb": True}},
                {"ResizeImage": {"resize_short": 438, "interpolation": "bicubic",
                                 "backend": "pil"}},
                {"CropImage": {"size": 384}},
                {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5, 0.5, 0.5],
                                    "std": [0.5, 0.5, 0.5], "order": ""}}]
    (folder / "Net_384.yaml").write_text(yaml.safe_dump(
        {"DataLoader": {"Eval": {"dataset": {"transform_ops": eval_ops}}}}, sort_keys=False))
    (folder / "Fixed_384.yaml").write_text(yaml.safe_dump(
        {"DataLoader": {"Eval": {"dataset": {"transform_ops": [
            {"ResizeImage": {"size": 384}}, eval_ops[3]]}}}}, sort_keys=False))
    commit, data = _configs_from_a_commit("paddleclas_eval_configs.py", repo, tmp_path)
    assert data["commit"] == commit
    net = data["models"]["Net_384"]
    assert net["file"] == "ppcls/configs/ImageNet/Fam/Net_384.yaml"
    assert (net["resize_short"], net["crop"], net["interpolation"], net["backend"]) == \
        (438, 384, "bicubic", "pil")
    assert net["scale"] == pytest.approx(1 / 255) and net["transform_ops"] == eval_ops
    assert data["models"]["Fixed_384"] == {
        "file": "ppcls/configs/ImageNet/Fam/Fixed_384.yaml",
        "unsupported": ["ResizeImage(size=384)",
                        "NormalizeImage(scale=1.0/255.0, mean=[0.5, 0.5, 0.5], "
                        "std=[0.5, 0.5, 0.5], order=)"]}
    shipped = json.loads((REPO / "converters" / "paddleclas" / "eval_configs.json").read_text())
    assert len(shipped["commit"]) == 40 and len(shipped["models"]) > 300
    assert all(m["file"] == f"ppcls/configs/ImageNet/{m['file'].split('/')[3]}/{name}.yaml"
               for name, m in shipped["models"].items())


def test_mindcv_eval_configs_are_read_from_a_repository_commit(tmp_path):
    """README: `python scripts/mindcv_eval_configs.py GIT_DIR [COMMIT [OUT]]` records what
    MindCV's validate.py evaluates each configured model with (config.py's defaults where a
    file is silent), the Ascend file where a model has several, with the file and commit."""
    repo = tmp_path / "mindcv"
    folder = repo / "configs" / "fam"
    folder.mkdir(parents=True)
    (folder / "net_gpu.yaml").write_text(yaml.safe_dump({"model": "net", "image_resize": 224}))
    (folder / "net_ascend.yaml").write_text(yaml.safe_dump(
        {"model": "net", "image_resize": 256, "crop_pct": 0.9, "interpolation": "bicubic"}))
    (folder / "plain_ascend.yaml").write_text(yaml.safe_dump({"model": "plain"}))
    (folder / "README.md").write_text("not a config\n")
    (folder / "nomodel.yaml").write_text(yaml.safe_dump({"dataset": "imagenet"}))
    commit, data = _configs_from_a_commit("mindcv_eval_configs.py", repo, tmp_path)
    assert data["commit"] == commit and sorted(data["models"]) == ["net", "plain"]
    net, plain = data["models"]["net"], data["models"]["plain"]
    assert net["file"] == "configs/fam/net_ascend.yaml"
    assert (net["image_resize"], net["crop_pct"], net["interpolation"]) == (256, 0.9, "bicubic")
    assert (plain["image_resize"], plain["crop_pct"], plain["interpolation"]) == \
        (224, 0.875, "bilinear")
    assert plain["mean"] == pytest.approx([123.675, 116.28, 103.53])
    shipped = json.loads((REPO / "converters" / "mindcv" / "eval_configs.json").read_text())
    assert len(shipped["commit"]) == 40 and len(shipped["models"]) > 150
    assert shipped["models"]["mobilevit_xx_small"]["image_resize"] == 256


def test_closest_ids_for_a_typo():
    ids = ["deit-tiny_4xb256_in1k", "deit-small_4xb256_in1k", "resnet50_8xb32_in1k",
           "ResNet50_vd"]
    assert closest_ids("deit-tiny", ids)[0] == "deit-tiny_4xb256_in1k"
    assert "resnet50_8xb32_in1k" in closest_ids("resnet50_8xb32_in1", ids)
    assert closest_ids("resnet50_VD", ids)[0] == "ResNet50_vd"   # any case
    assert closest_ids("zzz", ids) == []


def test_default_names_are_valid_and_prefixed_where_zoos_collide():
    assert default_name("mmpretrain", "deit-tiny_4xb256_in1k") == "deit-tiny_4xb256_in1k"
    assert default_name("paddleclas", "ResNet50_vd") == "paddleclas-resnet50_vd"
    assert default_name("mindcv", "resnet50") == "mindcv-resnet50"


def test_sweep_picks_the_same_sample_for_the_same_seed_and_explains_causes():
    zoo = [{"model_id": f"net{i}", "family": "f"} for i in range(40)]
    first = zoo_sweep.pick(zoo, 5, 7, "", [])
    assert first == zoo_sweep.pick(zoo, 5, 7, "", []) and len(first) == 5
    assert first != zoo_sweep.pick(zoo, 5, 8, "", [])
    # Coverage is of ImageNet-1k classifiers: a model the source says is of another dataset
    # is never drawn, but can still be named.
    mixed = [{**m, "dataset": "CIFAR-10" if i % 2 else ("ImageNet-1k" if i % 4 else None)}
             for i, m in enumerate(zoo)]
    drawn = zoo_sweep.pick(mixed, None, 0, "", [])
    assert [m["model_id"] for m in drawn] == sorted(f"net{i}" for i in range(0, 40, 2))
    assert len(zoo_sweep.pick(mixed, 30, 0, "", [])) == 20
    assert zoo_sweep.pick(mixed, None, 0, "", ["net1"])[0]["dataset"] == "CIFAR-10"
    assert [m["model_id"] for m in zoo_sweep.pick(zoo, None, 0, "net1*", [])] == \
        ["net1"] + [f"net1{i}" for i in range(10)]
    failed = {"checks": [{"name": "cosine_min", "passed": False, "measured": 0.9,
                          "limit": 0.99999, "detail": "row 3"}], "error": None}
    assert zoo_sweep.cause(failed) == "check cosine_min: 0.9 vs limit 0.99999 (row 3)"
    error = {"error": {"stage": "convert", "kind": "export", "message": "Unsupported op X\n.."}}
    assert zoo_sweep.cause(error) == "convert/export: Unsupported op X"
    assert zoo_sweep.cause_class({"model_id": "m1", "cause": "convert/export: Exporting the "
                                                            "operator 'x': y"}) \
        == "convert/export: Exporting the operator 'x'"
    # Counted by cause, not by model: the id inside a message is left out.
    assert zoo_sweep.cause_class({"model_id": "m1", "cause": "derive/unsupported: m1: step X "
                                                            "has no equivalent: z"}) \
        == "derive/unsupported: step X has no equivalent"


def test_wilson_interval_of_a_sampled_pass_rate():
    # At 0 and n of n the bounds have closed forms: z^2 / (n + z^2) and n / (n + z^2).
    z2 = 1.959964 ** 2
    assert zoo_sweep.wilson(0, 10) == pytest.approx((0.0, 100 * z2 / (10 + z2)))
    assert zoo_sweep.wilson(40, 40) == pytest.approx((100 * 40 / (40 + z2), 100.0))
    low, high = zoo_sweep.wilson(36, 40)          # 90 %: the interval holds it, asymmetric
    assert low < 90 < high and 90 - low > high - 90
    assert zoo_sweep.wilson(0, 0) == (0.0, 100.0)


def test_the_sweep_also_counts_the_models_the_source_itself_runs():
    """A model the source's own code cannot build or run here (worker_flow.source_failure's
    words) is left out of the second rate, and the table says both."""
    rows = [{"model_id": "a", "status": "passed", "seconds": 1.0},
            {"model_id": "b", "status": "unsupported", "seconds": 1.0,
             "cause": "build/unsupported: MindCV (MindSpore)'s own code cannot build b here: "
                      "RuntimeError: x"},
            {"model_id": "c", "status": "unsupported", "seconds": 1.0,
             "cause": "convert/export: mindspore.onnx.export wrote no model.onnx"},
            {"model_id": "d", "status": "passed", "seconds": 1.0}]
    runs = zoo_sweep.source_runs(rows)
    assert (runs["models"], runs["passed"]) == (3, 2)
    assert runs["wilson95"] == pytest.approx(zoo_sweep.wilson(2, 3))
    summary = {"source": "mindcv", "date": "d", "versions": {}, "selected": 4, "zoo_size": 9,
               "pattern": None, "sample": 4, "seed": 0, "init": "images",
               "counts": {"passed": 2, "unsupported": 2}, "causes": {},
               "coverage_percent": 50.0, "wilson95": zoo_sweep.wilson(2, 4),
               "seconds_per_model": 1.0, "source_runs": runs}
    text = zoo_sweep.markdown(summary, rows)
    assert "**2 of 4 passed (50 %; 95 % Wilson interval 15-85 %)**; unsupported 2; 1 s" in text
    assert ("Of the 3 models the source's own code runs here: **2 passed (67 %; 95 % Wilson "
            "interval 21-94 %)**.") in text


def test_a_peer_list_names_its_source_and_refuses_a_selection_of_its_own(capsys):
    """`--list` sweeps a peer project's own list: its source is the list's, and a --source
    of another zoo or a --sample/--models/--pattern beside it is a usage error (exit 2),
    before any model is listed or converted."""
    for argv, words in ((["--list", "mmdeploy", "--source", "paddleclas"],
                         "--list mmdeploy is a mmpretrain list, not paddleclas"),
                        (["--list", "paddle2onnx", "--sample", "3"], "leave out --models"),
                        (["--list", "mindcv-popular", "--models", "resnet18"],
                         "leave out --models"),
                        ([], "name a zoo with --source, or a peer list with --list"),
                        (["--source", "mindcv", "--chunk", "0"], "--chunk must be 1 or more")):
        with pytest.raises(SystemExit) as stopped:
            zoo_sweep.main(argv)
        assert stopped.value.code == 2 and words in capsys.readouterr().err
    summary = {"source": "mmpretrain", "list": "mmdeploy", "list_origin": "mmdeploy's yml",
               "date": "d", "versions": "", "selected": 1, "zoo_size": 9, "pattern": "",
               "sample": None, "seed": 0, "init": "images", "counts": {"passed": 1},
               "causes": {}, "coverage_percent": 100.0, "wilson95": zoo_sweep.wilson(1, 1),
               "seconds_per_model": 1.0,
               "source_runs": {"models": 1, "passed": 1, "percent": 100.0,
                               "wilson95": zoo_sweep.wilson(1, 1)}}
    text = zoo_sweep.markdown(summary, [{"model_id": "a", "status": "passed", "seconds": 1.0}])
    assert text.startswith("# Zoo sweep: mmpretrain, peer list mmdeploy\n")
    assert "the 1 models of mmdeploy's yml (seed 0)" in text and "sample" not in text


def test_a_sweep_keeps_each_report_and_removes_the_rest_of_its_artifact(tmp_path):
    """What the sweep prunes after each chunk: every file of the named artifact folders
    but report.json; other folders and a missing one are left alone."""
    for name in ("a", "b", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text("{}")
        (tmp_path / name / "model.onnx").write_bytes(b"x" * 1000)
        (tmp_path / name / "labels.txt").write_text("cat\n")
    assert zoo_sweep.prune(tmp_path, ["a", "b", "never-written"]) == 2 * (1000 + 4)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["report.json"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["report.json"]
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == \
        ["labels.txt", "model.onnx", "report.json"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PEER_LISTS))
def test_every_peer_list_id_is_one_its_source_offers(name):
    """A list's ids are its source's own registry ids (a renamed model would make `--list`
    stop at 'unknown model')."""
    peer = PEER_LISTS[name]
    offered = {m["model_id"] for m in list_models(peer.source)}
    assert len(set(peer.model_ids)) == len(peer.model_ids) >= 10
    assert [i for i in peer.model_ids if i not in offered] == []


def test_a_source_whose_own_forward_raises_is_unsupported_naming_the_input():
    """The worker's reference forward: an exception from the source's code (mindcv pvt's
    removed ops.ResizeBilinear) is `unsupported` in its words, with the input shape; the
    worker's own errors and MemoryError pass through unchanged."""
    from converters.protocol import WorkerError
    from converters.worker_flow import forward_with_source

    class Source:
        framework = "mindcv"

        def __init__(self, error):
            self.error = error

        def forward(self, model, inputs, batch_size):
            raise self.error

    inputs = np.zeros((2, 3, 224, 224), np.float32)
    with pytest.raises(WorkerError) as caught:
        forward_with_source(Source(AttributeError("module 'mindspore.ops' has no attribute "
                                                  "'ResizeBilinear'")), None, inputs, 2, "pvt")
    assert caught.value.kind == "unsupported"
    assert caught.value.message == ("mindcv's own code cannot run pvt on input [3, 224, 224] "
                                    "here: AttributeError: module 'mindspore.ops' has no "
                                    "attribute 'ResizeBilinear'")
    for passed_through in (WorkerError("preprocess", "x"), MemoryError()):
        with pytest.raises(type(passed_through)) as caught:
            forward_with_source(Source(passed_through), None, inputs, 2, "pvt")
        assert caught.value is passed_through


def test_inference_switch_calls_outermost_modules_once_and_a_failing_one_is_exported_as_trained():
    from converters.worker_flow import switch_to_inference

    calls = []

    class Block:
        def __init__(self, fail=False):
            self.fail = fail

        def switch_to_deploy(self):
            calls.append(self)
            if self.fail:
                raise AttributeError("The 'SequentialCell' object has no attribute 'conv'.")

    outer, inner, other = Block(), Block(), Block()
    notes = switch_to_inference([("", object()), ("backbone", outer),
                                 ("backbone.0", inner), ("head", other)],
                                "switch_to_deploy", "mmpretrain")
    assert calls == [outer, other]          # the block inside a switched one is left to it
    assert len(notes) == 1 and "switch_to_deploy() on backbone, head" in notes[0]
    assert switch_to_inference([("x", object())], "switch_to_deploy", "m") == []
    # The source's own switch raising (mindcv 0.3 RepVGG) is not a refusal: those modules
    # are exported as trained, named, and the gate compares them with the model as trained.
    # A failed module's children are not tried on their own.
    calls.clear()
    bad, bad_inner, good = Block(fail=True), Block(), Block()
    notes = switch_to_inference([("stage0", bad), ("stage0.0", bad_inner), ("stage1", good)],
                                "switch_to_deploy", "mindcv")
    assert calls == [bad, good]
    assert notes[0].startswith("exported the inference form: mindcv's own switch_to_deploy() "
                               "on stage1;")
    assert notes[1].startswith("exported as trained: mindcv's own switch_to_deploy() failed "
                               "on stage0 (AttributeError: The 'SequentialCell' object")


def test_run_summary_counts_unsupported_apart_from_failures():
    from orchestrator.stages.context import EntryResult
    from orchestrator.summary import format_summary

    text = format_summary([
        EntryResult("a", "passed", "max|diff| 1e-06 <= 0.0003", 30.0),
        EntryResult("b", "unsupported", "convert: export", 12.0),
        EntryResult("c", "failed", "cosine_min 0.9 < 0.99999", 31.0)])
    assert [line.split()[:2] for line in text.splitlines()[2:5]] == [
        ["a", "passed"], ["b", "UNSUPPORTED"], ["c", "FAILED"]]
    assert text.splitlines()[-1] == ("1/3 passed, 1 unsupported by the source's own code or "
                                     "the preprocessing contract")


# --------------------------------------------------------------------------- the sources
def _images(root: Path) -> list[Path]:
    """JPEGs (RGB, grayscale, CMYK, PNG named .JPEG) at sizes where rounding rules differ,
    and the logit check's generated images."""
    rng = np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(333, 250), (511, 256), (257, 300), (600, 457)]):
        for kind in ("rgb", *ODD_KINDS):
            paths.append(root / f"i{i}_{kind}.JPEG")
            write_jpeg(paths[-1], synth_image(rng, h, w), kind)
    return paths + generate_images(root / "generated", 4, seed=9)


# A transformer with bicubic Pillow resizing, one PaddleClas model (its package has one
# inference config), a MindCV model with crop_pct 0.9 + bicubic. (256-px models convert in
# the sweep below, whose deploy gate compares the same tensors.)
DERIVED_CASES = [("mmpretrain", "deit-tiny_4xb256_in1k"),
                 ("paddleclas", "MobileNetV3_small_x0_35"),
                 ("mindcv", "pit_ti"),
                 # mmpretrain's other forms (deploy/preprocess.py FORMAT_2): EfficientNet's
                 # centre crop, a fixed-size Resize (alone; a list scale, then CenterCrop), BGR
                 ("mmpretrain", "efficientnet-b0_3rdparty_8xb32_in1k"),
                 ("mmpretrain", "convnext-v2-nano_fcmae-in21k-pre_3rdparty_in1k-384px"),
                 ("mmpretrain", "repmlp-base_3rdparty_8xb64_in1k"),
                 ("mmpretrain", "regnetx-400mf_8xb128_in1k"),
                 # a PaddleClas model its own repository config evaluates at 256 px, with
                 # Pillow bicubic (converters/paddleclas/eval_configs.json)
                 ("paddleclas", "SwinTransformerV2_tiny_patch4_window8_256"),
                 # a MindCV model whose default cfg gives no size, its own repository config
                 # 256 px (converters/mindcv/eval_configs.json)
                 ("mindcv", "mobilevit_xx_small")]
# Measured: MindSpore's bicubic Resize and OpenCV's INTER_CUBIC (the contract's) round some
# pixels one level apart; bilinear is bit-exact. One level is the deploy gate's allowance.
LEVELS_ALLOWED = {("mindcv", "pit_ti"): 1.0}


@pytest.fixture(scope="module")
def configured_tensors(tmp_path_factory):
    """tensors(source) -> (images, {model_id: (described, the source's own tensors)}) for
    every DERIVED_CASES model of SOURCE, made on first ask: one describe worker and one
    framework process per source for all its models (a process per case paid the
    framework's imports ten times over)."""
    made: dict[str, tuple] = {}

    def tensors(source: str):
        if source not in made:
            root = tmp_path_factory.mktemp(f"derived-{source}")
            paths = _images(root)
            (root / "images.txt").write_text("\n".join(map(str, paths)))
            ids = [m for s, m in DERIVED_CASES if s == source]
            described = describe_many(source, ids)
            run_in_env(PYTHONS[source], str(REPO / "tests" / "helpers" / "config_tensors.py"),
                       source, ",".join(ids), str(root / "images.txt"), str(root))
            made[source] = paths, {m: (described[m], np.load(root / f"{m}.npy")) for m in ids}
        return made[source]

    return tensors


@pytest.mark.slow
@pytest.mark.xdist_group("derived-preprocessing")   # one worker: configured_tensors, once
@pytest.mark.parametrize("source, model_id", DERIVED_CASES)
def test_derived_preprocessing_equals_the_sources_own_configured_transforms(
        source, model_id, configured_tensors):
    paths, cases = configured_tensors(source)
    described, theirs = cases[model_id]
    assert "error" not in described, described
    spec = validate(contract(described["preprocess"], described["input_shape"]))
    ours = preprocess_batch(paths, spec)
    assert ours.shape == theirs.shape == (len(paths), *described["input_shape"])
    allowed = LEVELS_ALLOWED.get((source, model_id), 0.0)
    assert float(level_diffs(ours, theirs, spec).max()) <= allowed, (source, model_id)


@pytest.mark.slow
def test_paddleclas_models_of_other_sizes_take_their_own_repository_config():
    """PaddleClas's package ships one inference config (crop 224). A model whose own config
    in its repository evaluates at another size gets that config, named with its file and
    commit (converters/paddleclas/eval_configs.json); a name like LeViT_128 (a width, not
    pixels) is no longer taken for a size; a model whose own config the contract cannot
    express (CvT: Pillow decode, fixed resize) is unsupported, naming the config's steps."""
    from orchestrator.derive import describe_many

    commit = json.loads((REPO / "converters" / "paddleclas" / "eval_configs.json")
                        .read_text())["commit"]
    got = describe_many("paddleclas", ["SwinTransformer_base_patch4_window12_384", "LeViT_128",
                                       "CvT_13_384", "CLIP_vit_large_patch14_336"])
    swin = got["SwinTransformer_base_patch4_window12_384"]
    assert swin["input_shape"] == [3, 384, 384]
    assert (swin["preprocess"]["resize_short"], swin["preprocess"]["resize_backend"],
            swin["preprocess"]["interpolation"]) == (438, "pillow", "bicubic")
    assert swin["derived_from"]["preprocess"] == (
        "PaddleClas ppcls/configs/ImageNet/SwinTransformer/"
        f"SwinTransformer_base_patch4_window12_384.yaml at {commit[:12]} "
        "(DataLoader.Eval.dataset.transform_ops)")
    assert got["LeViT_128"]["input_shape"] == [3, 224, 224]
    assert got["CvT_13_384"]["error"]["kind"] == "unsupported"
    assert "ResizeImage(size=384" in got["CvT_13_384"]["error"]["message"]
    assert "no config of it" in got["CLIP_vit_large_patch14_336"]["error"]["message"]


@pytest.mark.slow
def test_mindcv_models_without_a_size_take_their_class_default():
    """mindcv's swinv2 cfgs give no input_size and its repository has a config for
    swinv2_tiny_window8 alone; SwinTransformerV2 builds its windows for image_size=256 (the
    224 px assumed before made its forward fail in the sweep). Where the entry point passes
    a size (vit_b_16_384) or the cfg has one, that stays."""
    from orchestrator.derive import describe_many

    got = describe_many("mindcv", ["swinv2_base_window8", "vit_b_16_384", "resnet18"])
    swin = got["swinv2_base_window8"]
    assert swin["input_shape"] == [3, 256, 256] and swin["preprocess"]["crop"] == 256
    assert swin["derived_from"]["input_shape"] == (
        "mindcv/models/swintransformerv2.py (SwinTransformerV2's image_size=256)")
    assert got["vit_b_16_384"]["input_shape"] == [3, 384, 384]
    assert got["resnet18"]["input_shape"] == [3, 224, 224]
    assert "default_cfgs['resnet18']" in got["resnet18"]["derived_from"]["input_shape"]


@pytest.mark.slow
def test_mmpretrain_classifiers_whose_backbone_holds_the_classes_derive_and_build():
    """mmpretrain's VGG and InceptionV3 configs set num_classes on the backbone (their head is
    a plain ClsHead): derive reads it there, and the worker builds them with the entry's class
    count on the backbone (they were `unsupported`, "no model.head.num_classes")."""
    from orchestrator.derive import describe_many

    got = describe_many("mmpretrain", ["vgg11_8xb32_in1k", "inception-v3_3rdparty_8xb32_in1k",
                                       "resnet18_8xb32_in1k"])
    assert got["vgg11_8xb32_in1k"]["num_classes"] == 1000
    assert got["vgg11_8xb32_in1k"]["derived_from"]["num_classes"].endswith(
        "vgg11_8xb32_in1k.py (model.backbone.num_classes)")
    assert got["inception-v3_3rdparty_8xb32_in1k"]["input_shape"] == [3, 299, 299]
    assert got["resnet18_8xb32_in1k"]["derived_from"]["num_classes"].endswith(
        "(model.head.num_classes)")
    code = ("import torch; from converters.mmpretrain.worker import build_model; "
            "m = build_model('vgg11_8xb32_in1k', 7); "
            "print(tuple(m(torch.zeros(1, 3, 224, 224), mode='tensor').shape))")
    assert run_in_env(MM_PYTHON, "-c", code).stdout.strip().splitlines()[-1] == "(1, 7)"


@pytest.mark.slow
def test_add_for_each_source_writes_a_reviewable_entry_and_refuses_a_typo(tmp_path):
    manifest = tmp_path / "zoo.yaml"
    added = {"mmpretrain": "deit-tiny_4xb256_in1k", "paddleclas": "MobileNetV3_small_x0_35",
             "mindcv": "pit_ti"}
    for source, model_id in added.items():
        done = run_pipeline("add", source, model_id, "--manifest", str(manifest))
        assert done.returncode == 0, done.stderr
    entries = {e["model_id"]: e for e in load_manifest(manifest)}
    text = manifest.read_text()
    deit = entries["deit-tiny_4xb256_in1k"]
    # mmpretrain's own config and metafile, spelled out and named in a comment.
    assert deit["preprocess"]["interpolation"] == "bicubic" and deit["input_shape"][1] == 224
    assert deit["published"]["top1"] > 0 and "metafile.yml" in deit["published"]["reference"]
    assert deit["checkpoint"]["url"].startswith("https://download.openmmlab.com/")
    assert len(deit["checkpoint"]["sha256_prefix"]) == 8
    assert "configs/deit/deit-tiny_4xb256_in1k.py" in text
    paddle = entries["MobileNetV3_small_x0_35"]
    assert paddle["name"] == "paddleclas-mobilenetv3_small_x0_35"
    assert paddle["checkpoint"]["digest_unpublished"] is True and "published" not in paddle.data
    assert "inference_cls.yaml" in text
    pit = entries["pit_ti"]
    assert pit["preprocess"]["resize_short"] == 248   # floor(224 / 0.9), as mindcv computes
    assert pit["preprocess"]["interpolation"] == "bicubic"

    before = manifest.read_text()
    again = run_pipeline("add", "mindcv", "pit_ti", "--manifest", str(manifest))
    assert again.returncode == 2 and "already entry 'mindcv-pit_ti'" in again.stderr
    typo = run_pipeline("add", "mmpretrain", "deit-tiny", "--manifest", str(manifest))
    assert typo.returncode == 2
    assert "no model 'deit-tiny'" in typo.stderr and "deit-tiny_4xb256_in1k" in typo.stderr
    assert manifest.read_text() == before

    listed = run_pipeline("list-models", "paddleclas", "mobilenetv3_small*")
    assert listed.returncode == 0
    assert "MobileNetV3_small_x0_35" in listed.stdout and "mobilenet_v3" in listed.stdout
    assert "not ImageNet-1k" not in listed.stdout
    # mmpretrain's metafile names the dataset: its CIFAR configs say so (and the zoo sweep
    # leaves them out of its ImageNet-1k sample).
    listed = run_pipeline("list-models", "mmpretrain", "resnet50_8xb*")
    assert listed.returncode == 0
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[:-1]}
    assert lines["resnet50_8xb16_cifar10"].endswith("(CIFAR-10, not ImageNet-1k)")
    assert "not ImageNet-1k" not in lines["resnet50_8xb32_in1k"]


@pytest.mark.slow
def test_paddleclas_checkpoint_maker_says_when_the_sources_own_forward_fails(tmp_path):
    """A model PaddleClas's own code cannot run (the sweep's MAE_vit_huge_patch14 normalizes
    an already pooled feature, whatever the input; here DeiT at an input size its patch
    embedding refuses) is the source's failure: the maker exits CANNOT_BUILD (3) after an
    `unsupported:` line in PaddleClas's words, writes nothing, and a sweep counts it as
    `unsupported` (converters/checkpoint_batch.py), not as the maker's error."""
    from converters.checkpoint_batch import CANNOT_BUILD

    out = tmp_path / "deit.pdparams"
    done = subprocess.run([str(PADDLE_PYTHON), "-m", "converters.paddleclas.make_checkpoint",
                           "--model-id", "DeiT_tiny_patch16_224", "--size", "96",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == CANNOT_BUILD, done.stderr[-2000:]
    # in the worker's words (converters/worker_flow.py source_failure, "paddleclas")
    assert ("unsupported: paddleclas's own code cannot run DeiT_tiny_patch16_224 on input "
            "[3, 96, 96] here: AssertionError: Input image size (96*96)") in done.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_model_the_sources_own_code_cannot_build_is_unsupported_in_its_words(tmp_path):
    """mindcv 0.3's rexnet does not build on MindSpore 2.7.2 (its _initialize_weights reshapes
    a Tensor before its initializer ran). A user's entry for it is `unsupported`, naming the
    source's code and its error, not an internal error: whatever the checkpoint, the worker
    stops at build (here a file that is no checkpoint at all, never read)."""
    import hashlib

    ckpt = tmp_path / "rexnet_10.ckpt"
    ckpt.write_bytes(b"never read: the model does not build")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"version": 1, "models": [{
        "name": "rexnet", "source": "mindcv", "model_id": "rexnet_10", "num_classes": 1000,
        "checkpoint": {"url": ckpt.as_uri(),
                       "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}}]}))
    proc = run_pipeline("--manifest", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "rexnet" / "report.json").read_text())
    assert report["status"] == "unsupported", (report.get("error"), proc.stdout[-2000:])
    assert (report["error"]["stage"], report["error"]["kind"]) == ("convert", "unsupported")
    assert report["error"]["message"].startswith(
        "mindcv's own code cannot build rexnet_10 here: RuntimeError: The Tensor(shape=")
    assert not (tmp_path / "out" / "rexnet" / "model.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("source, models, expect", [
    # a transformer, a 256-px model, EfficientNet (its own centre crop; onnxsim's
    # fuse_pad_into_conv broke its seeded checkpoint: converters/simplify.py RETRIES) and a
    # CIFAR config whose test pipeline reads no image file
    ("mmpretrain", "deit-tiny_4xb256_in1k,edgenext-xxsmall_3rdparty_in1k,"
                   "efficientnet-b0_3rdparty_8xb32_in1k,resnet18_8xb16_cifar10",
     {"deit-tiny_4xb256_in1k": "passed", "edgenext-xxsmall_3rdparty_in1k": "passed",
      "efficientnet-b0_3rdparty_8xb32_in1k": "passed",
      "resnet18_8xb16_cifar10": ("unsupported", "LoadImageFromFile", "derive")}),
    # RepVGG, exported in the inference form PaddleClas's own re_parameterize() makes, A1 and
    # then A0 in one warm worker (A0's new convs were named from paddle's process-wide
    # counter, after A1's, and jit.save refused a duplicate name: an error only after
    # another RepVGG); Swin, whose paddle2onnx graph onnxsim's optimizer turns unsorted,
    # simplified without it (was an error), its Constant-node weights perturbed by the
    # canary; MicroNet, whose paddle2onnx shape declarations ONNX Runtime cannot plan
    # with inside onnxsim, simplified without them (was an error); MobileViTV3, whose F.fold
    # paddle's dynamic-to-static conversion refuses at a dynamic batch and paddle2onnx at
    # batch 1 (no fold op), exported through a rewrite of its patch folding as reshapes
    # (converters/paddleclas/rewrites.py) at a dynamic batch (was unsupported, and before
    # that an internal error)
    ("paddleclas", "RepVGG_A1,RepVGG_A0,SwinTransformer_tiny_patch4_window7_224,MicroNet_M3,"
                   "MobileViTV3_x0_5",
     {"RepVGG_A1": "passed", "RepVGG_A0": "passed",
      "SwinTransformer_tiny_patch4_window7_224": "passed", "MicroNet_M3": "passed",
      "MobileViTV3_x0_5": "passed"}),
    # xcit: a functional ops.unstack inside its attention's construct (Unstack), replaced
    # while the exporter parses it (was unsupported, as cait); edgenext passes through three
    # rewrites (exact GELU, its positional encoding's LogicalNot, XCA's L2Normalize) and mobilevit,
    # at the 256 px of MindCV's own config, through two (its bilinear resize as matrix
    # products, its blocks' batch left to -1), both unsupported before. (Each rule:
    # test_export_rewrites.py.) coat's class token and padding, constants at the traced
    # batch 1 entering Concats, take the graph's batch (was a failed batch check). convit,
    # whose class token takes the batch the same way, runs at any batch since its constant
    # Reshapes keep their traced shapes (free_traced_batch): it shipped at a fixed batch 1
    # (the fallback after a failed batch check, now tested in test_batch_units.py), before
    # that it was a failed check, a pipeline error at onnxsim's run at batch 2, and before its
    # class token's fix, onnx.checker refused its declared shapes.
    ("mindcv", "edgenext_xx_small,mobilevit_xx_small,xcit_tiny_12_p16_224,coat_lite_tiny,"
               "convit_tiny,rexnet_10",
     {"edgenext_xx_small": "passed", "mobilevit_xx_small": "passed",
      "xcit_tiny_12_p16_224": "passed",
      "coat_lite_tiny": "passed",
      "convit_tiny": "passed",
      # mindcv's own rexnet code does not build on MindSpore 2.7.2: no checkpoint, no run
      "rexnet_10": ("unsupported", "mindcv's own code cannot build rexnet_10 here", "build")}),
])
def test_zoo_sweep_on_a_small_sample(source, models, expect, tmp_path):
    # MindCV's five checkpoints go through the pipeline in chunks of three (--chunk: two
    # runs, each starting its workers afresh; chunks of two paid a third MindSpore start),
    # the others in one run (a warm worker, which paddleclas's RepVGG pair needs).
    chunk = ["--chunk", "3"] if source == "mindcv" else []
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "zoo_sweep.py"),
                           "--source", source, "--models", models, "--out", str(tmp_path),
                           *chunk], cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stderr[-3000:]
    if chunk:
        assert "running the pipeline on entries 4-5 of 5" in done.stdout, done.stdout[-3000:]
    # Each chunk's models are removed once it is done; the reports stay (the sweep's table).
    left = {p.name for p in (tmp_path / "artifacts" / source).glob("*/*")}
    assert left == {"report.json"}, left
    result = json.loads((tmp_path / f"{source}.json").read_text())
    got = {r["model_id"]: r["status"] for r in result["models"]}
    status = {m: e if isinstance(e, str) else e[0] for m, e in expect.items()}
    assert got == status, [r for r in result["models"] if r["status"] != status[r["model_id"]]]
    passed = sum(s == "passed" for s in status.values())
    assert result["summary"]["coverage_percent"] == pytest.approx(100 * passed / len(expect))
    table = (tmp_path / f"{source}.md").read_text()
    assert all(m in table for m in expect)
    for row in result["models"]:
        report_file = tmp_path / "artifacts" / source / row["name"] / "report.json"
        if row["status"] == "unsupported":   # the cause, in the source's own words
            _, words, where = expect[row["model_id"]]
            assert words in row["cause"]
            if where in ("derive", "build"):  # refused before a checkpoint or a run
                assert row["cause"].startswith(f"{where}/") and not report_file.exists()
                continue
            # Converted until the exporter refused: the report says so, and no model.
            report = json.loads(report_file.read_text())
            assert report["status"] == "unsupported" and not report["passed"]
            assert (report["error"]["stage"], report["error"]["kind"]) == ("convert", where)
            assert not (report_file.parent / "model.onnx").exists()
            continue
        report = json.loads(report_file.read_text())
        if row["status"] == "failed":
            _, words, node = expect[row["model_id"]]
            assert row["cause"].startswith(words), row
            assert report["status"] == "failed" and node in report["checks"][0]["detail"]
            assert not (report_file.parent / "model.onnx").exists()
            continue
        # Derived at run time from the five fields, and recorded where they came from.
        assert set(report["derived"]["fields"]) >= {"preprocess", "input_shape"}
        assert report["status"] == "passed" and row["nodes"] > 0
        if row["model_id"] == "mobilevit_xx_small":   # from MindCV's own repository config
            assert report["entry"]["input_shape"] == [3, 256, 256]
            assert "configs/mobilevit/mobilevit_xx_small_ascend.yaml" in \
                report["derived"]["fields"]["input_shape"], report["derived"]
        if row["model_id"].startswith("edgenext"):
            assert report["entry"]["input_shape"] == [3, 256, 256]
            assert report["onnx"]["inputs"][0]["shape"][1:] == [3, 256, 256]
        rewritten = {"edgenext_xx_small": ("GELU(approximate=False)",
                                           "PositionalEncodingFourier", "XCA"),
                     "mobilevit_xx_small": ("Interpolate(bilinear, align_corners)",
                                            "MobileViTBlock"),
                     "xcit_tiny_12_p16_224": ("ops.unstack", "PositionalEncodingFourier"),
                     "coat_lite_tiny": ("GELU(approximate=False)",)}
        if row["model_id"] in rewritten:   # and the batch check passed (status passed)
            fixups = " ".join(report["source"]["export_fixups"])
            assert all(f"x {rule} ->" in fixups for rule in rewritten[row["model_id"]]), fixups
        if row["model_id"] == "coat_lite_tiny":
            assert "constant(s) at the traced batch 1 entering a Concat" in fixups, fixups
        if row["model_id"].startswith("SwinTransformer"):
            assert [t["optimizer"] for t in report["onnx"]["onnxsim_failed"]] == \
                ["on", "on, without fuse_pad_into_conv"], report["onnx"]
            assert "topologically sorted" in report["onnx"]["onnxsim_failed"][0]["error"]
            assert report["onnx"]["optimizer"].startswith("off")
            assert report["verification"]["canary"]["status"] == "caught", report["verification"]
        if row["model_id"] == "MobileViTV3_x0_5":   # both rewrites, at a dynamic batch
            fixups = " ".join(report["source"]["export_fixups"])
            assert "MobileViTV3BlockV2.unfolding" in fixups, fixups
            assert "MobileViTV3BlockV2.folding" in fixups, fixups
        if row["model_id"] == "RepVGG_A0":
            assert any("re_parameterize()" in n for n in report["source"]["export_fixups"])
            # after RepVGG_A1, in the same warm worker
            first = json.loads((report_file.parent.parent / "paddleclas-repvgg_a1"
                                / "report.json").read_text())["source"]["worker"]
            now = report["source"]["worker"]
            assert now["pid"] == first["pid"] and now["job"] > first["job"], (first, now)
        if row["model_id"] == "convit_tiny":
            fixups = " ".join(report["source"]["export_fixups"])
            assert "constant(s) at the traced batch 1 entering a Concat" in fixups, fixups
        # a dynamic batch: no fixed-batch fallback
        assert "batch" not in report["onnx"], report["onnx"]["batch"]
        if row["model_id"] == "MicroNet_M3":
            tried = [t["optimizer"] for t in report["onnx"]["onnxsim_failed"]]
            assert tried[0] == "on" and "re-use buffer" in report["onnx"]["onnxsim_failed"][0][
                "error"], report["onnx"]
            assert report["onnx"]["optimizer"] == "on, the exporter's intermediate shapes dropped"
    # One maker process made the sample's checkpoints (scripts/checkpoint_jobs.py); the last
    # one made after the others there is the one made alone in a fresh process, byte for byte.
    last = [r for r in result["models"] if r["status"] == "passed"][-1]
    entry = json.loads((tmp_path / "artifacts" / source / last["name"] / "report.json")
                       .read_text())["entry"]
    alone = zoo_sweep.make_checkpoints(source, {last["model_id"]: entry}, tmp_path / "alone",
                                       0, 1200)
    assert alone[last["model_id"]].status == "done", alone
    assert (zoo_sweep.checkpoint_path(source, last["model_id"], tmp_path / "alone", 0, "images")
            .read_bytes() == zoo_sweep.checkpoint_path(source, last["model_id"],
                                                       tmp_path / "checkpoints", 0, "images")
            .read_bytes()), last["model_id"]
    if source == "paddleclas":   # again with --resume: every report kept, nothing converted
        runs = {r["name"]: json.loads((tmp_path / "artifacts" / source / r["name"]
                                       / "report.json").read_text())["run_id"]
                for r in result["models"]}
        again = subprocess.run([sys.executable, str(REPO / "scripts" / "zoo_sweep.py"),
                                "--source", source, "--models", models, "--out", str(tmp_path),
                                "--resume"], cwd=REPO, capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"--resume: {len(expect)} of {len(expect)} converted before, kept" in again.stdout
        assert "running the pipeline" not in again.stdout
        assert runs == {name: json.loads((tmp_path / "artifacts" / source / name
                                          / "report.json").read_text())["run_id"]
                        for name in runs}
        resumed = json.loads((tmp_path / f"{source}.json").read_text())
        assert {r["model_id"]: r["status"] for r in resumed["models"]} == got

