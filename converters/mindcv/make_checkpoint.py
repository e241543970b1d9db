"""Make a seeded random-init .ckpt with mindcv's code (for `make demo` and tests).

Runs in the mindspore environment:
    .venvs/mindspore/bin/python -m converters.mindcv.make_checkpoint \
        --model-id res2net50 --out demo/mindcv-res2net50.ckpt

--format weights   mindspore.save_checkpoint(network), as MindCV publishes (default)
--format training  save_checkpoint(TrainOneStepCell(network, Momentum)) after one step:
                   the weights plus the optimizer's state (moments, learning rate, step)

--init images (default): BatchNorm running statistics come from a train-mode pass over
synthetic images with the models built through mindcv's own `norm=` argument as
BatchNorm2d(momentum=0), so the moving statistics equal that batch's; the saved names are the
same as a default-built model's. --init noise: the pass sees N(0, 1) tensors (large logits);
--init plain: no pass, default statistics. verify/images.py INITS says why tests need all
three.
"""
from __future__ import annotations

import argparse
import functools
import os
import warnings
from pathlib import Path

from converters.checkpoint_batch import cannot
from verify.images import INITS

warnings.filterwarnings("ignore")


def batch_stats_only(model) -> None:
    """Every BatchNorm's moving statistics := the next train-mode batch's (MindSpore keeps
    1 - momentum in the layer and bakes it into its BatchNorm primitive at construction)."""
    from mindspore import nn, ops

    for _, cell in model.cells_and_names():
        if isinstance(cell, nn.layer.normalization._BatchNorm):
            cell.momentum = 1.0
            cell.bn_train = ops.BatchNorm(is_training=True, epsilon=cell.eps, momentum=1.0,
                                          data_format=cell.format)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["weights", "training"], default="weights")
    parser.add_argument("--size", type=int, default=224,
                        help="side of the synthetic images (the model's input size)")
    parser.add_argument("--init", choices=INITS, default="images",
                        help="how BatchNorm statistics are set (verify/images.py INITS)")
    parser.add_argument("--mark-demo", action="store_true",
                        help="add a 'demo_checkpoint' entry so reports say this is a demo")
    args = parser.parse_args(argv)
    if args.init == "plain" and args.format == "training":
        # The training step runs in train mode and would set the statistics from its batch.
        parser.error("--init plain keeps the default BatchNorm statistics; --format training's "
                     "step would overwrite them")

    import mindspore as ms
    import numpy as np
    from mindspore import nn

    from converters.mindcv.worker import DEMO_KEY, build_model
    from verify.images import calibration_batch

    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(args.seed)
    try:
        try:
            model = build_model(args.model_id, args.num_classes,
                                norm=functools.partial(nn.BatchNorm2d, momentum=0.0))
        except TypeError:  # a model without mindcv's `norm=` argument: same effect, set after
            model = build_model(args.model_id, args.num_classes)
            batch_stats_only(model)
    except Exception as exc:  # noqa: BLE001 - mindcv's own constructor: its failure
        cannot("mindcv", f"build {args.model_id}", exc)
    batch = calibration_batch(args.init, args.seed, 8, mean=[123.675, 116.28, 103.53],
                              std=[58.395, 57.12, 57.375], size=args.size)
    if batch is not None:
        x = ms.Tensor(batch)
        model.set_train(True)
        try:
            model(x)  # moving statistics := this batch's statistics
        except Exception as exc:  # noqa: BLE001 - mindcv's own forward: its failure
            cannot("mindcv", f"run {args.model_id} on input {list(batch.shape[1:])}", exc)
        model.set_train(False)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".tmp-{args.out.stem}.ckpt")  # save_checkpoint wants .ckpt
    target = model
    if args.format == "training":
        optimizer = nn.Momentum(model.trainable_params(), learning_rate=1e-9, momentum=0.9)
        target = nn.TrainOneStepCell(nn.WithLossCell(model, nn.CrossEntropyLoss()), optimizer)
        target(x, ms.Tensor(np.zeros(len(x), np.int32)))  # one step: fills optimizer state
        model.set_train(False)
    extra = {DEMO_KEY: "seeded random init, not trained weights"} if args.mark_demo else None
    if tmp.exists():
        os.chmod(tmp, 0o600)
        tmp.unlink()
    ms.save_checkpoint(target, str(tmp), append_dict=extra)
    os.chmod(tmp, 0o644)  # save_checkpoint writes 0400
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.model_id}, seed {args.seed}, format {args.format})")


if __name__ == "__main__":
    main()
