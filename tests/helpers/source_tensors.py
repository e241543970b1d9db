"""The tensors a source's own eval transforms make of some images (test helper).

Runs in the source's environment: the pipeline's adapter configures the source's own
transform code (mmpretrain's pipeline + ClsDataPreprocessor, PaddleClas's deploy
preprocess ops, MindCV's transforms_imagenet_eval) from a manifest preprocess block.

    python tests/helpers/source_tensors.py SOURCE PREPROCESS.json IMAGES.txt OUT.npy
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
    adapter = Adapter()
    adapter.config = None   # no model config to check the block against: use it as given
    per_image, collate = adapter.transform(json.loads(open(cfg_path).read()))
    paths = open(images).read().split("\n")
    np.save(out, np.concatenate([collate([per_image(p)]) for p in paths if p]))


if __name__ == "__main__":
    main(*sys.argv[1:])
