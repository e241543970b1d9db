"""Read a MindSpore .ckpt with MindSpore and split network weights from optimizer state.

A .ckpt is a protobuf (`Checkpoint { repeated Value { tag; TensorProto tensor } }`), not a
pickle: reading it runs no code. Training checkpoints written by
`save_checkpoint(TrainOneStepCell(...))` carry the optimizer's state beside the weights
(`global_step`, `learning_rate`, `momentum`, `moments.<param>` for Momentum; `moment1.`,
`moment2.`, `beta1_power`... for Adam). Those are set aside and listed in the report; the
network's own weights are then loaded strictly.
"""
from __future__ import annotations

from pathlib import Path

from converters.protocol import WorkerError
from converters.worker_flow import require_file

OPTIMIZER_SCALARS = {
    "global_step", "learning_rate", "momentum", "beta1_power", "beta2_power", "weight_decay",
    "loss_scale", "scale_sense", "current_iterator_step", "last_overflow_iterator_step",
    "epoch_num", "step_num", "optimizer.global_step", "optimizer.learning_rate",
}
OPTIMIZER_PREFIXES = ("moments.", "moment1.", "moment2.", "accum.", "mean_grad.",
                      "mean_square.", "adam_m.", "adam_v.", "linear.", "optimizer.")


def is_optimizer_state(key: str, network_keys: set[str]) -> bool:
    if key in network_keys:
        return False
    return key in OPTIMIZER_SCALARS or key.startswith(OPTIMIZER_PREFIXES)


def load_ckpt(path: Path, network_keys: set[str]) -> tuple[dict, dict]:
    """Return ({network key: Parameter}, info). Raises WorkerError with a user-facing cause."""
    import mindspore as ms

    path = Path(path)
    size = require_file(path)
    head = path.read_bytes()[:4]
    if head[:2] == b"PK" or head[:1] == b"\x80":
        kind = "a zip archive (a PyTorch .pth?)" if head[:2] == b"PK" else "a pickle (.pdparams?)"
        raise WorkerError("checkpoint_format", f"{path.name} is {kind}, not a MindSpore .ckpt")
    try:
        params = ms.load_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
        raise WorkerError("checkpoint_format",
                          f"cannot read {path.name} ({size} bytes): truncated, corrupt or not a "
                          f"MindSpore checkpoint. MindSpore said: {str(exc)[:200]}",
                          {"bytes": size}) from None
    if not params:
        raise WorkerError("checkpoint_format", f"{path.name} holds no tensors")
    optimizer = sorted(k for k in params if is_optimizer_state(k, network_keys))
    weights = {k: v for k, v in params.items() if k not in set(optimizer)}
    info = {"container": ".ckpt (protobuf)", "tensors": len(params), "demo": False,
            "network_tensors": len(weights), "layout": "mindcv"}
    if optimizer:
        info["optimizer_state_ignored"] = {"count": len(optimizer), "first": optimizer[:8]}
    return weights, info
