"""Make a seeded random-init checkpoint with real model code (for `make demo` and tests).

Runs in the mmpretrain environment:
    .venvs/mmpretrain/bin/python -m converters.mmpretrain.make_checkpoint \
        --arch mmpretrain:res2net50-w14-s8_3rdparty_8xb32_in1k --out demo/res2net50-w14-s8.pth

--arch mmpretrain:MODEL_ID   built by mmpretrain, saved as OpenMMLab publishes
                             ({'state_dict', 'meta'} with numpy values in meta), or
                             --format bare / module (DataParallel `module.` keys)
--arch timm:NAME             built by timm (the official Res2Net release's code and key
                             names, e.g. timm:res2net50_14w_8s), saved as a bare state dict

Random init with default BatchNorm statistics gives meaningless logits, so the running
statistics are set by train-mode forwards (momentum=None: a plain average) on synthetic
images.
The checkpoint's meta says it is a demo checkpoint, and the pipeline's report repeats it.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

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
                        size: int = 224) -> None:
    """Set BatchNorm running statistics from train-mode passes over synthetic images."""
    import torch

    from verify.images import synthetic_batch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for index in range(batches):
            x = torch.from_numpy(synthetic_batch(seed + index, batch_size,
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
    parser.add_argument("--format", choices=["openmmlab", "bare", "module"], default=None,
                        help="default: openmmlab for mmpretrain, bare for timm")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    model = build(args.arch, args.num_classes)
    calibrate_batchnorm(model, args.seed, size=args.size)
    state = model.state_dict()
    fmt = args.format or ("openmmlab" if args.arch.startswith("mmpretrain:") else "bare")
    if fmt == "openmmlab":
        meta = {"demo_checkpoint": True, "arch": args.arch, "seed": args.seed,
                "note": "seeded random init with BatchNorm statistics from synthetic images; "
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
