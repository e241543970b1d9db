"""Logits of a .ckpt on given inputs, computed MindSpore's own way (test helper).

Runs in the mindspore environment. Deliberately not the pipeline's loader: the plain
mindspore.load_checkpoint + load_param_into_net path, PyNative mode (the pipeline's reference
runs in graph mode, so this is also a second execution mode).

    python tests/helpers/mindspore_logits.py MODEL_ID CHECKPOINT INPUTS.npy OUT.npy
With FAULT_BN_EPS=E in the environment, every BatchNorm computes with epsilon E (a fault for
the gate's fault tests).
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
    if os.environ.get("FAULT_BN_EPS"):
        eps = float(os.environ["FAULT_BN_EPS"])
        changed = [c for _, c in net.cells_and_names() if isinstance(c, ms.nn.BatchNorm2d)]
        assert changed, "no BatchNorm layer"
        for cell in changed:
            cell.eps = eps
            cell.bn_infer = ms.ops.BatchNorm(is_training=False, epsilon=eps,
                                             data_format=cell.format)
    np.save(out, net(ms.Tensor(np.load(inputs))).asnumpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
    os._exit(0)  # skip MindSpore's noisy teardown
