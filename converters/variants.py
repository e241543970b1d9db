"""Reduced-precision variants of the simplified fp32 model (orchestrator side: ONNX tools only).

- fp16: onnxconverter-common's float16 conversion with fp32 inputs and outputs
  (keep_io_types), so callers feed and read the same tensors as the fp32 model.
- int8: ONNX Runtime static quantization, QDQ format, per-channel int8 weights, uint8
  activations, calibrated on preprocessed images with the manifest's method (entropy or
  percentile, as IxRT calibrates). Percentile ranges are computed in the graph
  (percentile_ranges: per batch only min, max and the top |x| leave the session); entropy
  and minmax use ORT's calibrator, a few images at a time (CalibStridedMinMax), so 256
  calibration images need ~1 GB, not ~25 GB. Node types the manifest lists in
  `exclude_op_types` stay fp32.

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

from converters.protocol import package_version

PRECISIONS = ("fp32", "fp16", "int8")
FIRST_BELOW_DB = 20.0   # SQNR under which an int8 activation counts as parted from fp32


class VariantFailed(Exception):
    pass


def as_raw_data(model):
    """MODEL with every float initializer held as raw bytes, the same values. paddle2onnx and
    MindSpore write weights as repeated float_data, which onnxconverter-common's float16
    converts one Python int at a time (its `_npfloat16_to_int`): 23 s against 1.5 s for the
    same Res2Net50 held as raw bytes (2026-12-07, 2 cores; the fp16 weights are identical)."""
    from onnx import TensorProto, numpy_helper

    for i, tensor in enumerate(model.graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.float_data:
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    return model


def make_fp16(fp32: Path, out: Path) -> dict:
    import onnx
    from onnxconverter_common import float16

    try:
        with warnings.catch_warnings(record=True) as caught:  # one per out-of-range weight
            warnings.simplefilter("always")
            model = float16.convert_float_to_float16(as_raw_data(onnx.load(str(fp32))),
                                                     keep_io_types=True)
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


TOPK_BATCH = 32   # calibration images per forward pass of the in-graph percentile model


def percentile_ranges(prepared: Path, calibration: np.ndarray, percentile: float,
                      op_types: list[str], tmp: Path, batch: int = TOPK_BATCH,
                      threads: int | None = None):
    """ONNX Runtime's percentile calibration (symmetric: the `percentile` of |x| over all
    calibration values of each tensor, clipped to the tensor's min and max), computed in the
    graph instead of in numpy.

    ORT's calibrator copies every activation of every batch out of the session and bins it
    with numpy (2048 bins); that is most of an int8 build. Here a copy of the model computes,
    per calibrated tensor and batch, ReduceMin, ReduceMax, Size and the k largest |x| (TopK,
    k = the number of values above the percentile over the whole set, so the global ones are
    among each batch's, a smaller last batch included); numpy only merges those few values.
    The threshold is the exact order statistic ORT's histogram approximates to one bin
    (max|x| / 2048). The tensors are the
    ones ORT's own calibrator selects (same class, same op types), and the ranges go to
    quantize_static through its calibration cache file, so the quantizer is ORT's, unchanged.
    `make bench-int8` compares the resulting models with ORT's own calibration."""
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import (CalibrationMethod, MinMaxCalibrater,
                                                    TensorData, TensorsData)

    from verify.ort_runner import OrtRunner

    selector = MinMaxCalibrater(prepared, op_types_to_calibrate=op_types)
    tensors, _ = selector.select_tensors_to_calibrate(selector.model)
    tensors = sorted(tensors)
    model = onnx.ModelProto()
    model.CopyFrom(selector.model)
    del selector
    tail = 1.0 - percentile / 100.0
    graph = model.graph
    graph.initializer.extend([
        helper.make_tensor("_pc_flat", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("_pc_one", TensorProto.INT64, [1], [1])])
    # k per batch = (values per image x all images) x tail: every value of the whole set above
    # the percentile can lie in one batch. Fed per batch, as the last one may be smaller.
    graph.input.append(helper.make_tensor_value_info("_pc_share", TensorProto.FLOAT, []))
    outputs = []
    for i, name in enumerate(tensors):
        p = f"_pc{i}_"
        graph.node.extend([
            helper.make_node("ReduceMin", [name], [p + "min"], keepdims=0),
            helper.make_node("ReduceMax", [name], [p + "max"], keepdims=0),
            helper.make_node("Size", [name], [p + "size"]),
            helper.make_node("Abs", [name], [p + "abs"]),
            helper.make_node("Reshape", [p + "abs", "_pc_flat"], [p + "flat"]),
            helper.make_node("Cast", [p + "size"], [p + "sizef"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "sizef", "_pc_share"], [p + "kf"]),
            helper.make_node("Ceil", [p + "kf"], [p + "kc"]),
            helper.make_node("Cast", [p + "kc"], [p + "k0"], to=TensorProto.INT64),
            helper.make_node("Add", [p + "k0", "_pc_one"], [p + "k1"]),
            helper.make_node("Min", [p + "k1", p + "size"], [p + "k"]),
            helper.make_node("TopK", [p + "flat", p + "k"], [p + "top", p + "idx"],
                             largest=1, sorted=0)])
        outputs += [(p + "min", [], TensorProto.FLOAT), (p + "max", [], TensorProto.FLOAT),
                    (p + "size", [], TensorProto.INT64), (p + "top", None, TensorProto.FLOAT)]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(n, t, None if shape is None else shape)
                        for n, shape, t in outputs)
    path = tmp / "percentile.onnx"
    onnx.save(model, str(path))
    runner = OrtRunner(path, threads)
    names = [n for n, _, _ in outputs]
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    count = dict.fromkeys(tensors, 0)
    tops: dict[str, list] = {t: [] for t in tensors}
    for start in range(0, len(calibration), batch):
        images = np.ascontiguousarray(calibration[start:start + batch])
        feed = {runner.input_name: images,
                "_pc_share": np.array(tail * len(calibration) / len(images), np.float32)}
        got = runner.session.run(names, feed)
        for i, t in enumerate(tensors):
            mn, mx, size, top = got[4 * i:4 * i + 4]
            low[t], high[t] = min(low[t], float(mn)), max(high[t], float(mx))
            count[t] += int(size)
            tops[t].append(top)
    del runner
    ranges = {}
    for t in tensors:
        values = np.concatenate(tops[t])
        n = count[t]
        # ORT: the first histogram bin where the cumulative share reaches the percentile;
        # exactly: the smallest v with share(|x| <= v) >= percentile, the k-th largest.
        k = n - int(np.ceil(percentile / 100.0 * n)) + 1
        k = min(max(k, 1), len(values))
        v = float(np.partition(values, len(values) - k)[len(values) - k])
        ranges[t] = TensorData(lowest=np.array(max(-v, low[t]), dtype=np.float32),
                               highest=np.array(min(v, high[t]), dtype=np.float32))
    return TensorsData(CalibrationMethod.Percentile, ranges)


PER_CHANNEL_OPSET = 13   # DequantizeLinear's `axis` (per-channel weights) needs opset 13


def _opset_for_per_channel(fp32: Path, tmp: Path) -> tuple[Path, str | None]:
    """The model to quantize: `fp32` itself, or a copy converted to opset 13 when it is older
    (MindSpore exports opset 11; ORT would otherwise write per-channel DequantizeLinear nodes
    with an `axis` opset 11 does not have: an invalid model). Measured on the MindCV demo
    Res2Net50: the converted copy computes the same logits (max diff 0)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(fp32))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= PER_CHANNEL_OPSET:
        return fp32, None
    try:
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the variant fails, naming why
        raise VariantFailed(f"int8 needs opset {PER_CHANNEL_OPSET} for per-channel weights; "
                            f"converting this opset {opset} model failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    path = tmp / f"opset{PER_CHANNEL_OPSET}.onnx"
    onnx.save(converted, str(path))
    return path, (f"{opset} -> {PER_CHANNEL_OPSET} (per-channel DequantizeLinear needs "
                  f"{PER_CHANNEL_OPSET})")


def make_int8(fp32: Path, out: Path, calibration: np.ndarray, cfg: dict,
              in_graph_percentile: bool = True, threads: int | None = None) -> dict:
    """cfg: the manifest's variants.int8 block (method, percentile, exclude_op_types).
    With `percentile`, the ranges come from percentile_ranges (in-graph, several times
    faster) unless in_graph_percentile is False (ORT's own histograms: the benchmark's
    baseline)."""
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = cfg.get("calibration", "entropy")
    stride = 8
    from converters.simplify import graph_batch

    held = graph_batch(fp32)
    if held:
        raise VariantFailed(f"the model holds a fixed batch {held} (exported so: report "
                            f"onnx.batch) and int8 calibration runs it at batch {stride}: "
                            "not built")
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
            source, upgraded = _opset_for_per_channel(fp32, Path(tmp))
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            named = list(cfg.get("exclude_nodes", []))
            unknown = sorted(set(named) - {n.name for n in graph.node})
            if unknown:
                raise VariantFailed(f"variants.int8.exclude_nodes names node(s) the model does "
                                    f"not have: {', '.join(unknown[:5])} (use the names a "
                                    "failed int8 report lists under diagnosis)")
            exclude = sorted({n.name for n in graph.node if n.op_type in exclude_types}
                             | set(named))
            cache = None
            in_graph = method == "percentile" and in_graph_percentile
            if in_graph:
                # The op types quantize_static calibrates when given none (its default).
                op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
                ranges = percentile_ranges(prepared, calibration, extra["CalibPercentile"],
                                           op_types, Path(tmp), threads=threads)
                cache = Path(tmp) / "ranges.json"
                save_tensors_data(ranges, cache)
            with contextlib.redirect_stdout(io.StringIO()):  # (the calibrator prints progress)
                quantize_static(
                    str(prepared), str(out), _Reader(calibration, stride),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method={"entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile,
                                      "minmax": CalibrationMethod.MinMax}[method],
                    nodes_to_exclude=exclude, extra_options=extra,
                    calibration_cache_path=str(cache) if cache else None)
    except VariantFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - any quantizer failure fails only this variant
        raise VariantFailed(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    nodes = [n.op_type for n in onnx.load(str(out)).graph.node]
    return {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "per_channel": True, "weights": "int8 symmetric", "activations": "uint8",
            "calibration": method, "calibration_images": usable,
            **({"percentile": extra["CalibPercentile"]} if method == "percentile" else {}),
            **({"opset_upgraded": upgraded} if upgraded else {}),
            "excluded_op_types": sorted(exclude_types), "excluded_nodes": len(exclude),
            "excluded_node_names": list(cfg.get("exclude_nodes", [])),
            "ranges": ("in-graph percentile (ReduceMin/ReduceMax/TopK), exact order statistic"
                       if in_graph else "onnxruntime's calibrator"),
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
    # Ties (figures are rounded to 0.01 dB) go by graph order, then name: ORT's matching
    # comes back in an order that changes from run to run (a report showed 119Conv in one run
    # and 124Conv, both 3.92 dB, in the next, on the same model).
    def place(r: dict) -> tuple:
        return order.get(r["tensor"], len(nodes)), r["tensor"]

    in_order = sorted(rows, key=place)
    first = next((r for r in in_order if r["sqnr_db"] < FIRST_BELOW_DB), None)
    rows.sort(key=lambda r: (r["sqnr_db"], *place(r)))
    return {"first_below": {"threshold_db": FIRST_BELOW_DB, **(first or {})} if first else None,
            "method": "onnxruntime.quantization.qdq_loss_debug: SQNR in dB (lower: more "
                      "error) of each activation's own quantize/dequantize step "
                      "(qdq_sqnr_db) and of the int8 activation vs fp32 (sqnr_db)",
            "images": len(images),
            "tensors_compared": len(rows), "worst": rows[:top]}

