"""Export rewrites for MindSpore: cells and primitives its ONNX exporter has no rule for,
replaced before export by compositions of ops it can write (as mmdeploy's rewriters do for
torch).

MindSpore 2.7.2's exporter stops with `Can not find key X in convert map` on:
- HSwish, HSigmoid (mindcv MobileNetV3): rewritten with ReLU6, which exports as Clip, exact;
- Erf, which `nn.GELU(approximate=False)` computes (edgenext, poolformer, coat, the MAE
  decoder): rewritten as 0.5 x (1 + erf(x / sqrt 2)) with erf the float32 rational
  approximation Eigen and XLA use on CPUs (ERF_NUMERATOR / ERF_DENOMINATOR below), within
  about 1e-7 of erf everywhere (tests/helpers/ms_rewrite_check.py measures it), so the
  rewrite is exact to float32 rounding, not bit for bit;
- the Unstack primitive (mindcv ViT's attention, `self.unstack = ops.Unstack(axis=0)`):
  rewritten as one index per slice, which exports as Gather; exact;
- GroupNorm (nn.GroupNorm, mindcv PoolFormer's norm layers): rewritten as its mean and
  variance per group with the batch left to -1, keeping the norm's gamma and beta;
- LogicalNot, which mindcv edgenext's and xcit's PositionalEncodingFourier apply to an
  all-False mask before cumulative sums: the cell keeps its projection and Parameters, and
  its construct takes the resulting sin/cos table, computed in numpy at compile time for one
  image (it is the same for every image, and broadcasts where the model adds it); float32
  rounding of sin/cos, 2.4e-7 on the test network;
- L2Normalize, which mindcv edgenext's XCA attention makes inside its construct: the cell's
  construct is swapped for mindcv's own with x / sqrt(max(sum(x^2), 1e-4)) in its place;
  and which mindcv swinv2's cosine attention holds as an attribute (axis -1, epsilon 1e-12):
  replaced by the same formula with the primitive's own axis and epsilon;
- ResizeBilinearV2, which mindcv's Interpolate(mode="bilinear", align_corners=True) runs
  (MobileViT where its patches do not divide a feature map): two matrix products with
  constant bilinear weights (rows, then columns); 5.2e-7 on the test network.
And one rule for a batch the exporter writes as a number: MobileViTBlock's unfolding and
folding reshape to `(batch_size * patch_area, N, -1)` and `(batch_size, P, N, -1)`, traced as
[4, N, -1] and [1, 4, N, -1], which no graph fix can tell from dimensions that are not the
batch; the block's methods are swapped for mindcv's own with the batch left to -1. Swin's
WindowReverse (v1 and v2) is the same case: (b, h/ws, w/ws, ws, ws, -1), its batch b traced
as 1 beside a -1.
A rule is added only for what the exporter measurably refuses (tests/helpers/
ms_rewrite_check.py): `nn.SiLU`, which issue 30 listed for MobileViT, exports unchanged in
2.7.2, so it has none.

Functions a construct calls (`ops.unstack(qkv, axis=0)` in mindcv cait's and xcit's
attention) are neither cells nor attributes: a FunctionRule replaces the function on its
module (`mindspore.ops.unstack`) while the exporter parses the network, as mmdeploy's
FUNCTION_REWRITER does for torch functions, and puts it back after. It applies only where a
cell's construct calls it as `called_as` says, and the report counts those cells.

The reference logits always come from the unmodified model (the worker computes them before
export), so the logit gate checks every rewrite; the report lists the rewrites applied under
`source.export_fixups`.

Runs in the mindspore environment only.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Callable

from mindspore import nn, ops

from converters.mindcv.rewrite_cells import (_XCA, _GELUErf, _GroupNorm, _HSigmoid, _HSwish,
                                              _Interpolate, _L2Normalize, _MobileViTBlock,
                                              _PositionalEncodings,
                                              _Unstack, _WindowReverse, _bilinear_align_corners,
                                              _interpolate_as_matmul, _mobilevit_batch_free,
                                              _unstack, _window_reverse_batch_free,
                                              _without_mask, _xca_without_l2normalize)


@dataclass(frozen=True)
class Rule:
    name: str                         # as the report names it
    missing: str                      # the op the exporter has no rule for
    matches: Callable[[object], bool]
    replacement: Callable[[object], nn.Cell]   # given the cell or primitive it replaces
    why: str
    because: str | None = None   # the cause, where it is not an op the exporter lacks


RULES: tuple[Rule, ...] = (
    # The class matched exactly: a subclass may compute something else.
    Rule("HSwish", "HSwish", lambda c: type(c) is nn.HSwish, lambda _: _HSwish(),
         "x * relu6(x + 3) / 6"),
    Rule("HSigmoid", "HSigmoid", lambda c: type(c) is nn.HSigmoid, lambda _: _HSigmoid(),
         "relu6(x + 3) / 6"),
    # nn.GELU keeps approximate=False as the string "none" (True as "tanh").
    Rule("GELU(approximate=False)", "Erf",
         lambda c: type(c) is nn.GELU and c.approximate == "none", lambda _: _GELUErf(),
         "0.5 x (1 + erf(x / sqrt 2)), erf as Eigen's float32 rational approximation"),
    Rule("Unstack(axis=0)", "Unstack",
         lambda c: type(c) is ops.Unstack and c.axis == 0, lambda _: _Unstack(),
         "x[0], x[1], ..."),
    Rule("GroupNorm", "GroupNorm", lambda c: type(c) is nn.GroupNorm, _GroupNorm,
         "(x - mean) / sqrt(var + eps) per group, then gamma and beta"),
    # mindcv edgenext and xcit: `~mask` of an all-False mask, then cumulative sums.
    Rule("PositionalEncodingFourier", "LogicalNot",
         lambda c: type(c) in _PositionalEncodings,
         _without_mask, "its all-False mask's sin/cos table as a constant for one image "
                        "(the same for every image), then its projection"),
    # mindcv edgenext's cross-covariance attention makes ops.L2Normalize(-1) in its construct.
    Rule("XCA", "L2Normalize", lambda c: type(c) in _XCA,
         _xca_without_l2normalize, "L2Normalize(-1) as x / sqrt(max(sum(x^2), 1e-4))"),
    # mindcv swinv2's cosine attention holds ops.L2Normalize(axis=-1, epsilon=1e-12).
    Rule("L2Normalize", "L2Normalize", lambda c: type(c) is ops.L2Normalize, _L2Normalize,
         "x / sqrt(max(sum(x^2) along its axis, its epsilon))"),
    # mindcv's Interpolate(mode="bilinear", align_corners=True) (MobileViT, at sizes its
    # patches do not divide).
    Rule("Interpolate(bilinear, align_corners)", "ResizeBilinearV2",
         lambda c: type(c) in _Interpolate and _bilinear_align_corners(c),
         _interpolate_as_matmul, "two matrix products with constant bilinear weights"),
    # Not an op the exporter lacks: a batch it writes as a number (see the function).
    Rule("MobileViTBlock", "Reshape",
         lambda c: type(c) in _MobileViTBlock,
         _mobilevit_batch_free, "unfolding and folding with the batch left to -1",
         because="MindSpore's exporter writes `batch_size * patch_area` beside a -1 as the "
                 "number it traced at batch 1"),
    # Not an op the exporter lacks: swin's window_reverse, (b, h/ws, w/ws, ws, ws, -1).
    Rule("WindowReverse", "Reshape", lambda c: type(c) in _WindowReverse,
         _window_reverse_batch_free, "its reshapes with the batch left to -1",
         because="MindSpore's exporter writes swin's window batch beside a -1 as the number "
                 "it traced at batch 1"),
)


@dataclass(frozen=True)
class FunctionRule:
    name: str                         # as the report names it
    missing: str                      # the op the exporter has no rule for
    owner: object                     # the module the construct looks the function up on
    attribute: str
    called_as: str                    # how a construct's source calls it
    replacement: Callable
    why: str
    because: str | None = None


FUNCTION_RULES: tuple[FunctionRule, ...] = (
    # mindcv cait's and xcit's attention: `q, k, v = ops.unstack(qkv, axis=0)`.
    FunctionRule("ops.unstack", "Unstack", ops, "unstack", "ops.unstack(", _unstack,
                 "x[0], x[1], ... along its axis"),
)


@functools.lru_cache(maxsize=None)
def _construct_source(cls) -> str:
    try:
        return inspect.getsource(cls.construct)
    except (OSError, TypeError):
        return ""


def callers(cell: nn.Cell, rules: tuple[FunctionRule, ...] = FUNCTION_RULES) -> dict[str, int]:
    """How many cells of the network (the network included) call each rule's function in
    their construct."""
    counts: dict[str, int] = {}
    for _, child in cell.cells_and_names():
        for rule in rules:
            if rule.called_as in _construct_source(type(child)):
                counts[rule.name] = counts.get(rule.name, 0) + 1
    return counts


@contextlib.contextmanager
def functions_rewritten(cell: nn.Cell, rules: tuple[FunctionRule, ...] = FUNCTION_RULES):
    """Within the block, each rule's function that a construct of `cell` calls is replaced on
    its module; yields callers(cell). MindSpore resolves `ops.unstack` when it parses a
    construct, so the network must be compiled (exported, or run for the first time) inside
    the block; the originals are back after it, whatever happened."""
    counts = callers(cell, rules)
    saved = []
    try:
        for rule in rules:
            if rule.name in counts:
                saved.append((rule, getattr(rule.owner, rule.attribute)))
                setattr(rule.owner, rule.attribute, rule.replacement)
        yield counts
    finally:
        for rule, original in reversed(saved):
            setattr(rule.owner, rule.attribute, original)


def _rule(child, rules) -> Rule | None:
    return next((r for r in rules if r.matches(child)), None)


def rewrite(cell: nn.Cell, rules: tuple[Rule, ...] = RULES) -> dict[str, int]:
    """Replace, in place and recursively, every child cell and every primitive held as an
    attribute that a rule matches; returns how many each rule replaced. A SequentialCell
    runs its `cell_list`, not its named cells, so that list is rebuilt after a
    replacement."""
    counts: dict[str, int] = {}
    for name, primitive in list(getattr(cell, "_primitives", {}).items()):
        rule = _rule(primitive, rules)
        if rule is not None:
            del cell._primitives[name]
            cell.__dict__.pop(name, None)
            setattr(cell, name, rule.replacement(primitive))
            counts[rule.name] = counts.get(rule.name, 0) + 1
    for name, child in list(cell.name_cells().items()):
        rule = _rule(child, rules)
        if rule is None:
            for key, n in rewrite(child, rules).items():
                counts[key] = counts.get(key, 0) + n
            continue
        replaced = rule.replacement(child)
        if replaced is not child:   # a cell rewritten in place keeps its place and names
            setattr(cell, name, replaced)
        else:                       # and its children may need rules of their own
            for key, n in rewrite(child, rules).items():
                counts[key] = counts.get(key, 0) + n
        if isinstance(getattr(cell, "cell_list", None), list):
            cell.cell_list = list(cell._cells.values())
        counts[rule.name] = counts.get(rule.name, 0) + 1
    return counts


def notes(counts: dict[str, int], rules: tuple = RULES + FUNCTION_RULES) -> list[str]:
    """One export_fixups line per rule applied (cell and function rules)."""
    by_name = {r.name: r for r in rules}

    def cause(rule) -> str:
        return rule.because or f"MindSpore's ONNX exporter has no {rule.missing} rule"

    return [f"export rewrite: {n} x {name} -> {by_name[name].why} ({cause(by_name[name])}; "
            "the logit gate compares with the unmodified model)"
            for name, n in sorted(counts.items())]
