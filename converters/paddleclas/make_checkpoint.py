"""Make a seeded random-init .pdparams with PaddleClas's code (for `make demo` and tests).

Runs in the paddle environment:
    .venvs/paddle/bin/python -m converters.paddleclas.make_checkpoint \
        --model-id Res2Net50_14w_8s --out demo/paddleclas-res2net50-14w-8s.pdparams

--format training      paddle.save(model.state_dict()), as PaddleClas's training and its
                       published *_pretrained.pdparams files are written (default)
--format param-names   keys are the fixed ParamAttr names (conv1_weights, bn_conv1_mean...)
--format layers-prefix DataParallel's `_layers.` prefix on every key
--format numpy1        a pickle naming numpy.core.multiarray, as files written under numpy 1.x

--init images (default): BatchNorm running statistics from one train-mode pass (momentum 0)
over synthetic images, so the model behaves like a trained one; --init noise: over N(0, 1)
tensors (large logits); --init plain: Paddle's default statistics (logits up to ~1e7 on some
models). verify/images.py INITS says why tests need all three.
"""
from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path

from verify.images import INITS

warnings.filterwarnings("ignore")


def calibrate_batchnorm(model, seed: int, batch_size: int = 8, size: int = 224,
                        init: str = "images") -> None:
    import paddle

    from verify.images import calibration_batch

    x = calibration_batch(init, seed, batch_size, mean=[0.485, 0.456, 0.406],
                          std=[0.229, 0.224, 0.225], scale=1 / 255.0, size=size)
    if x is None:
        return

    for layer in model.sublayers():
        if hasattr(layer, "_momentum") and "BatchNorm" in type(layer).__name__:
            layer._momentum = 0.0  # running stats := this batch's stats
    model.train()
    with paddle.no_grad():
        model(paddle.to_tensor(x))
    model.eval()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224,
                        help="side of the synthetic images (the model's input size)")
    parser.add_argument("--init", choices=INITS, default="images",
                        help="how BatchNorm statistics are set (verify/images.py INITS)")
    parser.add_argument("--mark-demo", action="store_true",
                        help="add a 'demo_checkpoint@@' metadata key (Paddle's own '@@' "
                             "convention) so reports say this is not trained weights")
    parser.add_argument("--format", default="training",
                        choices=["training", "param-names", "layers-prefix", "numpy1"])
    args = parser.parse_args(argv)

    import numpy as np
    import paddle

    from converters.checkpoint_batch import cannot
    from converters.paddleclas.checkpoint import DEMO_KEY
    from converters.paddleclas.worker import build_model

    paddle.seed(args.seed)
    try:
        model = build_model(args.model_id, args.num_classes)
    except Exception as exc:  # noqa: BLE001 - PaddleClas's own constructor: its failure
        cannot("paddleclas", f"build {args.model_id}", exc)
    try:
        calibrate_batchnorm(model, args.seed, size=args.size, init=args.init)
    except Exception as exc:  # noqa: BLE001 - PaddleClas's own forward: its failure (its
        # MAE_vit_huge_patch14 normalizes an already pooled feature: "normalized_shape
        # [1280] ... got input shape [8]", whatever the input)
        cannot("paddleclas", f"run {args.model_id} on input [3, {args.size}, {args.size}]", exc)
    state = model.state_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    if args.format == "training":
        if args.mark_demo:  # an array, so the file holds nothing but numpy data
            note = b"seeded random init; BatchNorm statistics from synthetic images"
            state = {**state, DEMO_KEY: np.frombuffer(note, dtype=np.uint8)}
        paddle.save(state, str(tmp))
    else:
        arrays = {k: v.numpy() for k, v in state.items()}
        if args.format == "param-names":
            arrays = {state[k].name: a for k, a in arrays.items()}
        elif args.format == "layers-prefix":
            arrays = {f"_layers.{k}": a for k, a in arrays.items()}
        # Protocol 2 spells globals as text lines, so the numpy 1.x module path can be
        # written exactly as numpy 1.x wrote it.
        raw = pickle.dumps(arrays, protocol=2)
        if args.format == "numpy1":
            raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            assert b"numpy._core" not in raw
        tmp.write_bytes(raw)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.model_id}, seed {args.seed}, format {args.format})")


if __name__ == "__main__":
    main()
