"""ImageNet-style evaluation with mmpretrain's own code (test helper, mmpretrain env).

mmpretrain's CustomDataset reads the folder + annotation file, the test pipeline of the
model's own config (for Res2Net: configs/_base_/datasets/imagenet_bs32_pil_resize.py) and the
model's own data preprocessor prepare the batches, `model.val_step` predicts and
`mmpretrain.evaluation.Accuracy` scores, as `tools/test.py` would. Nothing of the pipeline's
code is used.

    python tests/helpers/mm_eval.py ROOT ANN_FILE MODEL_ID CHECKPOINT OUT.json
OUT.json: {"top1", "top5", "images", "top5_pred": {file name: [5 class indices]}}
"""
import json
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def main(root, ann_file, model_id, checkpoint, out):
    from mmengine.dataset import pseudo_collate
    from mmpretrain import get_model
    from mmpretrain.datasets import CustomDataset
    from mmpretrain.evaluation import Accuracy
    from mmpretrain.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    model = get_model(model_id, pretrained=False)
    test_pipeline = model._config.test_dataloader.dataset.pipeline
    dataset = CustomDataset(data_root=root, ann_file=ann_file, pipeline=test_pipeline)
    # Our own test file, made by converters.mmpretrain.make_checkpoint in this session.
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(state, strict=True)
    model.eval()
    metric = Accuracy(topk=(1, 5))
    preds = {}
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=pseudo_collate)
    with torch.no_grad():
        for batch in loader:
            samples = model.val_step(batch)
            metric.process(None, [s.to_dict() for s in samples])
            for s in samples:
                preds[Path(s.img_path).name] = s.pred_score.topk(5).indices.tolist()
    scores = metric.evaluate(len(dataset))
    Path(out).write_text(json.dumps({"top1": float(scores["accuracy/top1"]),
                                     "top5": float(scores["accuracy/top5"]),
                                     "images": len(dataset), "top5_pred": preds}))


if __name__ == "__main__":
    main(*sys.argv[1:])
