"""mmpretrain worker: build with mmpretrain's code, load strictly, export with torch.onnx.

Runs only in the mmpretrain environment:
    .venvs/mmpretrain/bin/python -m converters.mmpretrain.worker WORKDIR/job.json
The order of the stages lives in converters/worker_flow.py; this file is what is
mmpretrain-specific about each.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from converters import worker_flow
from converters.protocol import WorkerError, worker_main

warnings.filterwarnings("ignore")  # mmcv-lite warns about ops it does not ship


def build_model(model_id: str, num_classes: int):
    """An mmpretrain ImageClassifier from its model-index name, random init, eval mode."""
    from mmpretrain import get_model

    from converters.mmpretrain.derive import _metainfo, classes_part

    # The class count goes where the config sets it: the head, or for VGG and InceptionV3 the
    # backbone (derive.classes_part); their ClsHead takes no num_classes.
    part = classes_part(_metainfo(model_id).config.model) or "head"
    try:
        model = get_model(model_id, pretrained=False, **{part: dict(num_classes=num_classes)})
    except (ValueError, KeyError) as exc:
        raise WorkerError("model_id",
                          f"mmpretrain does not know model {model_id!r}: {exc}") from exc
    return model.eval()


# Heads whose eval forward returns several score tensors, and how the head's own predict()
# makes the one score it classifies with (mmpretrain/models/heads/<head>.py): ConformerHead
# returns (conv score, transformer score) and predict() adds them. Deit, LeViT and
# EfficientFormer heads combine their distillation scores inside forward() already.
COMBINE_SCORES = {"ConformerHead": lambda scores: sum(scores[1:], scores[0])}


def logits(model, x):
    """The classification scores the source's predict() uses, from mode='tensor'."""
    out = model(x, mode="tensor")
    if isinstance(out, (tuple, list)):
        head = type(getattr(model, "head", None)).__name__
        if head not in COMBINE_SCORES:
            raise WorkerError("unsupported", f"{head}'s forward returns {len(out)} tensors and "
                                             "how its predict() combines them is not known "
                                             "(converters/mmpretrain/worker.py COMBINE_SCORES)")
        out = COMBINE_SCORES[head](list(out))
    return out


class _Logits:
    """Wraps ImageClassifier so the traced graph is tensor in -> logits out (the scores its
    predict() uses: `logits`)."""

    def __new__(cls, model):
        import torch

        class Wrapper(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input):  # noqa: A002 - the ONNX input name
                return logits(self.inner, input)

        return Wrapper(model).eval()


def config_differences(config, cfg: dict, model_id: str) -> list[str]:
    """Where the manifest's preprocess differs from the model config's test pipeline and data
    preprocessor (the source is the ground truth), read once by converters/mmpretrain/derive.py;
    a config the contract cannot express is WorkerError('unsupported') from there."""
    import numpy as np

    from converters.mmpretrain.derive import preprocess_from_config
    from manifests.schema import RESIZE_FORMS

    theirs = preprocess_from_config(config, model_id)
    scale = float(cfg.get("scale", 1.0))
    mine = {**{k: cfg.get(k) for k in RESIZE_FORMS}, "crop": cfg["crop"],
            "resize_backend": cfg.get("resize_backend", "pillow"),
            "interpolation": cfg["interpolation"],
            "mean": [m / scale for m in cfg["mean"]], "std": [v / scale for v in cfg["std"]],
            "to_rgb": bool(cfg.get("to_rgb", True))}
    found = []
    for key, value in mine.items():
        same = (np.allclose(value, theirs[key], rtol=1e-6) if key in ("mean", "std")
                else value == theirs.get(key))
        if not same:
            found.append(f"{key} {value!r} vs config {theirs.get(key)!r}")
    return found


def resize_steps(cfg: dict) -> list[dict]:
    """mmpretrain's own resize/crop steps for the manifest's resize form (manifests/schema.py
    RESIZE_FORMS), as its configs write them."""
    how = {"backend": cfg.get("resize_backend", "pillow"), "interpolation": cfg["interpolation"]}
    if "crop_padding" in cfg:
        return [dict(type="EfficientNetCenterCrop", crop_size=cfg["crop"],
                     crop_padding=cfg["crop_padding"], **how)]
    if "resize_fixed" in cfg:
        resize = dict(type="Resize", scale=(cfg["resize_fixed"], cfg["resize_fixed"]), **how)
    else:
        resize = dict(type="ResizeEdge", scale=cfg["resize_short"], edge="short", **how)
    return [resize, dict(type="CenterCrop", crop_size=cfg["crop"])]


