"""Run in the mindspore environment by tests/test_export_rewrites.py: for each rule of
converters/mindcv/rewrites.py, a small network using that cell (inside a SequentialCell and
as a named child), primitive (as an attribute, as mindcv's ViT holds it) or function (called
in two cells' constructs, as cait calls ops.unstack) must export to ONNX only after the
rewrite, compute the same values after it, and be rewritten once (a function: put back after
its block). Prints
one JSON line per rule, then one with the erf approximation's largest error against
math.erf over a dense grid."""
from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from converters.mindcv import rewrite_cells, rewrites  # noqa: E402


class Net(nn.Cell):
    def __init__(self, act):
        super().__init__()
        self.body = nn.SequentialCell([nn.Conv2d(3, 4, 3), act()])
        self.act = act()

    def construct(self, x):
        return self.act(self.body(x) * 2.0)


class UnstackNet(nn.Cell):
    """As mindcv ViT's Attention: a primitive held as an attribute, twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.unstack = ops.Unstack(axis=0)
        self.again = ops.Unstack(axis=0)

    def construct(self, x):
        q, k, v = self.unstack(self.conv(x).transpose(1, 0, 2, 3))
        a, b, c = self.again(ops.stack((q, k, v)))
        return a * b + c


class PositionNet(nn.Cell):
    """As mindcv edgenext uses it: x plus the encoding for x's batch and size, twice."""

    def __init__(self):
        from mindcv.models.edgenext import PositionalEncodingFourier

        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.pos = PositionalEncodingFourier(hidden_dim=8, dim=16)
        self.again = PositionalEncodingFourier(hidden_dim=8, dim=16)

    def construct(self, x):
        y = self.conv(x)
        b, _, h, w = y.shape
        return y + self.pos(b, h, w) * self.again(b, h, w)


class L2NormalizeNet(nn.Cell):
    """As mindcv swinv2's WindowCosineAttention: ops.L2Normalize held as an attribute, with
    swinv2's axis and epsilon and with the defaults along another axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.first = ops.L2Normalize(axis=-1, epsilon=1e-12)
        self.second = ops.L2Normalize(axis=1)

    def construct(self, x):
        y = self.first(self.conv(x))
        return self.second(y * 3.0 - 1.0)


class XCANet(nn.Cell):
    """mindcv edgenext's XCA attention twice, on the (B, H*W, C) tokens of a conv."""

    def __init__(self):
        from mindcv.models.edgenext import XCA

        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.first, self.second = XCA(16, num_heads=2), XCA(16, num_heads=2)

    def construct(self, x):
        y = self.conv(x)
        b, c, h, w = y.shape
        tokens = ops.transpose(ops.reshape(y, (b, c, h * w)), (0, 2, 1))
        return self.second(self.first(tokens))


class ResizeNet(nn.Cell):
    """mindcv's bilinear Interpolate (align_corners), up then down, as MobileViT resizes a
    feature map its patches do not divide and back."""

    def __init__(self):
        from mindcv.models.layers.compatibility import Interpolate

        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.up = Interpolate(mode="bilinear", align_corners=True)
        self.down = Interpolate(mode="bilinear", align_corners=True)

    def construct(self, x):
        return self.down(self.up(self.conv(x), size=(10, 10)), size=(7, 7))


class MobileViTNet(nn.Cell):
    """Two mindcv MobileViT blocks (patches of 2 on an 8 x 8 map)."""

    def __init__(self):
        from mindcv.models.mobilevit import MobileViTBlock

        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.first = MobileViTBlock(16, 16, 24, 32, n_transformer_blocks=1, head_dim=8,
                                    patch_h=2, patch_w=2)
        self.second = MobileViTBlock(16, 16, 24, 32, n_transformer_blocks=1, head_dim=8,
                                     patch_h=2, patch_w=2)

    def construct(self, x):
        return self.second(self.first(self.conv(x)))


class WindowNet(nn.Cell):
    """mindcv swin's window partition and reverse (v1's WindowReverse, then v2's): 4 x 4
    windows of an 8 x 8 map."""

    def __init__(self):
        from mindcv.models.swintransformer import WindowPartition, WindowReverse
        from mindcv.models.swintransformerv2 import WindowReverse as WindowReverseV2

        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.partition = WindowPartition(4)
        self.first, self.second = WindowReverse(), WindowReverseV2()

    def construct(self, x):
        y = ops.transpose(self.conv(x), (0, 2, 3, 1))
        y = self.first(self.partition(y) * 2.0, 4, 8, 8)
        return self.second(self.partition(y) + 1.0, 4, 8, 8)


class _Splits(nn.Cell):
    """As mindcv cait's attention calls it: `ops.unstack` in the construct, along `axis`."""

    def __init__(self, axis):
        super().__init__()
        self.axis = axis

    def construct(self, x):
        a, b, c = ops.unstack(x, axis=self.axis)
        return a * b + c


