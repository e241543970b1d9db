"""The replacements converters/mindcv/rewrites.py puts in place of what MindSpore's ONNX
exporter cannot write: cells, cell methods and functions computing the same values in ops it
can (its docstring says which, why, and how exact). Runs in the mindspore environment only.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.ops import constexpr


class _HSwish(nn.Cell):
    """x * relu6(x + 3) / 6, as nn.HSwish computes it."""

    def __init__(self):
        super().__init__()
        self.relu6 = nn.ReLU6()

    def construct(self, x):
        return x * self.relu6(x + 3.0) / 6.0


class _HSigmoid(nn.Cell):
    """relu6(x + 3) / 6, as nn.HSigmoid computes it."""

    def __init__(self):
        super().__init__()
        self.relu6 = nn.ReLU6()

    def construct(self, x):
        return self.relu6(x + 3.0) / 6.0


# erf(x) ~ x P(x^2) / Q(x^2) on x clamped to [-4, 4] (beyond, erf is +-1 in float32): Eigen's
# generic_fast_erf_float, also XLA's ErfImpl32. Highest power first.
ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                 -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                 -1.60960333262415e-02)
ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                   -7.37332916720468e-03, -1.42647390514189e-02)


def _horner(coefficients, x2):
    out = coefficients[0]
    for c in coefficients[1:]:
        out = out * x2 + c
    return out


class _GELUErf(nn.Cell):
    """0.5 x (1 + erf(x / sqrt 2)), erf by the rational approximation above: what
    nn.GELU(approximate=False) computes, written with Minimum, Maximum, Mul, Add and Div."""

    def construct(self, x):
        z = ops.maximum(ops.minimum(x * 0.7071067811865476, 4.0), -4.0)
        z2 = z * z
        erf = z * _horner(ERF_NUMERATOR, z2) / _horner(ERF_DENOMINATOR, z2)
        return 0.5 * x * (1.0 + erf)


class _GroupNorm(nn.Cell):
    """ops.group_norm (what nn.GroupNorm runs) written with Reshape, ReduceMean, Sub, Mul,
    Sqrt, Div and Add: (x - mean) / sqrt(var + eps) per group, biased variance, then the
    per-channel gamma and beta. The Reshapes leave the batch to -1 (a traced batch would be
    held in the graph). gamma and beta are taken as constants (the rewrite runs after the
    checkpoint is loaded): a Parameter moved to another cell keeps its name, and two blocks'
    `norm1.gamma` would then clash at export."""

    def __init__(self, norm):
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        self.gamma = Tensor(norm.gamma.asnumpy())
        self.beta = Tensor(norm.beta.asnumpy())

    def construct(self, x):
        shape = x.shape
        grouped = ops.reshape(x, (-1, self.groups, x.size // shape[0] // self.groups))
        centered = grouped - grouped.mean(axis=2, keep_dims=True)
        variance = (centered * centered).mean(axis=2, keep_dims=True)
        y = ops.reshape(centered / ops.sqrt(variance + self.eps), (-1,) + tuple(shape[1:]))
        affine = (1, -1) + (1,) * (len(shape) - 2)
        return y * self.gamma.reshape(affine) + self.beta.reshape(affine)


class _Unstack(nn.Cell):
    """ops.Unstack(axis=0): the tuple x[0], x[1], ..., one index each (exported as Gather)."""

    def construct(self, x):
        return tuple(x[i] for i in range(x.shape[0]))


@constexpr
def fourier_table(H, W, hidden, temperature, scale):  # noqa: N803 - mindcv's names
    """What mindcv edgenext's PositionalEncodingFourier feeds its projection, for one image:
    the sin/cos table of an all-False mask, whose cumulative sums are 1..H and 1..W. Computed
    in numpy float32 at compile time (H and W are static), so it exports as a constant."""
    eps, scale = np.float32(1e-6), np.float32(scale)
    y = np.arange(1, H + 1, dtype=np.float32)[:, None] * np.ones((1, W), np.float32)
    x = np.ones((H, 1), np.float32) * np.arange(1, W + 1, dtype=np.float32)[None, :]
    y = y / (np.float32(H) + eps) * scale
    x = x / (np.float32(W) + eps) * scale
    dim_t = np.arange(hidden, dtype=np.float32)
    dim_t = np.float32(temperature) ** (2 * (dim_t // 2) / np.float32(hidden))
    px, py = x[:, :, None] / dim_t, y[:, :, None] / dim_t
    px = np.stack((np.sin(px[:, :, 0::2]), np.cos(px[:, :, 1::2])), axis=3).reshape(H, W, -1)
    py = np.stack((np.sin(py[:, :, 0::2]), np.cos(py[:, :, 1::2])), axis=3).reshape(H, W, -1)
    table = np.concatenate((py, px), axis=2).transpose(2, 0, 1)[None]
    return Tensor(np.ascontiguousarray(table, dtype=np.float32))


def _mindcv_classes(*where: str) -> tuple:
    """The mindcv classes named "module:Class" that this mindcv has (a rule whose class is
    missing matches nothing)."""
    found = []
    for name in where:
        module, _, cls = name.partition(":")
        try:
            found.append(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


# edgenext's and xcit's PositionalEncodingFourier: the same code.
_PositionalEncodings = _mindcv_classes("mindcv.models.edgenext:PositionalEncodingFourier",
                                       "mindcv.models.xcit:PositionalEncodingFourier")


def _without_mask(cell):
    """The same cell (its projection and its Parameters' names untouched), its class swapped
    for one whose construct takes the mask's table from fourier_table: the table is the same
    for every image, so it is computed for one and broadcast where the model adds it."""

    class _PositionalEncodingFourier(type(cell)):
        def construct(self, B, H, W):  # noqa: N803, ARG002 - mindcv's signature
            return self.token_projection(
                fourier_table(H, W, self.hidden_dim, self.temperature, self.scale))

    cell.__class__ = _PositionalEncodingFourier
    return cell


class _L2Normalize(nn.Cell):
    """ops.L2Normalize(axis, epsilon) held as an attribute (mindcv swinv2's cosine attention,
    `self.Normalize = ops.L2Normalize(axis=-1, epsilon=1e-12)`), with its own axis and
    epsilon: x / sqrt(max(sum(x^2 along axis), epsilon))."""

    def __init__(self, primitive):
        super().__init__()
        axis = primitive.axis
        self.axis = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        self.epsilon = float(primitive.epsilon)

    def construct(self, x):
        return _l2_normalize(x, self.epsilon, self.axis)


def _l2_normalize(x, epsilon=1e-4, axis=-1):
    """ops.L2Normalize(axis, epsilon): x / sqrt(max(sum(x^2 along axis), epsilon)), as
    MindSpore defines it."""
    return x / ops.sqrt(ops.maximum((x * x).sum(axis=axis, keepdims=True), epsilon))


_XCA = _mindcv_classes("mindcv.models.edgenext:XCA")


def _xca_without_l2normalize(cell):
    """The same XCA cell, its class swapped for one whose construct is mindcv's (edgenext.py,
    mindcv 0.3.0) with `ops.L2Normalize(-1)`, a primitive made inside construct, written as
    _l2_normalize."""

    class _XCA(type(cell)):
        def construct(self, x):
            B, N, C = x.shape  # noqa: N806 - mindcv's names
            qkv = ops.reshape(self.qkv(x), (B, N, 3, self.num_heads, C // self.num_heads))
            qkv = ops.transpose(qkv, (2, 0, 3, 1, 4))
            q, k, v = qkv[0], qkv[1], qkv[2]
            q = ops.transpose(q, (0, 1, 3, 2))
            k = ops.transpose(k, (0, 1, 3, 2))
            v = ops.transpose(v, (0, 1, 3, 2))
            q = _l2_normalize(q)
            k = _l2_normalize(k)
            attn = (ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))) * self.temperature
            attn = ops.Softmax(-1)(attn)
            attn = self.attn_drop(attn)
            x = ops.reshape(ops.transpose((ops.matmul(attn, v)), (0, 3, 1, 2)), (B, N, C))
            x = self.proj(x)
            return self.proj_drop(x)

    cell.__class__ = _XCA
    return cell


@constexpr
def bilinear_matrix(n_in, n_out):
    """align_corners=True bilinear weights along one axis, as a matrix: out = M @ in. Source
    position i (n_in - 1) / (n_out - 1), its floor and the next index weighted by distance.
    Computed in numpy at compile time (the sizes are static): a constant in the graph."""
    m = np.zeros((n_out, n_in), np.float32)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for i in range(n_out):
        src = np.float32(i * scale)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        w1 = np.float32(src - i0)
        m[i, i0] += np.float32(1) - w1
        m[i, i1] += w1
    return Tensor(m)


_Interpolate = _mindcv_classes("mindcv.models.layers.compatibility:Interpolate")


def _bilinear_align_corners(cell) -> bool:
    kwargs = getattr(cell, "kwargs", {})
    return (kwargs.get("mode") == "bilinear" and kwargs.get("scale_factor") is None
            and (kwargs.get("align_corners") is True
                 or kwargs.get("coordinate_transformation_mode") == "align_corners"))


def _interpolate_as_matmul(cell):
    """The same Interpolate cell, its construct a bilinear resize (align_corners) as two
    matrix products with bilinear_matrix: rows, then columns."""

    class _BilinearAsMatMul(type(cell)):
        def construct(self, x, size=None):
            rows = bilinear_matrix(x.shape[2], size[0])
            columns = bilinear_matrix(x.shape[3], size[1])
            return ops.matmul(ops.matmul(rows, x), columns.T)

    cell.__class__ = _BilinearAsMatMul
    return cell


_MobileViTBlock = _mindcv_classes("mindcv.models.mobilevit:MobileViTBlock")


def _mobilevit_batch_free(cell):
    """The same MobileViTBlock, its class swapped for one whose unfolding and folding are
    mindcv's (mobilevit.py, mindcv 0.3.0) with the batch left to -1 where mindcv writes
    `batch_size * patch_area` or `batch_size` beside another -1: MindSpore writes those as
    the numbers it traced at batch 1 ([4, 196, -1]), which no graph fix can tell from a
    dimension that is not the batch. The other reshapes are all static and take -1 after
    export (free_traced_batch)."""

    class _BatchFreeMobileViTBlock(type(cell)):
        def unfolding(self, x):
            patch_w, patch_h = self.patch_w, self.patch_h
            patch_area = patch_w * patch_h
            batch_size, in_channels, orig_h, orig_w = x.shape
            new_h = int(math.ceil(orig_h / self.patch_h) * self.patch_h)
            new_w = int(math.ceil(orig_w / self.patch_w) * self.patch_w)
            interpolate = False
            if new_w != orig_w or new_h != orig_h:
                x = self.interpolate(x, size=(new_h, new_w))
                interpolate = True
            num_patch_w = new_w // patch_w
            num_patch_h = new_h // patch_h
            num_patches = num_patch_h * num_patch_w
            x = ops.reshape(x, (batch_size * in_channels * num_patch_h, patch_h, num_patch_w,
                                patch_w))
            x = ops.transpose(x, (0, 2, 1, 3))
            x = ops.reshape(x, (batch_size, in_channels, num_patches, patch_area))
            x = ops.transpose(x, (0, 3, 2, 1))
            x = ops.reshape(x, (-1, num_patches, in_channels))      # was (B * P, N, -1)
            info_dict = {"orig_size": (orig_h, orig_w), "batch_size": batch_size,
                         "interpolate": interpolate, "total_patches": num_patches,
                         "num_patches_w": num_patch_w, "num_patches_h": num_patch_h}
            return x, info_dict

        def folding(self, x, info_dict):
            x = x.view(-1, self.patch_area, info_dict["total_patches"],   # was (B, P, N, -1)
                       x.shape[-1])
            batch_size, pixels, num_patches, channels = x.shape
            num_patch_h = info_dict["num_patches_h"]
            num_patch_w = info_dict["num_patches_w"]
            x = ops.transpose(x, (0, 3, 2, 1))
            x = ops.reshape(x, (batch_size * channels * num_patch_h, num_patch_w, self.patch_h,
                                self.patch_w))
            x = ops.transpose(x, (0, 2, 1, 3))
            x = ops.reshape(x, (batch_size, channels, num_patch_h * self.patch_h,
                                num_patch_w * self.patch_w))
            if info_dict["interpolate"]:
                x = self.interpolate(x, size=info_dict["orig_size"])
            return x

    cell.__class__ = _BatchFreeMobileViTBlock
    return cell


_WindowReverse = _mindcv_classes("mindcv.models.swintransformer:WindowReverse",
                                 "mindcv.models.swintransformerv2:WindowReverse")


def _window_reverse_batch_free(cell):
    """The same WindowReverse cell (swin v1 and v2: the same code), its construct mindcv's
    with the batch left to -1 and the channels written out. mindcv computes the batch as
    windows // (h w / ws^2) and reshapes to (b, h/ws, w/ws, ws, ws, -1): MindSpore writes that
    as [1, 8, 8, 7, 7, -1], and free_traced_batch's 0 would then copy the windows' count
    (64 x the batch), not the batch."""

    class _BatchFreeWindowReverse(type(cell)):
        def construct(self, windows, window_size, h, w):
            c = windows.shape[-1]
            x = ops.reshape(windows, (-1, h // window_size, w // window_size, window_size,
                                      window_size, c))
            x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
            return ops.reshape(x, (-1, h, w, c))

    cell.__class__ = _BatchFreeWindowReverse
    return cell


def _unstack(input_x, axis=0):
    """ops.unstack(input_x, axis): the slices along axis, one index each after moving axis
    first (exported as Transpose and Gather); exact."""
    if axis != 0:
        input_x = ops.moveaxis(input_x, axis, 0)
    return tuple(input_x[i] for i in range(input_x.shape[0]))
