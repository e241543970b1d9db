"""Gate power, shown per model: the logit check must catch faults that matter in this very
model. Knows nothing of frameworks: it sees an ONNX file, input tensors and reference logits.

A fault is a copy of the simplified model with one weight tensor multiplied by
(1 + s x N(0, 1)) (seeded), s on the ladder NOISES (1e-3 .. 1). For up to LAYERS Conv layers
nearest the middle of the graph whose weights reach the logits at all (else Gemm/MatMul
ones), and for the classifier (the last Gemm/MatMul), the ladder is climbed from the
smallest fault until the logit check (the same `compare_logits` as the real model's, against
the source's logits) fails: that fault size is the gate's resolution at that layer,
reported.

What a fault does to the model is measured in the model's own output, the class
probabilities: the largest total-variation distance between the clean and the faulty
softmax over the verification images (the share of probability the fault moves). A fault
that moves at least MATTERS (one percentage point) on some image matters to anyone using
the model; one that moves less does not, whatever its logit difference. This is what makes
the verdict independent of how the model was initialised and of its logit scale:
- an insensitive model (plain init: a 1e-3 fault in a mid conv moves its logits by 1e-5)
  needs a larger fault before the fault matters, and the ladder finds the size the gate
  catches;
- a large-logit model (|logit| ~1e3) has a limit whose rtol part is large, but a fault
  under it moves no probability.

The check `canary_caught` fails only when the gate let through a fault that matters (its
measured figure is the largest probability shift let through; the limit is MATTERS): the
tolerance is then demonstrably blind, and the detail names the layer, the fault size, the
logit difference and the limit. A model whose logits do not respond to any tried weight even
at s = 1, or that has no weight to perturb, or where no fault on the ladder was caught and
none mattered, passes with `warning` set in the report: the gate's power is not shown, and
the run says so.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from verify.compare import Check, compare_logits
from verify.ort_runner import OrtRunner

NOISES = (1e-3, 1e-2, 1e-1, 1.0)  # fault sizes, smallest first
SEED = 0
LAYERS = 2        # mid layers whose resolution is searched (and the classifier); each fault
                  # is one more ORT run: trained-like models take 3 (one step per layer)
MAX_TRIES = 8     # Convs (then Gemm/MatMuls) tried to find LAYERS that reach the logits
NO_EFFECT = 1e-5  # relative to max |logit|: below this the copy computes the same function
MATTERS = 0.01    # total-variation distance of the class probabilities: 1 percentage point


def _constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The graph's constant tensors by name: its initializers and its Constant nodes' values
    (paddle2onnx writes weights as Constant nodes, which onnxsim moves to initializers only
    with its optimizer on: PaddleClas SwinTransformer_tiny is simplified without it)."""
    found = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        for attr in node.attribute if node.op_type == "Constant" else ():
            if attr.name == "value":
                found[node.output[0]] = attr.t
    return found


def _weighted(model: onnx.ModelProto, ops: tuple[str, ...]) -> list[tuple[str, str]]:
    constants = _constant_tensors(model)
    return [(node.name or f"{node.op_type}#{k}", name)
            for k, node in enumerate(model.graph.node) if node.op_type in ops
            for name in node.input[1:2] if name in constants
            and np.any(numpy_helper.to_array(constants[name]))]


