"""Load a state dict saved from an mmpretrain model into a fresh build of it, through the
pipeline worker's own adapter (converters/mmpretrain/worker.py), and print what load()
reports as JSON.

    python tests/helpers/mm_load.py MODEL_ID WORKDIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from converters.mmpretrain.worker import MMPretrainAdapter

if __name__ == "__main__":
    model_id, workdir = sys.argv[1], Path(sys.argv[2])
    adapter = MMPretrainAdapter()
    torch.manual_seed(0)
    made = adapter.build(model_id, 1000)
    torch.save({"state_dict": made.state_dict()}, workdir / "saved.pth")
    fresh = adapter.build(model_id, 1000)
    info = adapter.load(fresh, workdir / "saved.pth", [], 1000)
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        same = torch.equal(made(x, mode="tensor"), fresh(x, mode="tensor"))
    print(json.dumps({"buffers_rederived": info.get("buffers_rederived"), "same_logits": same}))
