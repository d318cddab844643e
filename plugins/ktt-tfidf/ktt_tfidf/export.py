"""``ktt export --onnx`` for the TF-IDF models: one graph from the texts themselves to path
scores and drift features (:mod:`ktt_tfidf.onnx_graph` builds the TF-IDF part), with
``hierarchy.json`` and ``ktt.json``; the core then checks it against the model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ktt_core.errors import KttError
from ktt_core.files import atomic_write_json, sha256_file

FORMAT, FORMAT_VERSION = "ktt-onnx", 1


def graph_state(model) -> dict:
    """The model as :func:`ktt_tfidf.onnx_graph.build_onnx` reads it."""
    from ktt_tfidf.model import vectorizer_params

    return {"vectorizers": [{"params": vectorizer_params(v), "vocabulary": dict(v.vocabulary_), "idf": v.idf_}
                            for v in model.vectorizers],
            "levels": [dict(level) for level in model.levels],
            "leaf_ancestors": model.leaf_ancestors}


def add_drift_features(graph, n_features: int, width: int) -> None:
    """Append the drift features output: the TF-IDF vector X (the first input of the graph's
    Gemm) projected as :meth:`ktt_tfidf.model.TfidfModel.projection` does, without a dense
    (F, width) matrix: X padded to a multiple of ``width``, reshaped (N, F'/width, width),
    multiplied by each chunk's sign and summed over chunks."""
    from onnx import TensorProto, helper, numpy_helper

    gemm = next(node for node in graph.graph.node if node.op_type == "Gemm")
    chunks = -(-n_features // width)
    signs = np.where(np.arange(chunks) % 2 == 0, 1.0, -1.0).astype(np.float32).reshape(chunks, 1)
    constants = {"drift_pads": np.array([0, 0, 0, chunks * width - n_features], dtype=np.int64),
                 "drift_shape": np.array([0, chunks, width], dtype=np.int64),
                 "drift_signs": signs, "drift_axes": np.array([1], dtype=np.int64)}
    graph.graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in constants.items())
    graph.graph.node.extend([
        helper.make_node("Pad", [gemm.input[0], "drift_pads"], ["drift_padded"]),
        helper.make_node("Reshape", ["drift_padded", "drift_shape"], ["drift_chunks"]),
        helper.make_node("Mul", ["drift_chunks", "drift_signs"], ["drift_signed"]),
        helper.make_node("ReduceSum", ["drift_signed", "drift_axes"], ["features"], keepdims=0)])
    graph.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width]))


def export_onnx(model, directory: Path) -> Path:
    """Write ``model`` (a :class:`ktt_tfidf.model.TfidfModel`) into the empty folder ``directory``."""
    try:
        import onnx

        from ktt_tfidf.onnx_graph import UnsupportedVectorizerConfig, build_onnx
    except ImportError as exc:
        raise KttError(f"ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime ({exc})") from None
    try:
        graph = build_onnx(graph_state(model), name=model.name)
    except UnsupportedVectorizerConfig as exc:
        raise KttError(f"cannot export {model.name} to ONNX: {exc}") from None
    width = int(model.config["reference_features"])
    add_drift_features(graph, model.n_features, width)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(directory / "model.onnx"))
    (directory / "hierarchy.json").write_text(json.dumps(model.hierarchy.to_dict(), indent=1, ensure_ascii=False),
                                              encoding="utf-8")
    h = model.hierarchy
    atomic_write_json(directory / "ktt.json", {
        "format": FORMAT, "version": FORMAT_VERSION, "model": model.name, "inputs_kind": "text",
        "config": model.config,
        "inputs": [{"name": "text", "dtype": "string", "shape": ["batch"]}],
        "outputs": [{"name": "path_log_scores", "dtype": "float32", "shape": ["batch", h.n_leaves]},
                    {"name": "features", "dtype": "float32", "shape": ["batch", width]}],
        "sha256": sha256_file(directory / "model.onnx"),
        "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "locale": "C.UTF-8",
    })
    return directory