class MMPretrainAdapter:
    framework = "mmpretrain"
    derive_module = "converters.mmpretrain.derive"

    def versions(self) -> dict:
        import mmcv
        import mmengine
        import mmpretrain
        import numpy
        import onnx
        import torch
        import torchvision

        return {"framework": "mmpretrain", "mmpretrain": mmpretrain.__version__,
                "mmengine": mmengine.__version__, "mmcv-lite": mmcv.__version__,
                "torch": torch.__version__, "torchvision": torchvision.__version__,
                "onnx": onnx.__version__, "numpy": numpy.__version__}

    def __init__(self):
        self.model_id, self.config = None, None

    def build(self, model_id: str, num_classes: int):
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        model = build_model(model_id, num_classes)
        if self.model_id is None:  # the job's model; later builds are candidate entries
            self.model_id, self.config = model_id, getattr(model, "_config", None)
        return model

    def state_shapes(self, model) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def load(self, model, checkpoint: Path, candidates: list[dict], num_classes: int) -> dict:
        from converters.mmpretrain import checkpoint as ck

        state, info = ck.load_checkpoint(checkpoint)
        model_state = model.state_dict()
        mapped, layout = ck.map_keys(state, set(model_state))
        info["layout"] = layout
        worker_flow.require_fit(
            self, {k: tuple(v.shape) for k, v in mapped.items()}, self.state_shapes(model),
            candidates, layout, ignore=lambda k: k.endswith("num_batches_tracked"),
            num_classes=num_classes)
        # Files from before BatchNorm tracked batches lack num_batches_tracked: keep the model's.
        for key, value in model_state.items():
            if key.endswith("num_batches_tracked") and key not in mapped:
                mapped[key] = value
        # Not strict: the source's own load hooks may drop buffers it re-derives from its
        # config (SwinTransformerV2 deletes relative_position_index / relative_coords_table
        # from any state dict it is given); require_fit has proven every tensor fits.
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        parameters = {name for name, _ in model.named_parameters()}
        if unexpected or any(key in parameters for key in missing):
            raise WorkerError("checkpoint_mismatch", f"torch did not load {missing[:5]}, "
                                                     f"left unused {unexpected[:5]}")
        if missing:
            info["buffers_rederived"] = {
                "count": len(missing), "first": missing[0],
                "why": "the source's own loading drops and re-derives these buffers"}
        # eval() again after loading, as mmpretrain's get_model(pretrained=...) orders them:
        # LeViT's and EfficientFormer's train(False) caches the attention biases from the
        # weights (`self.ab`), so the cache of the model as built would hold the init's zeros.
        # The reference logits would then use those, and the export (torch.onnx sets eval
        # again) the checkpoint's: a trained model refused for a fault of our own.
        model.eval()
        return info

    def transform(self, cfg: dict):
        """mmpretrain's own test pipeline (per image) + data preprocessor (per batch),
        configured from the manifest."""
        import torch
        from mmengine.dataset import Compose
        from mmpretrain.models import ClsDataPreprocessor
        from mmpretrain.registry import TRANSFORMS
        from mmpretrain.utils import register_all_modules

        register_all_modules(init_default_scope=True)
        if cfg.get("decode", "cv2") != "cv2":
            raise WorkerError("preprocess", f"mmpretrain decodes with cv2, manifest asks "
                                            f"{cfg['decode']!r}")
        differences = (config_differences(self.config, cfg, self.model_id) if self.config
                       else [])
        if differences:
            raise WorkerError(
                "preprocess", f"the manifest's preprocess disagrees with mmpretrain's own "
                f"config for {self.model_id}: {'; '.join(differences)}. mmpretrain evaluates "
                "this model with its config: fix the manifest entry.",
                {"differences": differences})
        pipeline = Compose([TRANSFORMS.build(t) for t in (
            dict(type="LoadImageFromFile", imdecode_backend="cv2"), *resize_steps(cfg),
            dict(type="PackInputs"))])
        scale = float(cfg.get("scale", 1.0))
        data_preprocessor = ClsDataPreprocessor(
            mean=[m / scale for m in cfg["mean"]], std=[s / scale for s in cfg["std"]],
            to_rgb=bool(cfg.get("to_rgb", True)))

        def per_image(path: str):
            return pipeline(dict(img_path=path))["inputs"]

        def collate(tensors):
            with torch.no_grad():
                batch = data_preprocessor({"inputs": tensors}, training=False)["inputs"]
            return batch.float().numpy()

        return per_image, collate

    def forward(self, model, inputs, batch_size: int):
        import torch

        x = torch.from_numpy(inputs)
        with torch.no_grad():
            outs = [logits(model, x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(outs).numpy()

    def for_inference(self, model) -> list[str]:
        return worker_flow.switch_to_inference(model.named_modules(), "switch_to_deploy",
                                               self.framework)

    def export(self, model, sample, path: Path, opset: int, dynamic_batch: bool,
               workdir: Path) -> list[str]:
        import torch

        from converters.mmpretrain.rewrites import rewritten

        axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        try:
            # converters/mmpretrain/rewrites.py: traced forms fixed while exporting only.
            with torch.no_grad(), rewritten(model) as notes:
                torch.onnx.export(_Logits(model), (torch.from_numpy(sample),), str(path),
                                  dynamo=False, opset_version=opset, input_names=["input"],
                                  output_names=["logits"], dynamic_axes=axes,
                                  do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 - any exporter failure is an export error
            raise WorkerError("export", f"torch.onnx.export failed at opset {opset}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        return notes


    def capture(self, model, inputs, record) -> None:
        import torch

        kinds = ((torch.nn.modules.conv._ConvNd, "conv"), (torch.nn.Linear, "linear"),
                 (torch.nn.modules.batchnorm._BatchNorm, "norm"))
        with worker_flow.hooked(model.named_modules(), kinds,
                                lambda module, hook: module.register_forward_hook(hook),
                                lambda out: out.detach().numpy(), record), torch.no_grad():
            model(torch.from_numpy(inputs), mode="tensor")


def handle(job: dict, workdir: Path) -> dict:
    return worker_flow.run(MMPretrainAdapter(), job, workdir)


if __name__ == "__main__":
    worker_main(handle)
