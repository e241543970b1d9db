"""Logits of a .pdparams on given inputs, computed Paddle's own way (test helper).

Runs in the paddle environment. Deliberately not the pipeline's loader: paddle.load (a full
unpickle: safe here, the file was made by this test session) + set_state_dict.

    python tests/helpers/paddle_logits.py MODEL_ID CHECKPOINT INPUTS.npy OUT.npy
"""
import os
import sys
import warnings

import numpy as np
import paddle

warnings.filterwarnings("ignore")


def main(model_id, checkpoint, inputs, out):
    from paddleclas.ppcls.arch import backbone

    with paddle.utils.unique_name.guard():
        model = getattr(backbone, model_id)(pretrained=False)
    missing, unexpected = model.set_state_dict(paddle.load(checkpoint))
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    model.eval()
    if os.environ.get("FAULT_BN_EPS"):   # a wrong epsilon, for the gate's fault tests
        norms = (paddle.nn.BatchNorm, paddle.nn.layer.norm._BatchNormBase)
        changed = [layer for layer in model.sublayers() if isinstance(layer, norms)]
        assert changed, "no BatchNorm layer"
        for layer in changed:
            layer._epsilon = float(os.environ["FAULT_BN_EPS"])
    with paddle.no_grad():
        np.save(out, model(paddle.to_tensor(np.load(inputs))).numpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
