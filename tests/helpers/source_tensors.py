"""The tensors a source's own eval transforms make of some images (test helper).

Runs in the source's environment: the pipeline's adapter configures the source's own
transform code (mmpretrain's pipeline + ClsDataPreprocessor, PaddleClas's deploy
preprocess ops, MindCV's transforms_imagenet_eval) from a manifest preprocess block.

    python tests/helpers/source_tensors.py SOURCE PREPROCESS.json IMAGES.txt OUT.npy

PREPROCESS.json holds one block (OUT.npy gets its tensors) or a list of blocks (OUT.npy gets
an .npz archive: arr_0, arr_1, ... in the list's order), made in one process.
"""
import json
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def main(source, cfg_path, images, out):
    if source == "mmpretrain":
        from converters.mmpretrain.worker import MMPretrainAdapter as Adapter
    elif source == "paddleclas":
        from converters.paddleclas.worker import PaddleClasAdapter as Adapter
    else:
        from converters.mindcv.worker import MindCVAdapter as Adapter
    blocks = json.loads(open(cfg_path).read())
    paths = [p for p in open(images).read().split("\n") if p]
    made = []
    for cfg in blocks if isinstance(blocks, list) else [blocks]:
        adapter = Adapter()
        adapter.config = None   # no model config to check the block against: use it as given
        per_image, collate = adapter.transform(cfg)
        made.append(np.concatenate([collate([per_image(p)]) for p in paths]))
    if isinstance(blocks, list):
        with open(out, "wb") as f:
            np.savez(f, *made)
    else:
        np.save(out, made[0])


if __name__ == "__main__":
    main(*sys.argv[1:])
