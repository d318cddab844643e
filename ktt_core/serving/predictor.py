"""Run a model on a list of texts: decoded predictions plus the features the monitor needs.

The service calls ``predictor.run(texts)`` without caring which runtime is behind it:
:class:`TorchPredictor` (a checkpoint) or :class:`ktt_core.onnx_runtime.OnnxModel` (an
ONNX export), which has the same ``run``, ``name`` and ``hierarchy``.
"""
from __future__ import annotations

import numpy as np
import torch

from ktt_core.data.batches import encode_texts
from ktt_core.decoding import Predictions
from ktt_core.inference import predict_with_features


class TorchPredictor:
    """A :class:`ktt_core.model.KttModel` in inference mode on ``device``."""

    def __init__(self, model, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.name = model.name
        self.hierarchy = model.hierarchy
        self.max_length = model.config["max_length"]

    def run(self, texts: list[str], batch_size: int = 64) -> tuple[Predictions, np.ndarray]:
        """Predictions and pooled features of ``texts`` (the core's batching: sorted by length)."""
        split = encode_texts(texts, self.model.tokenizer, self.max_length, self.hierarchy)
        return predict_with_features(self.model, split, batch_size)