class FunctionUnstackNet(nn.Cell):
    """Two cells calling ops.unstack: along axis 0 of a stack, and along axis 1 (moved
    first by the rewrite)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.first, self.second = _Splits(0), _Splits(1)

    def construct(self, x):
        y = self.conv(x)
        return self.second(ops.stack((self.first(y.transpose(1, 0, 2, 3)), y[:, 0], y[:, 1]),
                                     axis=1))


def held_reshapes(path: str) -> int:
    """Reshape targets that keep a traced number before a -1 (e.g. [4, 196, -1]): what
    MobileViT's unfolding is written as. onnx is imported after mindspore (protobuf)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    targets = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    shapes = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name in targets]
    shapes += [numpy_helper.to_array(a.t) for n in model.graph.node if n.op_type == "Constant"
               and n.output[0] in targets for a in n.attribute if a.name == "value"]
    return sum(1 for s in shapes if s.ndim == 1 and len(s) > 1 and s[0] > 0 and (s == -1).any())


# A network for each rule (by its name), using what the rule replaces twice.
NETS = {"HSwish": lambda: Net(nn.HSwish), "HSigmoid": lambda: Net(nn.HSigmoid),
        "GELU(approximate=False)": lambda: Net(lambda: nn.GELU(approximate=False)),
        "Unstack(axis=0)": UnstackNet,
        # gamma and beta drawn at random: ones and zeros would hide a swapped affine.
        "GroupNorm": lambda: Net(lambda: nn.GroupNorm(2, 4, gamma_init="normal",
                                                      beta_init="normal")),
        "PositionalEncodingFourier": PositionNet, "XCA": XCANet, "L2Normalize": L2NormalizeNet,
        "Interpolate(bilinear, align_corners)": ResizeNet, "MobileViTBlock": MobileViTNet,
        "WindowReverse": WindowNet, "ops.unstack": FunctionUnstackNet}


def erf_error() -> float:
    """max |rational erf - math.erf| over [-6, 6] in steps of 1e-4, in float32 as exported."""
    import math

    x = np.arange(-6.0, 6.0, 1e-4).astype(np.float32)
    z = np.clip(x, -4, 4)
    z2 = z * z

    def horner(cs):
        out = np.float32(cs[0])
        for c in cs[1:]:
            out = out * z2 + np.float32(c)
        return out

    ours = z * horner(rewrite_cells.ERF_NUMERATOR) / horner(rewrite_cells.ERF_DENOMINATOR)
    exact = np.array([math.erf(float(v)) for v in x])
    return float(np.abs(ours.astype(np.float64) - exact).max())


def export(net, x, path) -> str | None:
    try:
        ms.export(net, x, file_name=path, file_format="ONNX")
    except Exception as exc:  # noqa: BLE001 - the exporter's refusal is the finding
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def main() -> None:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    x = ms.Tensor(np.random.default_rng(0).normal(0, 2, (2, 3, 8, 8)).astype(np.float32))
    for rule in rewrites.RULES + rewrites.FUNCTION_RULES:
        with tempfile.TemporaryDirectory() as tmp:
            unchanged = NETS[rule.name]()
            unchanged.set_train(False)
            before = export(unchanged, x, os.path.join(tmp, "before"))
            ref = unchanged(x).asnumpy()
            # A second network with the same weights, rewritten before its first call:
            # MindSpore keeps a network's compiled graph, so calling one network before and
            # after a rewrite gives the old graph's output twice (a broken rewrite read 0.0).
            net = NETS[rule.name]()
            net.set_train(False)
            ms.load_param_into_net(net, {p.name: ms.Parameter(p.data.copy(), name=p.name)
                                         for p in unchanged.get_parameters()}, strict_load=True)
            if isinstance(rule, rewrites.FunctionRule):
                # Replaced while the network compiles: its first call and the export.
                with rewrites.functions_rewritten(net) as counts:
                    out = net(x).asnumpy()
                    after = export(net, x, os.path.join(tmp, "after"))
                again = {} if getattr(rule.owner, rule.attribute) is not rule.replacement \
                    else {"not put back": 1}
            else:
                counts = rewrites.rewrite(net)
                out = net(x).asnumpy()
                after = export(net, x, os.path.join(tmp, "after"))
                again = rewrites.rewrite(net)
            held = {"held_before": before is None
                        and held_reshapes(os.path.join(tmp, "before.onnx")),
                    "held_after": after is None and held_reshapes(os.path.join(tmp, "after.onnx"))}
        print(json.dumps({"rule": rule.name, "export_before": before, "export_after": after,
                          **held,
                          "counts": counts, "again": again,
                          "max_diff": float(np.abs(out - ref).max()),
                          "notes": rewrites.notes(counts)}), flush=True)
    print(json.dumps({"erf_max_error": erf_error()}), flush=True)
    sys.stdout.flush()
    os._exit(0)   # skip MindSpore's noisy Cell.__del__ at exit


if __name__ == "__main__":
    main()
