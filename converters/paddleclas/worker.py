"""PaddleClas worker: build with PaddleClas's code, load strictly, export with paddle2onnx.

Runs only in the paddle environment:
    .venvs/paddle/bin/python -m converters.paddleclas.worker WORKDIR/job.json
The order of the stages lives in converters/worker_flow.py.

Paddle traps handled here (docs/environments.md): PaddleClas fixes ParamAttr names, so every
model is built under a unique-name generator of its own, which its re-parameterisation and its
export use too (`names()`); paddle2onnx calls sys.exit on failure, which is
caught and reported; its optimizer's dependencies are preinstalled by envs/paddle.lock.txt.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

from converters import worker_flow
from converters.data_loader import stack
from converters.protocol import WorkerError, log, worker_main

warnings.filterwarnings("ignore")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def build_model(model_id: str, num_classes: int):
    """A PaddleClas backbone by its own name (e.g. Res2Net50_vd_26w_4s), random init, eval."""
    import paddle
    from paddleclas.ppcls.arch import backbone

    factory = getattr(backbone, model_id, None)
    if factory is None or not callable(factory):
        raise WorkerError("model_id", f"PaddleClas has no model {model_id!r} "
                                      f"(ppcls.arch.backbone)")
    generator = paddle.base.unique_name.UniqueNameGenerator()
    with paddle.utils.unique_name.guard(generator):
        model = factory(pretrained=False, class_num=num_classes)
    model._converter_names = generator
    model.eval()
    return model


def names(model):
    """The unique-name generator `model` was built under, entered again: layers that
    re-parameterisation creates (RepVGG's rbr_reparam) are named after the model's own, never
    from paddle's process-wide counter. From that counter, a warm worker's second RepVGG
    named a new conv after one the model already had (conv2d_28, 640x160x3x3 and 64x3x3x3),
    and jit.save refused it: "Duplicate parameter ... with different type" (PaddleClas
    RepVGG_B2g4 after RepVGG_B1; A0, A1, A0 the same); alone, each converted."""
    import paddle

    generator = getattr(model, "_converter_names", None)
    return paddle.utils.unique_name.guard(generator)


class PaddleClasAdapter:
    framework = "paddleclas"
    derive_module = "converters.paddleclas.derive"

    def versions(self) -> dict:
        import numpy
        import onnx
        import paddle
        import paddle2onnx
        from importlib.metadata import version

        return {"framework": "paddleclas", "paddleclas": version("paddleclas"),
                "paddlepaddle": paddle.__version__, "paddle2onnx": paddle2onnx.__version__,
                "onnx": onnx.__version__, "numpy": numpy.__version__}

    def build(self, model_id: str, num_classes: int):
        import paddle

        paddle.set_device("cpu")
        return build_model(model_id, num_classes)

    def state_shapes(self, model) -> dict[str, tuple]:
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def load(self, model, checkpoint: Path, candidates: list[dict], num_classes: int) -> dict:
        from converters.paddleclas import checkpoint as ck

        state, info = ck.load_pdparams(checkpoint)
        model_state = model.state_dict()
        structured = {key: tensor.name for key, tensor in model_state.items()}
        mapped, layout = ck.map_keys(state, structured)
        info["layout"] = layout
        worker_flow.require_fit(self, {k: tuple(v.shape) for k, v in mapped.items()},
                                self.state_shapes(model), candidates, layout,
                                num_classes=num_classes)
        missing, unexpected = model.set_state_dict(mapped)
        if missing or unexpected:  # require_fit has already proven this cannot happen
            raise WorkerError("checkpoint_mismatch", f"paddle refused keys: missing "
                                                     f"{missing[:5]}, unexpected {unexpected[:5]}")
        # eval() again after loading, in the order PaddleClas's own export and inference use
        # (build, load, eval), so that no layer's eval-time state predates the checkpoint
        # (the mmpretrain adapter's LeViT/EfficientFormer case; Paddle's Layer.eval() calls no
        # sublayer's train(), so no PaddleClas model was found affected).
        model.eval()
        return info

    def transform(self, cfg: dict):
        """PaddleClas's own inference transforms (paddleclas/deploy/python/preprocess.py)."""
        from paddleclas.deploy.python.preprocess import (CropImage, DecodeImage,
                                                         NormalizeImage, ResizeImage,
                                                         ToCHWImage)

        if cfg.get("decode", "cv2") != "cv2":
            raise WorkerError("preprocess", f"PaddleClas decodes with cv2, manifest asks "
                                            f"{cfg['decode']!r}")
        ops = [DecodeImage(to_rgb=bool(cfg.get("to_rgb", True))),
               # PaddleClas's ResizeImage names Pillow "pil" (and takes any other name for
               # cv2, with a warning).
               ResizeImage(resize_short=cfg["resize_short"], interpolation=cfg["interpolation"],
                           backend={"pillow": "pil"}.get(cfg.get("resize_backend", "cv2"),
                                                         cfg.get("resize_backend", "cv2"))),
               CropImage(size=cfg["crop"]),
               NormalizeImage(scale=cfg.get("scale", 1 / 255.0), mean=cfg["mean"],
                              std=cfg["std"], order=""),
               ToCHWImage()]

        def per_image(path: str):
            img = Path(path).read_bytes()
            for op in ops:
                img = op(img)
            return img

        return per_image, stack

    def forward(self, model, inputs, batch_size: int):
        import numpy as np
        import paddle

        with paddle.no_grad():
            outs = [model(paddle.to_tensor(inputs[i:i + batch_size])).numpy()
                    for i in range(0, len(inputs), batch_size)]
        return np.concatenate(outs)

    def capture(self, model, inputs, record) -> None:
        import paddle
        from paddle.nn.layer.conv import _ConvNd
        from paddle.nn.layer.norm import _BatchNormBase

        # paddle.nn.BatchNorm (PaddleClas's ConvBNLayer) is not a _BatchNormBase, and may
        # apply an activation itself (act="relu"): verify/localize.py allows for that.
        kinds = ((_ConvNd, "conv"), (paddle.nn.Linear, "linear"),
                 ((_BatchNormBase, paddle.nn.BatchNorm), "norm"))
        with worker_flow.hooked(model.named_sublayers(), kinds,
                                lambda layer, hook: layer.register_forward_post_hook(hook),
                                lambda out: out.numpy(), record), paddle.no_grad():
            model(paddle.to_tensor(inputs))

    def for_inference(self, model) -> list[str]:
        with names(model):
            return worker_flow.switch_to_inference(model.named_sublayers(include_self=True),
                                                   "re_parameterize", self.framework)

    def export(self, model, sample, path: Path, opset: int, dynamic_batch: bool,
               workdir: Path) -> list[str]:
        import paddle
        import paddle2onnx

        from converters.paddleclas.rewrites import rewritten

        prefix = workdir / "paddle_inference" / "inference"
        shape = [None if dynamic_batch else 1, *sample.shape[1:]]
        try:
            with names(model), rewritten(model) as notes:
                paddle.jit.save(model, str(prefix),
                                input_spec=[paddle.static.InputSpec(shape, "float32", "input")])
        except (MemoryError, WorkerError):
            raise
        except Exception as exc:  # noqa: BLE001 - paddle's dynamic-to-static conversion refused
            raise WorkerError("export", jit_failure(exc, dynamic_batch)) from exc
        model_file = next(p for p in (prefix.with_suffix(".json"), prefix.with_suffix(".pdmodel"))
                          if p.exists())
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                paddle2onnx.export(str(model_file), str(prefix.with_suffix(".pdiparams")),
                                   str(path), opset_version=opset)
        except SystemExit as exc:  # paddle2onnx calls sys.exit(-1) on failure
            raise WorkerError("export", f"paddle2onnx failed at opset {opset} (exit "
                                        f"{exc.code}): {captured.getvalue()[-600:]}") from None
        except Exception as exc:  # noqa: BLE001 - any exporter failure is an export error
            raise WorkerError("export", f"paddle2onnx failed at opset {opset}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        log("paddle2onnx: " + " | ".join(captured.getvalue().strip().splitlines()[-3:]))
        rename_io(path, dynamic_batch)
        return notes


def jit_failure(exc: Exception, dynamic_batch: bool) -> str:
    """paddle.jit.save's error in two lines' worth: its last line and the source line of
    PaddleClas's own code it stopped in (paddle prints the whole transformed code)."""
    import re

    text = str(exc)
    last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    where = re.findall(r'File "[^"]*?(ppcls/[^"]+)", line (\d+), in (\w+)', text)
    at = f" (in {where[-1][0]} line {where[-1][1]}, {where[-1][2]})" if where else ""
    batch = "a dynamic batch" if dynamic_batch else "batch 1"
    said = last if last.startswith(type(exc).__name__) else f"{type(exc).__name__}: {last}"
    return f"paddle.jit.save (dynamic-to-static) failed at {batch}: {said[:300]}{at}"


def rename_io(path: Path, dynamic_batch: bool) -> None:
    """Name the graph's output `logits` (paddle2onnx says fetch_name_0) and the batch `batch`,
    so every source's ONNX has one interface."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise WorkerError("export", f"expected one input and one output, paddle2onnx gave "
                                    f"{[i.name for i in graph.input]} -> "
                                    f"{[o.name for o in graph.output]}")
    renames = {graph.input[0].name: "input", graph.output[0].name: "logits"}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in (graph.input[0], graph.output[0]):
        value.name = renames[value.name]
        dim = value.type.tensor_type.shape.dim[0]
        if dynamic_batch:
            dim.dim_param = "batch"
    onnx.save(model, str(path))


def handle(job: dict, workdir: Path) -> dict:
    os.environ.setdefault("GLOG_minloglevel", "2")
    return worker_flow.run(PaddleClasAdapter(), job, workdir)


if __name__ == "__main__":
    worker_main(handle)
