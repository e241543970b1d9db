"""Make a seeded random-init checkpoint with real model code (for `make demo` and tests).

Runs in the mmpretrain environment:
    .venvs/mmpretrain/bin/python -m converters.mmpretrain.make_checkpoint \
        --arch mmpretrain:res2net50-w14-s8_3rdparty_8xb32_in1k --out demo/res2net50-w14-s8.pth

--arch mmpretrain:MODEL_ID   built by mmpretrain, saved as OpenMMLab publishes
                             ({'state_dict', 'meta'} with numpy values in meta), or
                             --format bare / module (DataParallel `module.` keys)
--arch timm:NAME             built by timm (the official Res2Net release's code and key
                             names, e.g. timm:res2net50_14w_8s), saved as a bare state dict

--init images (default): BatchNorm running statistics from train-mode forwards (momentum=None:
a plain average) on synthetic images, so the model behaves like a trained one; --init noise:
from one pass over N(0, 1) tensors (large logits); --init plain: the default statistics
(mid layers barely reach the logits). verify/images.py INITS says why tests need all three.
The checkpoint's meta says it is a demo checkpoint, and the pipeline's report repeats it.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from verify.images import INITS

warnings.filterwarnings("ignore")


def build(arch: str, num_classes: int):
    kind, _, name = arch.partition(":")
    if kind == "mmpretrain":
        from converters.mmpretrain.worker import build_model

        return build_model(name, num_classes)
    if kind == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    raise SystemExit(f"--arch must be mmpretrain:MODEL_ID or timm:NAME, got {arch!r}")


def calibrate_batchnorm(model, seed: int, batches: int = 2, batch_size: int = 4,
                        size: int = 224, init: str = "images") -> None:
    """Set BatchNorm running statistics from train-mode passes over the `init` batches
    (verify/images.py calibration_batch); `plain` keeps the default statistics."""
    import torch

    from verify.images import calibration_batch

    if init == "plain":   # any other name is checked by calibration_batch
        return

    # Only the BatchNorm layers in train mode: the rest stays as at inference (no dropout
    # noise in the statistics, and heads that refuse training, such as LeViT's distillation
    # head, "MMPretrain doesn't support training in distillation mode", still run).
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
            module.train()
    with torch.no_grad():
        for index in range(batches):
            x = torch.from_numpy(calibration_batch(init, seed + index, batch_size,
                                                   mean=[123.675, 116.28, 103.53],
                                                   std=[58.395, 57.12, 57.375], size=size))
            if hasattr(model, "data_preprocessor"):
                model(x, mode="tensor")
            else:
                model(x)
    model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224,
                        help="side of the synthetic images (the model's input size)")
    parser.add_argument("--init", choices=INITS, default="images",
                        help="how BatchNorm statistics are set (verify/images.py INITS)")
    parser.add_argument("--format", choices=["openmmlab", "bare", "module"], default=None,
                        help="default: openmmlab for mmpretrain, bare for timm")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    model = build(args.arch, args.num_classes)
    calibrate_batchnorm(model, args.seed, size=args.size, init=args.init)
    state = model.state_dict()
    fmt = args.format or ("openmmlab" if args.arch.startswith("mmpretrain:") else "bare")
    if fmt == "openmmlab":
        meta = {"demo_checkpoint": True, "arch": args.arch, "seed": args.seed,
                "init": args.init,
                "note": f"seeded random init, BatchNorm statistics: {args.init}; "
                        "not trained weights",
                # OpenMMLab meta carries numpy values; the safe loader must accept them.
                "epoch": np.int64(0), "mean_rgb": np.array([123.675, 116.28, 103.53]),
                "CLASSES": [f"class_{i}" for i in range(args.num_classes)]}
        obj = {"state_dict": state, "meta": meta}
    elif fmt == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = state
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.arch}, seed {args.seed}, format {fmt})")


if __name__ == "__main__":
    main()
