"""int8 quantization of an ONNX export: ``ktt export MODEL DATASET --onnx --quantize int8``.

The fp32 export (``RUN/export/onnx``) is written and checked first, as without
``--quantize``, and stays the reference. The int8 copy goes beside it,
``RUN/export/onnx-int8``: the same folder (tokenizer, hierarchy, ``ktt.json`` with the
calibration) whose ``model.onnx`` went through onnxruntime's dynamic quantization
(:func:`quantize_graph`), with ``quantized: "int8"`` and the new ``sha256`` in ``ktt.json``.
It is written as every export is (:func:`ktt_core.manifest.export_directory`: beside the
target, manifest last, then renamed over it), so any valid export folder reader,
``ktt predict --onnx`` and ``ktt serve --runtime onnx`` included, runs it unchanged.

A quantized model must never lose accuracy silently, and the probe-text parity check of
the fp32 export (1e-4) cannot hold for int8 weights. So the check here is what users
care about: both exports, loaded through :mod:`ktt_core.onnx_runtime` (which decodes
and calibrates as ``ktt predict --onnx`` does), score the first :data:`CHECK_ROWS` rows of
the dataset's test split; their exact-path accuracies and the int8 speed-up are printed,
with a warning for a drop beyond :data:`WARN_DROP` (the export is still written: the user
decides), and stored in the int8 ``ktt.json`` as ``quantization``.

What is quantized (:func:`quantize_graph` says why these settings): every MatMul and
Gemm with a constant weight (a transformer's attention projections and feed-forward
layers, the heads' linear layers, a TF-IDF model's linear layer over the TF-IDF vector) and
the embedding tables (Gather), weights int8 with a scale per output channel, activations
quantized to uint8 at run time. An ensemble's export has every member quantized. A graph
with nothing of the kind is refused rather than copied under an "int8" name.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ktt_core.contract import LabelledTexts
from ktt_core.errors import KttError
from ktt_core.files import atomic_write_json, sha256_file
from ktt_core.manifest import MANIFEST, export_directory, write_manifest

#: The int8 export's folder, beside the fp32 ``onnx``.
FOLDER = "onnx-int8"
#: Rows of the test split the accuracy check scores (the first ones): enough that a drop of
#: 0.005 is 10 texts, few enough that the check takes seconds, not minutes, on a CPU.
CHECK_ROWS = 2000
#: An exact-path accuracy drop larger than this prints a warning.
WARN_DROP = 0.005
#: Operators only a quantized graph holds: an "int8" copy without any is refused.
QUANTIZED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "QLinearMatMul",
                           "DynamicQuantizeMatMul", "QGemm", "QAttention"})


def check_rows(ws, dataset_name: str, model) -> LabelledTexts:
    """The labelled rows the accuracy check scores: the first :data:`CHECK_ROWS` of the
    dataset's test split, read (and refused) before anything is exported."""
    from ktt_core.data.datasets import Dataset
    from ktt_core.jobs import check_trained_on

    df = Dataset(ws.dataset_dir(dataset_name)).split("test").head(CHECK_ROWS)
    if df.empty:
        raise KttError(f"--quantize int8: dataset '{dataset_name}' has no test rows to check the int8 "
                       "model's accuracy on")
    check_trained_on(model, dataset_name, df["path"], "test split")
    return LabelledTexts.from_paths(df["text"], df["path"], model.hierarchy)


