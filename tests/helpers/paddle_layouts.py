"""Load checkpoint files through the PaddleClas adapter (test helper, paddle env) and say,
per file, the layout detected and how far each loaded tensor is from those of a reference
file loaded the same way.

    python tests/helpers/paddle_layouts.py MODEL_ID REFERENCE.pdparams OTHER.pdparams... > out.json
"""
import json
import sys
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def loaded(adapter, model_id, path):
    model = adapter.build(model_id, 1000)
    info = adapter.load(model, Path(path), [], 1000)
    return info, {k: v.numpy() for k, v in model.state_dict().items()}


def main(model_id, reference, *others):
    from converters.paddleclas.worker import PaddleClasAdapter

    adapter = PaddleClasAdapter()
    _, ref = loaded(adapter, model_id, reference)
    out = {}
    for path in others:
        info, state = loaded(adapter, model_id, path)
        out[Path(path).name] = {
            "layout": info["layout"], "keys": sorted(state) == sorted(ref),
            "max_abs_diff": max(float(np.abs(state[k] - ref[k]).max()) for k in ref)}
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
