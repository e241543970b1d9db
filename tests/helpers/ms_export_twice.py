"""Convert one mindcv model twice in one process, as a warm worker takes job after job (a
fresh model each time: build, the reference forward, export, through the pipeline's own
adapter); prints whether the two files are the same bytes and the graph's name. Runs in the
mindspore environment."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import mindspore  # first: see converters/mindcv/worker.py
import numpy as np

from converters.mindcv.worker import MindCVAdapter


def main() -> None:
    model_id = sys.argv[1]
    adapter = MindCVAdapter()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"]
        for path in paths:
            mindspore.set_seed(0)   # the same weights (a job loads its checkpoint)
            model = adapter.build(model_id, 10)   # graph mode, CPU, as the worker
            adapter.forward(model, x, 2)   # compiles graphs: MindSpore's counters move on
            adapter.export(model, x[:1], path, 11, True, Path(tmp))
        import onnx

        first, second = (onnx.load(str(p)) for p in paths)
        print(first.SerializeToString() == second.SerializeToString(), first.graph.name)


if __name__ == "__main__":
    main()
