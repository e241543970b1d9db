"""Export rewrites for mmpretrain: functions whose traced form is wrong for the exported graph,
replaced only while torch.onnx.export traces (as mmdeploy's function rewriters do).

The reference logits come from the unmodified model (the worker computes them before
export), so the logit gate, which also runs the graph at batch 1 and at the verification
batch (verify/batch.py), checks every rewrite. Applied rewrites are named in the report
(`source.export_fixups`).

Runs in the mmpretrain environment only.
"""
from __future__ import annotations

from converters.worker_flow import class_rewrites


def _window_reverse(windows, H, W, window_size):  # noqa: N803 - mmpretrain's signature
    """ShiftWindowMSA.window_reverse with the batch left to view(-1, ...): mmpretrain's
    `B = int(windows.shape[0] / (H * W / window_size / window_size))` is a Python int while
    tracing, so the traced batch (1) is baked into the Reshape and a dynamic-batch graph is
    wrong at any other batch (swin-tiny: right at batch 1, max diff 1.6 at batch 16)."""
    channels = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size,
                     channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, channels)


# (module, class, attribute, replacement, what it changes)
RULES = [
    ("mmpretrain.models.utils.attention", "ShiftWindowMSA", "window_reverse",
     staticmethod(_window_reverse),
     "the batch from view(-1) instead of a traced int(), which bakes the trace batch in"),
]


def rewritten(model, rules=RULES):
    """Patch, for the duration of the block, each rule whose class the model uses; yields the
    list of notes for the applied ones (converters/worker_flow.py class_rewrites)."""
    return class_rewrites(rules, {type(m) for m in model.modules()})
