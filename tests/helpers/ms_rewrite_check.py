"""Run in the mindspore environment by tests/test_export_rewrites.py: for each rule of
converters/mindcv/rewrites.py, a small network using that cell (inside a SequentialCell and
as a named child) must export to ONNX only after the rewrite, compute the same values after
it, and be rewritten once. Prints one JSON line per rule."""
from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn  # noqa: E402

from converters.mindcv import rewrites  # noqa: E402


class Net(nn.Cell):
    def __init__(self, act):
        super().__init__()
        self.body = nn.SequentialCell([nn.Conv2d(3, 4, 3), act()])
        self.act = act()

    def construct(self, x):
        return self.act(self.body(x) * 2.0)


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
    for cls in rewrites.RULES:
        with tempfile.TemporaryDirectory() as tmp:
            # A fresh network each: MindSpore caches a network's compiled graph.
            unchanged = Net(cls)
            unchanged.set_train(False)
            before = export(unchanged, x, os.path.join(tmp, "before"))
            net = Net(cls)
            net.set_train(False)
            ref = net(x).asnumpy()
            counts = rewrites.rewrite(net)
            out = net(x).asnumpy()
            after = export(net, x, os.path.join(tmp, "after"))
        print(json.dumps({"rule": cls.__name__, "export_before": before, "export_after": after,
                          "counts": counts, "again": rewrites.rewrite(net),
                          "max_diff": float(np.abs(out - ref).max()),
                          "notes": rewrites.notes(counts)}), flush=True)
    sys.stdout.flush()
    os._exit(0)   # skip MindSpore's noisy Cell.__del__ at exit


if __name__ == "__main__":
    main()
