"""ImageNet-style evaluation with PaddleClas's own code (test helper, paddle env).

The eval transforms are built by PaddleClas's `create_operators` from the transform list of
ppcls/configs/ImageNet/Res2Net/Res2Net50_14w_8s.yaml (DataLoader.Eval), the label file is read
as ppcls ImageNetDataset reads it (`delimiter` split, image_root joined), the model is
ppcls.arch.backbone's with paddle.load + set_state_dict, and top-k is paddle.metric.accuracy
(what ppcls TopkAcc calls). Nothing of the pipeline's code is used.

    python tests/helpers/paddle_eval.py ROOT LABEL_FILE DELIMITER MODEL_ID CHECKPOINT OUT.json
OUT.json: {"top1", "top5", "images", "top5_pred": {file name: [5 class indices]}}
"""
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

EVAL_TRANSFORMS = [  # Res2Net50_14w_8s.yaml, DataLoader.Eval.dataset.transform_ops
    {"DecodeImage": {"to_rgb": True, "channel_first": False}},
    {"ResizeImage": {"resize_short": 256}},
    {"CropImage": {"size": 224}},
    {"NormalizeImage": {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406],
                        "std": [0.229, 0.224, 0.225], "order": ""}},
    {"ToCHWImage": None},
]


def main(root, label_file, delimiter, model_id, checkpoint, out):
    import paddle
    from paddleclas.deploy.python.preprocess import create_operators
    from paddleclas.ppcls.arch import backbone

    delimiter = {"space": " ", "tab": "\t"}[delimiter]
    paddle.set_device("cpu")
    ops = create_operators(EVAL_TRANSFORMS)
    images, labels = [], []
    with open(os.path.join(root, label_file)) as f:  # ImageNetDataset._load_anno
        for line in f.readlines():
            name, label = line.strip().split(delimiter)
            images.append(os.path.join(root, name))
            labels.append(np.int64(label))
    with paddle.utils.unique_name.guard():
        model = getattr(backbone, model_id)(pretrained=False, class_num=1000)
    state = paddle.load(checkpoint)
    model.set_state_dict({k: v for k, v in state.items() if "@@" not in k})
    model.eval()
    hits, preds = {1: [], 5: []}, {}
    for start in range(0, len(images), 8):
        batch = []
        for path in images[start:start + 8]:
            with open(path, "rb") as f:
                img = f.read()
            for op in ops:
                img = op(img)
            batch.append(img)
        x = paddle.to_tensor(np.stack(batch).astype("float32"))
        y = paddle.to_tensor(np.array(labels[start:start + 8]).reshape([-1, 1]))
        with paddle.no_grad():
            logits = model(x)
        for k in (1, 5):
            hits[k].append(float(paddle.metric.accuracy(logits, y, k=k)) * len(batch))
        top5 = paddle.topk(logits, 5, axis=1)[1].numpy()
        for path, row in zip(images[start:start + 8], top5):
            preds[Path(path).name] = [int(c) for c in row]
    n = len(images)
    Path(out).write_text(json.dumps({"top1": 100 * sum(hits[1]) / n,
                                     "top5": 100 * sum(hits[5]) / n,
                                     "images": n, "top5_pred": preds}))


if __name__ == "__main__":
    main(*sys.argv[1:])
