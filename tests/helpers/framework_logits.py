"""Logits of a checkpoint on given inputs, computed the framework's own way (test helper).

Runs in the mmpretrain environment. It deliberately does not use the pipeline's loader:
mmpretrain models with torch.load + load_state_dict(strict=True), timm models with timm's own
module, so a test compares the pipeline's ONNX against an independent path.

    python tests/helpers/framework_logits.py ARCH CHECKPOINT INPUTS.npy OUT.npy
    ARCH: mmpretrain:MODEL_ID | timm:NAME
With FAULT_BN_EPS=E in the environment, every BatchNorm computes with epsilon E: a
conversion fault (a wrong epsilon) made in the source, for the gate's fault tests.
"""
import os
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def main(arch, checkpoint, inputs, out):
    kind, _, name = arch.partition(":")
    x = torch.from_numpy(np.load(inputs))
    if kind == "mmpretrain":
        from mmpretrain import get_model

        model = get_model(name, pretrained=False)
        # Our own test file, made by converters.mmpretrain.make_checkpoint in this session,
        # so a full unpickle is safe here. (mmengine 0.10.7's load_checkpoint cannot read
        # OpenMMLab files under torch >= 2.6: weights_only refuses the numpy in `meta`.)
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state, strict=True)
        run = lambda t: model(t, mode="tensor")  # noqa: E731
    else:
        import timm

        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        run = model
    model.eval()
    if os.environ.get("FAULT_BN_EPS"):
        changed = [m for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert changed, "no BatchNorm layer"
        for module in changed:
            module.eps = float(os.environ["FAULT_BN_EPS"])
    with torch.no_grad():
        np.save(out, run(x).numpy())


if __name__ == "__main__":
    main(*sys.argv[1:])
