"""Logits of a .ckpt on given inputs, computed MindSpore's own way (test helper).

Runs in the mindspore environment. Deliberately not the pipeline's loader: the plain
mindspore.load_checkpoint + load_param_into_net path, PyNative mode (the pipeline's reference
runs in graph mode, so this is also a second execution mode).

    python tests/helpers/mindspore_logits.py MODEL_ID CHECKPOINT INPUTS.npy OUT.npy
"""
import os
import sys

import mindspore as ms
import mindcv
import numpy as np


def main(model_id, checkpoint, inputs, out):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = mindcv.create_model(model_id, pretrained=False, num_classes=1000)
    params = ms.load_checkpoint(checkpoint)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    assert not not_loaded, not_loaded[:3]
    net.set_train(False)
    np.save(out, net(ms.Tensor(np.load(inputs))).asnumpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
    os._exit(0)  # skip MindSpore's noisy teardown
