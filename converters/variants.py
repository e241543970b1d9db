"""Reduced-precision variants of the simplified fp32 model (orchestrator side: ONNX tools only).

- fp16: onnxconverter-common's float16 conversion with fp32 inputs and outputs
  (keep_io_types), so callers feed and read the same tensors as the fp32 model.
- int8: ONNX Runtime static quantization, QDQ format, per-channel int8 weights, uint8
  activations, calibrated on preprocessed images with the manifest's method (entropy or
  percentile, as IxRT calibrates). Histograms are collected a few images at a time
  (CalibStridedMinMax), so 256 calibration images need ~1 GB, not ~25 GB. Node types the
  manifest lists in `exclude_op_types` stay fp32.

Each function writes its output file or raises VariantFailed with the cause; the gates that
decide whether a variant ships are in verify/ (same comparator as fp32) and orchestrator/.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np

from release.provenance import package_version

PRECISIONS = ("fp32", "fp16", "int8")
FIRST_BELOW_DB = 20.0   # SQNR under which an int8 activation counts as parted from fp32


class VariantFailed(Exception):
    pass


def make_fp16(fp32: Path, out: Path) -> dict:
    import onnx
    from onnxconverter_common import float16

    try:
        with warnings.catch_warnings(record=True) as caught:  # one per out-of-range weight
            warnings.simplefilter("always")
            model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(out))
    except Exception as exc:  # noqa: BLE001 - any converter failure fails only this variant
        raise VariantFailed(f"float16 conversion failed: {type(exc).__name__}: {exc}") from exc
    clipped = sum("truncated" in str(w.message) for w in caught)
    return {"converter": "onnxconverter-common float16, keep_io_types=True",
            "onnxconverter_common": package_version("onnxconverter-common"),
            # float16 cannot hold |x| < 1e-7 (flushed to +-1e-7 by the converter) or > 65504
            "weights_clipped_to_fp16_range": clipped}


class _Reader:
    """CalibrationDataReader over an N x C x H x W array, in batches, with the set_range that
    CalibStridedMinMax drives."""

    def __init__(self, data: np.ndarray, batch: int):
        self.data, self.batch = data, batch
        self.set_range(0, len(data))

    def __len__(self) -> int:
        return len(self.data)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.end = start_index, end_index

    def get_next(self):
        if self.position >= self.end:
            return None
        stop = min(self.position + self.batch, self.end)
        batch = {"input": np.ascontiguousarray(self.data[self.position:stop])}
        self.position = stop
        return batch


def _absolute_histograms(self, name_to_arr):
    """onnxruntime's HistogramCollector.collect_absolute_value (the percentile method) with
    one change: every batch after the first is binned with numpy's uniform-bins path
    (bins=count, range=(first, last edge)) instead of passing the edge array, which makes
    numpy sort every activation (74 % of an int8 build here). ORT's edges are meant to be
    uniform (it extends them by whole bin widths) but np.arange in float32 drifts from that
    grid; here they are exactly uniform, so a value near an edge can land one bin apart
    (tests/test_variants_units.py: thresholds within 1 %). `make bench-int8` measures the
    resulting models against ORT's own."""
    for tensor, data in name_to_arr.items():
        data = np.asarray(data).ravel()
        low = np.nanmin(data) if data.size else np.array(0, dtype=data.dtype)
        high = np.nanmax(data) if data.size else np.array(0, dtype=data.dtype)
        data = np.absolute(data)
        if tensor not in self.histogram_dict:
            hist, edges = np.histogram(data, bins=self.num_bins)
            self.histogram_dict[tensor] = (hist, edges.astype(data.dtype), low, high)
            continue
        old_hist, edges, old_low, old_high = self.histogram_dict[tensor]
        top = np.nanmax(data) if data.size else 0
        if top > edges[-1]:
            width = edges[1] - edges[0]
            edges = np.hstack((edges, np.arange(edges[-1] + width, top + width, width)))
        hist, new_edges = np.histogram(data, bins=len(edges) - 1, range=(edges[0], edges[-1]))
        hist[:len(old_hist)] += old_hist
        self.histogram_dict[tensor] = (hist, new_edges.astype(data.dtype),
                                       min(old_low, low), max(old_high, high))


@contextlib.contextmanager
def _fast_histograms(enabled: bool):
    from onnxruntime.quantization.calibrate import HistogramCollector

    original = HistogramCollector.collect_absolute_value
    if enabled:
        HistogramCollector.collect_absolute_value = _absolute_histograms
    try:
        yield
    finally:
        HistogramCollector.collect_absolute_value = original


