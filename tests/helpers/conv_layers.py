"""Convolution layers of a source's model, named the source's way, with their weight shapes
(test helper for tests/test_localize.py: the expected answer, from the framework itself).

Runs in the source's environment; builds the model with the source's own constructor and walks
its layers with the framework's own traversal (named_modules / named_sublayers /
cells_and_names). Writes {name: weight shape} as JSON.

    python tests/helpers/conv_layers.py SOURCE MODEL_ID NUM_CLASSES OUT.json
"""
import json
import os
import sys


def layers(source: str, model_id: str, num_classes: int) -> dict:
    if source == "mindcv":
        import mindspore  # noqa: F401 - first, before anything that loads protobuf
        from mindspore import nn

        from converters.mindcv.worker import build_model
        model = build_model(model_id, num_classes)
        return {name: list(cell.weight.shape) for name, cell in model.cells_and_names()
                if isinstance(cell, nn.Conv2d)}
    if source == "paddleclas":
        from paddle.nn.layer.conv import _ConvNd

        from converters.paddleclas.worker import build_model
        model = build_model(model_id, num_classes)
        return {name: list(layer.weight.shape) for name, layer in model.named_sublayers()
                if isinstance(layer, _ConvNd)}
    import torch

    from converters.mmpretrain.worker import build_model
    model = build_model(model_id, num_classes)
    return {name: list(module.weight.shape) for name, module in model.named_modules()
            if isinstance(module, torch.nn.modules.conv._ConvNd)}


if __name__ == "__main__":
    source, model_id, classes, out = sys.argv[1:]
    with open(out, "w") as f:
        json.dump(layers(source, model_id, int(classes)), f)
    sys.stdout.flush()
    os._exit(0)  # skip MindSpore's noisy teardown
