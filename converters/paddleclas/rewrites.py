"""Export rewrites for PaddleClas: layer methods that paddle's exporters cannot write, replaced
only while paddle.jit.save converts the model to a static graph (as mmdeploy's rewriters do).

The reference logits come from the unmodified model (the worker computes them before
export), so the logit gate, at batch 1 and at the verification batch, checks every rewrite.
Applied rewrites are named in the report (`source.export_fixups`).

Runs in the paddle environment only.
"""
from __future__ import annotations

from converters.worker_flow import class_rewrites

_ZOO = "paddleclas.ppcls.arch.backbone.model_zoo"
# the replaced methods by (class, attribute), for inputs a rewrite does not cover
_ORIGINAL: dict[tuple[type, str], object] = {}


def _original(layer, attribute: str):
    """The method a rule replaced, for the layer's class (or the class it derives from)."""
    return next(_ORIGINAL[(cls, attribute)] for cls in type(layer).__mro__
                if (cls, attribute) in _ORIGINAL)


def _group_norm(self, x):
    """paddle.nn.GroupNorm as reductions: paddle2onnx 2.1.0 maps PIR's group_norm to an
    InstanceNormalization whose epsilon it reads from memory it never set (measured here:
    2.8e22, -4.7e22, 0.0 in one graph; Paddle2ONNX issue #1644), so the exported graph is
    wrong or NaN while paddle's own forward is right. The same arithmetic (mean, then the
    mean square of the centred values, per group), in ops every exporter writes."""
    import paddle

    if self._data_format not in ("NCHW", "NCL", "NCDHW") or len(x.shape) < 3:
        return _original(self, "forward")(self, x)
    groups = x.reshape([0, self._num_groups, -1])      # 0: the batch, whatever it is
    centred = groups - groups.mean(axis=-1, keepdim=True)
    variance = (centred * centred).mean(axis=-1, keepdim=True)
    y = (centred / paddle.sqrt(variance + self._epsilon)).reshape(paddle.shape(x))
    per_channel = [1, -1] + [1] * (len(x.shape) - 2)
    if self.weight is not None:
        y = y * self.weight.reshape(per_channel)
    if self.bias is not None:
        y = y + self.bias.reshape(per_channel)
    return y


def _patch_grid(layer, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(patch_h, patch_w, rows, columns) when the map divides into whole patches, else None."""
    ph, pw = layer.patch_h, layer.patch_w
    if height % ph or width % pw:
        return None
    return ph, pw, height // ph, width // pw


def _unfolding(self, feature_map):
    """MobileViTV2Block.unfolding and MobileViTV3BlockV2's (the same code): F.unfold with
    kernel = stride (patches that do not overlap) as a reshape and a transpose. Paddle's
    dynamic-to-static conversion of the F.fold that undoes it refuses a batch of -1, and
    paddle2onnx has no fold op (at batch 1 it aborts the process); the same values, in ops
    every exporter writes."""
    _, channels, height, width = feature_map.shape
    grid = _patch_grid(self, height, width)
    if grid is None:
        return _original(self, "unfolding")(self, feature_map)
    ph, pw, rows, cols = grid
    x = feature_map.reshape([-1, channels, rows, ph, cols, pw])
    x = x.transpose([0, 1, 3, 5, 2, 4])             # B, C, ph, pw, rows, cols
    return x.reshape([-1, channels, ph * pw, rows * cols]), (height, width)


def _folding(self, patches, output_size):
    """MobileViTV2Block.folding and MobileViTV3BlockV2's: F.fold of patches that do not
    overlap, the inverse of _unfolding, as a reshape and a transpose."""
    _, channels, _, _ = patches.shape
    height, width = output_size
    grid = _patch_grid(self, height, width)
    if grid is None:
        return _original(self, "folding")(self, patches, output_size)
    ph, pw, rows, cols = grid
    x = patches.reshape([-1, channels, ph, pw, rows, cols])
    x = x.transpose([0, 1, 4, 2, 5, 3])             # B, C, rows, ph, cols, pw
    return x.reshape([-1, channels, height, width])


# (module, class, attribute, replacement, what it changes)
RULES = [
    ("paddle.nn", "GroupNorm", "forward", _group_norm,
     "GroupNorm as mean and variance reductions: paddle2onnx's group_norm writes an "
     "InstanceNormalization with an unset epsilon"),
    *[(f"{_ZOO}.{module}", block, attribute, replacement, why)
      for module, block in (("mobilevit_v2", "MobileViTV2Block"),
                            ("mobilevit_v3", "MobileViTV3BlockV2"))
      for attribute, replacement, why in (
          ("unfolding", _unfolding, "F.unfold of whole patches as reshape + transpose"),
          ("folding", _folding, "F.fold of whole patches as reshape + transpose: paddle's "
                                "jit refuses a dynamic batch in F.fold and paddle2onnx has "
                                "no fold op"))],
]


def rewritten(model, rules=RULES):
    """Patch, for the duration of the block, each rule whose class the model uses; yields the
    list of notes for the applied ones (converters/worker_flow.py class_rewrites)."""
    return class_rewrites(rules, {type(layer) for layer in model.sublayers(include_self=True)},
                          _ORIGINAL)