# -- the graph ---------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime's quantizer logs through the root logger (a recommendation to run its
    pre-processing, whose symbolic shape inference fails on these graphs anyway); keep the
    CLI's output to its own lines."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_graph(source: Path, target: Path) -> None:
    """Write the fp32 graph ``source`` quantized to ``target``: onnxruntime's dynamic
    quantization, int8 weights (QInt8) with a scale per output channel, uint8 activations
    scaled at run time.

    No calibration data is needed (activations are scaled per batch as they come), and the
    operators it writes (MatMulInteger, DynamicQuantizeLinear, DequantizeLinear) run on
    every CPU onnxruntime supports. Why per channel and reduced range: on the bundled
    sample (db_linear, MiniLM) one scale per tensor changed the best path of 9.7% of the
    test and validation texts, per channel 5.5%, per channel with 7-bit weights
    (``reduce_range``) 4.2%, at the same speed; 7-bit weights also avoid the int16
    saturation of uint8 x int8 products on CPUs without VNNI (onnxruntime's advice), and the
    export may be served on another CPU than the one that wrote it. Preprocessing
    (``quant_pre_process``) gave the same predictions there, and its symbolic shape inference
    fails on these graphs, so it is not run.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Passed as a ModelProto: the quantizer's shape inference then writes its temporary
    # copy into a folder of its own, never beside the fp32 export (whose manifest it would break).
    graph = onnx.load(str(source))
    check_types_declared(graph, source)
    try:
        with _quiet_quantizer():
            quantize_dynamic(graph, target, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    except Exception as exc:  # the quantizer raises many types; name the first line of the cause
        first = " ".join(str(exc).split("\n", 1)[0].split())[:300]
        raise KttError(f"{source}: onnxruntime cannot quantize this graph ({type(exc).__name__}: {first})") from None
    if not QUANTIZED_OPS & {node.op_type for node in onnx.load(str(target)).graph.node}:
        raise KttError(f"{source}: the graph has no weights dynamic quantization quantizes (MatMul, Gemm or "
                       "Gather over constant weights), so an int8 copy would be the same model; use the fp32 export")


def check_types_declared(graph, source: Path) -> None:
    """Refuse a graph whose custom operators (a domain onnx has no schema for) have outputs
    of undeclared type: the quantizer runs onnx's shape inference first, which cannot type
    them and may crash the process on the nodes that read them (onnx 1.23 does, a segfault,
    on a ``RegexFullMatch`` reading an untyped ``com.microsoft.Tokenizer`` output). Such a
    graph declares them in ``value_info`` (as the TF-IDF plugin's does)."""
    import onnx

    typed = {v.name for v in (*graph.graph.value_info, *graph.graph.output)}
    for node in graph.graph.node:
        if onnx.defs.has(node.op_type, node.domain):
            continue
        untyped = [name for name in node.output if name and name not in typed]
        if untyped:
            raise KttError(f"{source}: cannot quantize it: output {untyped[0]!r} of its {node.domain}.{node.op_type} "
                           "node has no declared type (value_info), which onnx's shape inference needs")


# -- the folder --------------------------------------------------------------------------

def _read_info(folder: Path) -> dict:
    return json.loads((folder / "ktt.json").read_text(encoding="utf-8"))


def _copy_files(source: Path, target: Path, skip: set[str]) -> None:
    """Copy ``source``'s files into ``target``, apart from the top-level names in ``skip``."""
    shutil.copytree(source, target, dirs_exist_ok=True,
                    ignore=lambda folder, names: [n for n in names if Path(folder) == source and n in skip])


def write_model_folder(source: Path, target: Path) -> None:
    """``target``: the single-model export ``source`` with its graph quantized; the other
    files (tokenizer, hierarchy) as they are, ``ktt.json`` with ``quantized`` and the new hash."""
    _copy_files(source, target, {"model.onnx", "ktt.json", MANIFEST})
    quantize_graph(source / "model.onnx", target / "model.onnx")
    atomic_write_json(target / "ktt.json", {**_read_info(source), "quantized": "int8",
                                            "sha256": sha256_file(target / "model.onnx")})


def write_quantized(source: Path, target: Path) -> None:
    """Fill the empty folder ``target`` with the export ``source`` quantized: a model's
    folder, or an ensemble's with each member's folder quantized and given its own manifest
    (the runtime verifies every member on its own, as it does the fp32 members)."""
    from ktt_core.ensemble import ENSEMBLE_FORMAT

    info = _read_info(source)
    if info.get("format") != ENSEMBLE_FORMAT:
        write_model_folder(source, target)
        return
    _copy_files(source, target, {"members", "ktt.json", MANIFEST})
    for member in info["members"]:
        folder = target / member["folder"]
        folder.mkdir(parents=True)
        write_model_folder(source / member["folder"], folder)
        write_manifest(folder)
    atomic_write_json(target / "ktt.json", {**info, "quantized": "int8"})


# -- the accuracy check ------------------------------------------------------------------

@dataclass
class QuantizationCheck:
    """Exact-path accuracy of the fp32 and int8 exports on the same test rows, and how many
    times more texts per second the int8 one scores (as measured: the CPU may be shared)."""

    accuracy_fp32: float
    accuracy_int8: float
    rows: int
    speedup: float

    @property
    def drop(self) -> float:
        return self.accuracy_fp32 - self.accuracy_int8

    def to_dict(self) -> dict:
        """What the int8 ``ktt.json`` stores as ``quantization``."""
        return {"accuracy_fp32": round(self.accuracy_fp32, 6), "accuracy_int8": round(self.accuracy_int8, 6),
                "rows": self.rows, "speedup": round(self.speedup, 3)}

    def lines(self) -> list[str]:
        """The comparison line, and a warning when the drop exceeds :data:`WARN_DROP`."""
        out = [(f"int8: exact-path accuracy {self.accuracy_int8:.4f} vs fp32 {self.accuracy_fp32:.4f} "
                f"({self.accuracy_int8 - self.accuracy_fp32:+.4f}) on {self.rows} test rows; "
                f"{self.speedup:.1f}x texts/s")]
        if self.drop > WARN_DROP:
            out.append(f"warning: int8 loses {self.drop:.4f} exact-path accuracy (more than {WARN_DROP}) on "
                       "the test rows; serve the fp32 export unless that loss is acceptable")
        return out


def exact_path_accuracy(runtime, data: LabelledTexts, batch_size: int) -> tuple[float, float]:
    """(exact-path accuracy, seconds) of an opened export on ``data``, decoded and calibrated
    as ``ktt predict --onnx`` does; the seconds exclude a first warm-up batch (allocations
    that a served model pays once)."""
    runtime.run(data.texts[:batch_size], batch_size)
    started = time.perf_counter()
    predictions, _ = runtime.run(data.texts, batch_size)
    seconds = time.perf_counter() - started
    if not np.isfinite(predictions.path_probs).all():
        raise KttError(f"{runtime.directory}: the export gives non-finite scores on the test rows")
    # As ktt_core.metrics.compute_metrics counts it: every level of the path right.
    return float(np.mean(np.all(predictions.level_ids == data.targets, axis=1))), seconds


def compare(reference, quantized, data: LabelledTexts, batch_size: int) -> QuantizationCheck:
    """Score ``data`` with both opened exports (fp32 ``reference`` and int8 ``quantized``)."""
    accuracy_fp32, seconds_fp32 = exact_path_accuracy(reference, data, batch_size)
    accuracy_int8, seconds_int8 = exact_path_accuracy(quantized, data, batch_size)
    return QuantizationCheck(accuracy_fp32, accuracy_int8, len(data.texts), seconds_fp32 / max(seconds_int8, 1e-9))


def quantize_export(source: Path, target: Path, data: LabelledTexts, force: bool = False) -> QuantizationCheck:
    """Write the int8 version of the fp32 export ``source`` into ``target`` (whole or not at
    all), after comparing both on ``data`` (:func:`check_rows`); returns the comparison,
    which the int8 ``ktt.json`` also stores."""
    from ktt_core.onnx_runtime import open_onnx

    source, target = Path(source), Path(target)
    reference = open_onnx(source)  # verified against its manifest before anything is copied
    batch_size = int(reference.config.get("eval_batch_size", 64))
    with export_directory(target, force) as tmp:
        write_quantized(source, tmp)
        write_manifest(tmp)  # so the int8 folder loads as users load it (export_directory rewrites it last)
        check = compare(reference, open_onnx(tmp), data, batch_size)
        atomic_write_json(tmp / "ktt.json", {**_read_info(tmp), "quantization": check.to_dict()})
    return check
