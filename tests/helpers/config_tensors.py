"""The tensors a source's own eval transforms make of some images, configured the way the
source configures them for MODEL_ID (test helper; none of the pipeline's code).

    python tests/helpers/config_tensors.py SOURCE MODEL_ID[,MODEL_ID...] IMAGES.txt OUT_DIR

writes OUT_DIR/MODEL_ID.npy for each model, all in one process (the framework's imports,
most of a run's time, are paid once).

mmpretrain: the model config's own test pipeline (Compose of its dicts) and the built
model's data_preprocessor. PaddleClas: what its `paddleclas` predictor does for an ImageNet
model (cv2.imread, BGR->RGB, the ops of deploy/configs/inference_cls.yaml), or, for a model
whose own config in PaddleClas's repository evaluates at another crop, that config's Eval
transform_ops as recorded in converters/paddleclas/eval_configs.json, fed to the same
`create_operators` (its DecodeImage is the same cv2 decode and BGR->RGB). MindCV:
create_transforms(imagenet, eval) given the model's default cfg values as they stand.
"""
import json
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def mmpretrain(model_id, paths):
    import torch
    from mmengine.dataset import Compose
    from mmpretrain import get_model
    from mmpretrain.apis.model import ModelHub
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    config = ModelHub.get(model_id).config
    pipeline = Compose(config.test_dataloader.dataset.pipeline)
    model = get_model(model_id, pretrained=False)
    out = []
    with torch.no_grad():
        for path in paths:
            data = pipeline(dict(img_path=path))
            batch = model.data_preprocessor({"inputs": [data["inputs"]],
                                             "data_samples": [data["data_samples"]]}, False)
            out.append(batch["inputs"].float().numpy())
    return np.concatenate(out)


def paddleclas(model_id, paths):
    import os

    import cv2
    import paddleclas
    import yaml
    from paddleclas.deploy.python.preprocess import create_operators

    import json

    config = os.path.join(os.path.dirname(paddleclas.__file__),
                          "deploy/configs/inference_cls.yaml")
    listed = yaml.safe_load(open(config))["PreProcess"]["transform_ops"]
    crop = next(op["CropImage"]["size"] for op in listed if "CropImage" in op)
    own = json.loads(open(os.path.join(os.path.dirname(__file__), "..", "..", "converters",
                                       "paddleclas", "eval_configs.json")).read())
    own = own["models"].get(model_id) or {}
    if own.get("crop", crop) != crop:
        listed = [op for op in own["transform_ops"] if "DecodeImage" not in op]
        listed.append({"ToCHWImage": None})
    ops = create_operators(listed)
    out = []
    for path in paths:
        img = cv2.imread(path)[:, :, ::-1]
        for op in ops:
            img = op(img)
        out.append(img[None])
    return np.concatenate(out).astype(np.float32)


def mindcv(model_id, paths):
    import mindspore  # noqa: F401 - first, before anything loads protobuf
    from mindcv.data import create_transforms
    from mindcv.models import registry

    cfg = registry._model_pretrained_cfgs.get(model_id) or {}
    kwargs = {}
    if cfg.get("crop_pct"):
        kwargs["crop_pct"] = cfg["crop_pct"]
    if cfg.get("interpolation"):
        kwargs["interpolation"] = cfg["interpolation"]
    size = (cfg.get("input_size") or (3, 224))[1]
    # MindCV's own per-model config (its repository's configs/, recorded in
    # converters/mindcv/eval_configs.json) where it evaluates at another size: validate.py's
    # create_transforms with that file's settings.
    own = json.load(open(os.path.join(os.path.dirname(__file__), "..", "..", "converters",
                                      "mindcv", "eval_configs.json")))["models"].get(model_id)
    if own and own["image_resize"] != size:
        size = own["image_resize"]
        kwargs = {k: own[k] for k in ("crop_pct", "interpolation", "mean", "std")}
    ops = create_transforms("imagenet", image_resize=size, is_training=False, **kwargs)
    out = []
    for path in paths:
        img = np.frombuffer(open(path, "rb").read(), dtype=np.uint8)
        for op in ops:
            img = op(img)
        out.append(np.asarray(img)[None])
    return np.concatenate(out).astype(np.float32)


if __name__ == "__main__":
    source, model_ids, images, target = sys.argv[1:]
    files = [p for p in open(images).read().split("\n") if p]
    tensors = {"mmpretrain": mmpretrain, "paddleclas": paddleclas, "mindcv": mindcv}[source]
    for model_id in model_ids.split(","):
        np.save(os.path.join(target, f"{model_id}.npy"), tensors(model_id, files))
