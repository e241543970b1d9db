"""Export rewrites for MindSpore: cells its ONNX exporter has no rule for, replaced before
export by compositions of cells it can write (as mmdeploy's rewriters do for torch).

MindSpore 2.7.2's exporter stops with `Can not find key HSwish in convert map` on
mindcv's MobileNetV3 (`nn.HSwish`, `nn.HSigmoid`). Each rule below names the cell class it
replaces and an equivalent built from ReLU6, which exports as Clip. A rule is added only for
a cell the exporter measurably refuses (tests/helpers/ms_rewrite_check.py): `nn.SiLU`, which
issue 30 listed for MobileViT, exports unchanged in 2.7.2, so it has none. The reference logits always come from the unmodified model (the
worker computes them before export), so the logit gate checks every rewrite; the report
lists the rewrites applied under `source.export_fixups`.

Runs in the mindspore environment only.
"""
from __future__ import annotations

from typing import Callable

from mindspore import nn


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


# The cell class replaced (matched exactly: a subclass may compute something else) ->
# (the replacement's factory, why).
RULES: dict[type, tuple[Callable[[], nn.Cell], str]] = {
    nn.HSwish: (_HSwish, "x * relu6(x + 3) / 6"),
    nn.HSigmoid: (_HSigmoid, "relu6(x + 3) / 6"),
}


def rewrite(cell: nn.Cell, rules: dict = RULES) -> dict[str, int]:
    """Replace, in place and recursively, every child cell whose class is a key of `rules`;
    returns how many of each class were replaced. A SequentialCell runs its `cell_list`,
    not its named cells, so that list is rebuilt after a replacement."""
    counts: dict[str, int] = {}
    for name, child in list(cell.name_cells().items()):
        rule = rules.get(type(child))
        if rule is None:
            for key, n in rewrite(child, rules).items():
                counts[key] = counts.get(key, 0) + n
            continue
        setattr(cell, name, rule[0]())
        if isinstance(getattr(cell, "cell_list", None), list):
            cell.cell_list = list(cell._cells.values())
        counts[type(child).__name__] = counts.get(type(child).__name__, 0) + 1
    return counts


def notes(counts: dict[str, int], rules: dict = RULES) -> list[str]:
    """One export_fixups line per rewritten class."""
    by_name = {cls.__name__: why for cls, (_, why) in rules.items()}
    return [f"export rewrite: {n} x {name} -> {by_name[name]} (MindSpore's ONNX exporter has "
            f"no {name} rule; the logit gate compares with the unmodified model)"
            for name, n in sorted(counts.items())]