def make_int8(fp32: Path, out: Path, calibration: np.ndarray, cfg: dict,
              fast_histograms: bool = True) -> dict:
    """cfg: the manifest's variants.int8 block (method, percentile, exclude_op_types)."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = cfg.get("calibration", "entropy")
    stride = 8
    usable = len(calibration) - len(calibration) % stride
    if usable < stride:
        raise VariantFailed(f"int8 calibration needs at least {stride} images, got "
                            f"{len(calibration)}")
    calibration = calibration[:usable]
    exclude_types = set(cfg.get("exclude_op_types", []))
    extra = {"CalibStridedMinMax": stride, "ActivationSymmetric": False,
             "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = float(cfg.get("percentile", 99.999))
    try:
        with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            named = list(cfg.get("exclude_nodes", []))
            unknown = sorted(set(named) - {n.name for n in graph.node})
            if unknown:
                raise VariantFailed(f"variants.int8.exclude_nodes names node(s) the model does "
                                    f"not have: {', '.join(unknown[:5])} (use the names a "
                                    "failed int8 report lists under diagnosis)")
            exclude = sorted({n.name for n in graph.node if n.op_type in exclude_types}
                             | set(named))
            with contextlib.redirect_stdout(io.StringIO()), _fast_histograms(fast_histograms):
                # (the calibrator prints progress)
                quantize_static(
                    str(prepared), str(out), _Reader(calibration, stride),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile,
                                      "minmax": CalibrationMethod.MinMax}[method],
                    nodes_to_exclude=exclude, extra_options=extra)
    except VariantFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - any quantizer failure fails only this variant
        raise VariantFailed(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    nodes = [n.op_type for n in onnx.load(str(out)).graph.node]
    return {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "per_channel": True, "weights": "int8 symmetric", "activations": "uint8",
            "calibration": method, "calibration_images": usable,
            **({"percentile": extra["CalibPercentile"]} if method == "percentile" else {}),
            "excluded_op_types": sorted(exclude_types), "excluded_nodes": len(exclude),
            "excluded_node_names": list(cfg.get("exclude_nodes", [])),
            "histograms": "uniform-bins fast path" if fast_histograms else "onnxruntime's",
            "quantize_linear_nodes": nodes.count("QuantizeLinear"),
            "onnxruntime": package_version("onnxruntime")}


def int8_tensor_errors(fp32: Path, int8: Path, images: np.ndarray, top: int = 10) -> dict:
    """Which activations lose the accuracy: ONNX Runtime's QDQ debugging
    (onnxruntime.quantization.qdq_loss_debug) on `images`, one image at a time. For every
    activation the int8 model quantizes, the signal-to-quantization-noise ratio (dB, lower is
    worse) of the int8 model's dequantized tensor against the fp32 model's (`sqnr_db`: the
    error accumulated up to there) and ORT's figure for that tensor's own quantize/dequantize
    step (`qdq_sqnr_db`). The `top` furthest from fp32, and the first tensor in graph order
    below FIRST_BELOW_DB (where the int8 model starts to part from fp32), each with the node
    that produces it (a name for variants.int8.exclude_nodes). Memory grows with every
    activation of every image, so the caller passes a few images (2 for Res2Net50: ~1.5 GB)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, create_activation_matching,
        modify_model_output_intermediate_tensors)

    with tempfile.TemporaryDirectory(prefix="int8-debug-") as tmp:
        saved = {}
        for name, path in (("float", fp32), ("qdq", int8)):
            saved[name] = Path(tmp) / f"{name}.onnx"
            modify_model_output_intermediate_tensors(str(path), str(saved[name]))
        reader = [{"input": np.ascontiguousarray(images[i:i + 1])} for i in range(len(images))]
        float_acts = collect_activations(str(saved["float"]), iter(reader))
        qdq_acts = collect_activations(str(saved["qdq"]), iter(reader))
    matched = create_activation_matching(qdq_acts, float_acts)
    errors = compute_activation_error({k: v for k, v in matched.items() if "float" in v})
    nodes = list(onnx.load(str(int8)).graph.node)
    producers = {out: node for node in nodes for out in node.output}
    order = {out: k for k, node in enumerate(nodes) for out in node.output}
    rows = []
    for tensor, err in errors.items():
        node = producers.get(tensor)
        rows.append({"tensor": tensor, "node": node.name if node is not None else None,
                     "op_type": node.op_type if node is not None else None,
                     "sqnr_db": round(float(err["xmodel_err"]), 2),
                     "qdq_sqnr_db": round(float(err["qdq_err"]), 2)})
    in_order = sorted(rows, key=lambda r: order.get(r["tensor"], len(nodes)))
    first = next((r for r in in_order if r["sqnr_db"] < FIRST_BELOW_DB), None)
    rows.sort(key=lambda r: r["sqnr_db"])
    return {"first_below": {"threshold_db": FIRST_BELOW_DB, **(first or {})} if first else None,
            "method": "onnxruntime.quantization.qdq_loss_debug: SQNR in dB (lower: more "
                      "error) of each activation's own quantize/dequantize step "
                      "(qdq_sqnr_db) and of the int8 activation vs fp32 (sqnr_db)",
            "images": len(images),
            "tensors_compared": len(rows), "worst": rows[:top]}

