"""ONNX export of the core's transformer models: one graph from token ids to path scores,
with what is needed to run it.

The folder written by :func:`export_onnx` (see docs/export.md, "ONNX")::

    model.onnx       the graph: encoder + pooling + head, one file (no external data)
    tokenizer/       the tokenizer's files; tokenizer.json runs without transformers
    hierarchy.json   the label hierarchy (ktt_core.hierarchy.Hierarchy.to_dict)
    ktt.json         format, model name, config, max_length, inputs, outputs, sha256 of
                     model.onnx, opset and the torch version that exported it

Why one graph for encoder and head, not two: a single onnxruntime session runs the whole
model in one call, so the pooled features never make a round trip through Python and
numpy between two sessions, the runtime optimises across the boundary, and there is one
file whose hash says exactly which model is served.

Graph inputs: ``input_ids`` and ``attention_mask`` (int64, (batch, sequence), both axes
dynamic). Outputs: ``path_log_scores`` (batch, n_leaves), ``features`` (batch, width: the
pooled features the drift monitor compares) and, for heads that score levels on their own,
``level_log_scores`` (batch, n_classes; levels concatenated coarse to fine).

Exporter: torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, the default
since torch 2.9). The legacy TorchScript exporter cannot export the model at all: the
feature pool (``AdaptiveAvgPool1d`` from the encoder width to 24) has an output size that
does not divide the input size, which it refuses. The dynamo exporter translates every
operation of the four heads, including the ``scatter_reduce`` calls of
:mod:`ktt_core.ops` (AWX and C-HMCNN) into ONNX ``ScatterElements`` with reductions
(opset 18 and later), so the training code needs no export-only variant.

The core writes the folder whole or not at all and checks it, for every model, against
the scoring call before it appears (:func:`ktt_core.export.export_with_hook`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ktt_core.errors import KttError
from ktt_core.export.parity import probe_texts
from ktt_core.files import atomic_write_json, sha256_file

FORMAT = "ktt-onnx"
FORMAT_VERSION = 1
INPUTS = ("input_ids", "attention_mask")


class ExportGraph(nn.Module):
    """What the graph computes: an :class:`~ktt_core.model.EncoderModel`'s path scores, pooled
    features and (when its head has them) concatenated per-level scores, all float32."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs, features = self.model.forward_with_features(input_ids, attention_mask)
        paths, levels = self.model.head_scores(outputs)
        return (paths, features.float()) if levels is None else (paths, features.float(), levels)


def output_names(model) -> list[str]:
    """The graph's outputs for ``model``: ``level_log_scores`` only for heads that have them."""
    probe = torch.zeros((1, model.head.input_dim), dtype=torch.float32, device=model.device)
    with torch.no_grad():
        has_levels = model.head_scores(model.head(probe))[1] is not None
    return ["path_log_scores", "features"] + (["level_log_scores"] if has_levels else [])


def tokenizer_files(model) -> dict[str, bytes]:
    """The tokenizer's files (the checkpoint's own when loaded from one); ``tokenizer.json``
    must be among them, as the runtime reads it without transformers."""
    from ktt_core.encoders import tokenizer_to_files

    files = getattr(model, "_tokenizer_files", None) or {}
    if "tokenizer.json" not in files:
        files = tokenizer_to_files(model.tokenizer)
    if "tokenizer.json" not in files:
        raise KttError(f"cannot export {model.name} to ONNX: its tokenizer has no tokenizer.json "
                       "(a slow tokenizer); use an encoder with a fast tokenizer")
    for name in files:
        if "/" in name or "\\" in name or name.startswith("."):
            raise KttError(f"cannot export {model.name} to ONNX: refusing tokenizer file name {name!r}")
    return files


def _token_ids(model, texts: list[str]) -> list[list[int]]:
    """Token ids as the torch path makes them (``ktt_core.data.batches.tokenize``)."""
    ids = model.tokenizer(texts, truncation=True, max_length=model.config["max_length"])["input_ids"]
    return [list(row) for row in ids]


def _encode(model, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64, padded on the right as the torch path pads."""
    from ktt_core.onnx_runtime import pad

    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    return pad(_token_ids(model, texts), pad_id)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n", 1)[0].split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs and warns about things that do not concern the user
    (torchvision missing, axis renaming); keep the CLI's output to its own lines."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_graph(model, path: Path, texts: list[str]) -> int:
    """Write ``model`` (a CPU EncoderModel in eval mode) as one ONNX file, traced on two of
    ``texts``; returns its opset."""
    names = output_names(model)
    args = tuple(torch.from_numpy(x) for x in _encode(model, texts[2:4]))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        with _quiet_exporter():
            torch.onnx.export(ExportGraph(model).eval(), args, str(path), dynamo=True, external_data=False,
                              input_names=list(INPUTS), output_names=names,
                              dynamic_shapes={name: {0: batch, 1: sequence} for name in INPUTS})
    except Exception as exc:  # the exporter raises many types; name the first line of the cause
        raise KttError(f"cannot export {model.name} to ONNX ({_first_line(exc)})") from None
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)


def export_onnx(model, directory: Path) -> Path:
    """Write ``model`` (an :class:`~ktt_core.model.EncoderModel`) into the empty folder
    ``directory``; returns it. The core checks the result (see the module docstring)."""
    directory = Path(directory)
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime", "tokenizers") if not find_spec(name)]
    if missing:
        raise KttError(f"ONNX export needs {', '.join(missing)}: pip install {' '.join(missing)}")
    was_training = model.training
    source = model if model.device.type == "cpu" else copy.deepcopy(model).cpu()
    source.eval()
    try:
        onnx_path = directory / "model.onnx"
        opset = export_graph(source, onnx_path, probe_texts(source.hierarchy))
        token_dir = directory / "tokenizer"
        token_dir.mkdir()
        for name, data in sorted(tokenizer_files(source).items()):
            (token_dir / name).write_bytes(data)
        (directory / "hierarchy.json").write_text(
            json.dumps(source.hierarchy.to_dict(), indent=1, ensure_ascii=False), encoding="utf-8")
        tokenizer = source.tokenizer
        features = source.feature_pool.output_size
        features = features[0] if isinstance(features, (tuple, list)) else features
        h = source.hierarchy
        outputs = [{"name": "path_log_scores", "dtype": "float32", "shape": ["batch", h.n_leaves]},
                   {"name": "features", "dtype": "float32", "shape": ["batch", int(features)]}]
        if "level_log_scores" in output_names(source):
            outputs.append({"name": "level_log_scores", "dtype": "float32", "shape": ["batch", h.n_classes],
                            "level_sizes": list(h.level_sizes)})
        atomic_write_json(directory / "ktt.json", {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": source.name,
            "inputs_kind": "token_ids",
            "config": source.config,
            "max_length": int(source.config["max_length"]),
            "pad_token_id": int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
            "truncation_side": getattr(tokenizer, "truncation_side", "right"),
            "inputs": [{"name": name, "dtype": "int64", "shape": ["batch", "sequence"]} for name in INPUTS],
            "outputs": outputs,
            "sha256": sha256_file(onnx_path),
            "opset": opset,
            "torch": torch.__version__,
        })
    finally:
        model.train(was_training)
    return directory