def candidates(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node name, constant tensor name) of mid-network weights: Convs with a constant, not
    all-zero weight, nearest the middle of the graph first (at most MAX_TRIES), then
    Gemm/MatMul ones the same way (transformers' mid layers; and when no mid conv reaches
    the logits, as in a plain-init MobileNetV2 whose ReLU6 saturate). All-zero weights are
    left out: a BatchNorm with gamma 0 folded into its conv leaves zeros, which relative
    noise cannot change."""
    found_all = []
    for ops in (("Conv",), ("Gemm", "MatMul")):
        found = _weighted(model, ops)
        middle = len(found) // 2
        order = sorted(range(len(found)), key=lambda i: (abs(i - middle), i))
        found_all += [found[i] for i in order][:MAX_TRIES]
    return found_all


def head(model: onnx.ModelProto) -> tuple[str, str] | None:
    """The classifier: the last Gemm/MatMul with a constant weight (None when there is
    none). Always searched besides the mid layers: in an insensitive model no mid-layer fault
    may matter, while a fault in the head does, so a loose tolerance still shows."""
    found = _weighted(model, ("Gemm", "MatMul"))
    return found[-1] if found else None


def faulty_weight(array: np.ndarray, noise: float, seed: int = SEED) -> np.ndarray:
    """`array` times (1 + noise x N(0, 1)), seeded, in its own dtype."""
    rng = np.random.default_rng(seed)
    return (array * (1 + noise * rng.standard_normal(array.shape))).astype(array.dtype)


def perturbed(model: onnx.ModelProto, weight: str, noise: float,
              seed: int = SEED) -> onnx.ModelProto:
    """A copy of `model` with the constant tensor `weight` (an initializer or a Constant
    node's value) times (1 + noise x N(0, 1))."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    tensor = _constant_tensors(copy)[weight]
    faulty = faulty_weight(numpy_helper.to_array(tensor), noise, seed)
    tensor.CopyFrom(numpy_helper.from_array(faulty, tensor.name))
    return copy


def probability_shift(a: np.ndarray, b: np.ndarray) -> float:
    """The largest total-variation distance between softmax(a) and softmax(b) over the rows:
    the share of class probability that differs (0 .. 1)."""
    def softmax(x):
        x = x.astype(np.float64)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return float((0.5 * np.abs(softmax(a) - softmax(b)).sum(axis=1)).max())


def _step(noise: float, out: np.ndarray, clean: np.ndarray, reference: np.ndarray,
          tol: dict) -> dict:
    checks = compare_logits(reference, out, tol, {})   # only the figures are kept
    worst = next((c for c in checks if c.name == "max_abs_diff"), None)
    finite = bool(np.isfinite(out).all())
    return {"noise": noise,
            "effect": float(np.abs(out - clean).max()) if finite else None,
            "probability_shift": round(probability_shift(out, clean), 6) if finite else 1.0,
            "max_abs_diff": worst.measured if worst else None,
            "limit": worst.limit if worst else None,
            "caught": any(not c.passed for c in checks),
            "failed_checks": sorted(c.name for c in checks if not c.passed)}


def canary_check(model_path: Path, inputs: np.ndarray, reference: np.ndarray, tol: dict,
                 threads: int | None = None, clean: np.ndarray | None = None
                 ) -> tuple[Check, dict]:
    """The canary_caught check and report['verification']['canary'].

    `clean`: the unperturbed model's logits on `inputs` when the caller has them already."""
    scope = {"model": "canary", "stage": "verify"}
    model = onnx.load(str(model_path))
    if clean is None:
        clean = OrtRunner(model_path, threads).infer(inputs, len(inputs))
    scale = float(np.abs(clean).max()) or 1.0
    order = candidates(model)
    classifier = head(model)
    if classifier and classifier not in order:
        order.append(classifier)
    tried: list[str] = []
    layers: list[dict] = []
    scratch = tempfile.TemporaryDirectory(prefix="canary-", dir=model_path.parent)
    path = Path(scratch.name) / "canary.onnx"   # removed by `with scratch` below

    def run(weight: str, noise: float) -> np.ndarray:
        # A written copy: ONNX Runtime's SessionOptions.add_initializer does not replace a
        # weight the model already holds (measured: the logits were the clean model's).
        onnx.save(perturbed(model, weight, noise), str(path))
        return OrtRunner(path, threads).infer(inputs, len(inputs))

    def no_effect(out: np.ndarray) -> bool:
        return bool(np.isfinite(out).all()) and \
            float(np.abs(out - clean).max()) <= NO_EFFECT * scale

    with scratch:
        for node, weight in order:
            if len(layers) >= LAYERS and (node, weight) != classifier:
                continue   # enough mid layers: only the classifier is still searched
            tried.append(node)
            outs = {NOISES[0]: run(weight, NOISES[0])}
            if no_effect(outs[NOISES[0]]):   # does this weight reach the logits at all?
                outs[NOISES[-1]] = run(weight, NOISES[-1])
                if no_effect(outs[NOISES[-1]]):
                    continue
            steps = []
            for noise in NOISES:
                out = outs[noise] if noise in outs else run(weight, noise)
                steps.append(_step(noise, out, clean, reference, tol))
                if steps[-1]["caught"]:
                    break
            caught = [s["noise"] for s in steps if s["caught"]]
            layers.append({"node": node, "weight": weight, "steps": steps,
                           "smallest_caught": caught[0] if caught else None})
    return _verdict(layers, tried, scope)


def _fault(layer: dict, step: dict) -> str:
    return f"{layer['node']}'s weights x (1 + {step['noise']:g} N(0,1))"


def _verdict(layers: list[dict], tried: list[str], scope: dict) -> tuple[Check, dict]:
    info: dict = {"noises": list(NOISES), "seed": SEED, "matters": MATTERS,
                  "tried": tried, "layers": layers}
    if not layers:
        warning = ("no Conv/Gemm/MatMul weight to perturb" if not tried else
                   f"the logits do not respond to the weights of the {len(tried)} node(s) "
                   f"tried ({', '.join(tried[:3])}{'...' if len(tried) > 3 else ''}), even "
                   f"at x (1 + {NOISES[-1]:g} N(0,1))")
        info.update(status="not_shown", warning=f"gate power not shown: {warning}",
                    largest_let_through=None, resolution=None)
        return (Check("canary_caught", True, None, f"< {MATTERS:g}",
                      f"gate power not shown: {warning}", scope), info)
    let_through = [(layer, s) for layer in layers for s in layer["steps"] if not s["caught"]]
    worst = max(let_through, key=lambda ls: ls[1]["probability_shift"], default=None)
    shift = worst[1]["probability_shift"] if worst else 0.0
    caught = [(layer, s) for layer in layers for s in layer["steps"] if s["caught"]]
    info["largest_let_through"] = shift
    info["resolution"] = min((s["noise"] for _, s in caught), default=None)
    if shift >= MATTERS:
        layer, step = worst
        info["status"] = "blind"
        detail = (f"a copy with {_fault(layer, step)} moves {shift:.1%} of the class "
                  f"probability on some image and differs from the source by "
                  f"{step['max_abs_diff']:.3g}, yet passes the logit check (limit "
                  f"{step['limit']:.3g}): the tolerance is too loose to catch a fault that "
                  "matters; tighten it in the manifest")
        return Check("canary_caught", False, shift, f"< {MATTERS:g}", detail, scope), info
    if not caught:
        info["status"] = "not_shown"
        info["warning"] = (f"gate power not shown: no fault up to x (1 + {NOISES[-1]:g} "
                           f"N(0,1)) in {len(layers)} layer(s) was caught, and none moved "
                           f"{MATTERS:.0%} of the class probability")
        return Check("canary_caught", True, shift, f"< {MATTERS:g}", info["warning"],
                     scope), info
    info["status"] = "caught"
    per_layer = "; ".join(
        f"{layer['node']}: {layer['smallest_caught']:g}" if layer["smallest_caught"]
        else f"{layer['node']}: none up to {NOISES[-1]:g} (largest shift "
             f"{max(s['probability_shift'] for s in layer['steps']):.2%})"
        for layer in layers)
    layer, step = min(caught, key=lambda ls: ls[1]["noise"])
    size = f"fails {', '.join(step['failed_checks'])}"
    if step["max_abs_diff"] is not None:
        size += (f"; max|diff| {step['max_abs_diff']:.3g}, "
                 + (f"{step['max_abs_diff'] / step['limit']:.1f}x the limit" if step["limit"]
                    else "limit") + f" {step['limit']:.3g}")
    detail = (f"caught: the smallest fault caught is {_fault(layer, step)} ({size}); "
              f"smallest caught per layer: {per_layer}; the largest fault let through moves "
              f"{shift:.2%} of the class probability (< {MATTERS:.0%})")
    return Check("canary_caught", True, shift, f"< {MATTERS:g}", detail, scope), info
