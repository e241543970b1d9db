"""ImageNet-style evaluation with MindCV's own code (test helper, mindspore env).

As mindcv's validate.py does: create_dataset (ImageFolderDataset over class sub-folders),
create_transforms(is_training=False), create_loader, then mindspore Model.eval with
Top1/Top5CategoricalAccuracy. Synset folders are given their ImageNet indices through
ImageFolderDataset's class_indexing (a subset of classes would otherwise be numbered 0..k-1).
Nothing of the pipeline's code is used.

    python tests/helpers/mindcv_eval.py eval ROOT SYNSETS_FILE MODEL_ID CHECKPOINT OUT.json
    python tests/helpers/mindcv_eval.py predict FLAT_DIR - MODEL_ID CHECKPOINT OUT.json
eval -> {"top1", "top5", "images"}; predict -> {"top5_pred": {file name: [5 indices]}}
"""
import json
import sys
from pathlib import Path

import mindspore as ms  # first: protobuf (see converters/mindcv/worker.py)
import numpy as np


def network(model_id, checkpoint):
    import mindcv

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    net = mindcv.create_model(model_id, num_classes=1000, pretrained=False)
    params = ms.load_checkpoint(checkpoint)
    params.pop("demo_checkpoint", None)
    ms.load_param_into_net(net, params, strict_load=True)
    net.set_train(False)
    return net


def evaluate(root, synsets_file, net):
    from mindcv.data import create_dataset, create_loader, create_transforms

    synsets = sorted(Path(synsets_file).read_text().split())
    present = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    dataset = create_dataset(name="imagenet", root=root, split="", shuffle=False,
                             class_indexing={s: synsets.index(s) for s in present})
    transforms = create_transforms(dataset_name="imagenet", image_resize=224,
                                   is_training=False, crop_pct=0.875,
                                   interpolation="bilinear")
    loader = create_loader(dataset, batch_size=8, drop_remainder=False, is_training=False,
                           transform=transforms, num_parallel_workers=1)
    from mindcv.loss import create_loss

    model = ms.Model(net, loss_fn=create_loss(name="CE"),
                     metrics={"top1": ms.nn.Top1CategoricalAccuracy(),
                              "top5": ms.nn.Top5CategoricalAccuracy()})
    scores = model.eval(loader, dataset_sink_mode=False)
    return {"top1": 100 * scores["top1"], "top5": 100 * scores["top5"],
            "images": dataset.get_dataset_size()}


def predict(flat_dir, net):
    from mindcv.data import create_transforms

    ops = create_transforms(dataset_name="imagenet", image_resize=224, is_training=False,
                            crop_pct=0.875, interpolation="bilinear")
    preds = {}
    for path in sorted(Path(flat_dir).iterdir()):
        img = np.fromfile(path, dtype=np.uint8)
        for op in ops:
            img = op(img)
        logits = net(ms.Tensor(img[None].astype(np.float32))).asnumpy()[0]
        preds[path.name] = [int(c) for c in np.argsort(-logits)[:5]]
    return {"top5_pred": preds}


def main(mode, root, synsets_file, model_id, checkpoint, out):
    net = network(model_id, checkpoint)
    result = evaluate(root, synsets_file, net) if mode == "eval" else predict(root, net)
    Path(out).write_text(json.dumps(result))
    import os
    os._exit(0)  # skip MindSpore's noisy teardown


if __name__ == "__main__":
    main(*sys.argv[1:])
