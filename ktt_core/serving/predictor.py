"""Run a model on a list of texts: decoded predictions plus the features the monitor needs.

The service calls ``predictor.run(texts)`` without caring which runtime is behind it:
:class:`TorchPredictor` (a checkpoint) or :class:`ktt_core.onnx_runtime.OnnxModel` (an
ONNX export), which has the same ``run``, ``name`` and ``hierarchy``.
"""
from __future__ import annotations

import numpy as np
import torch

from ktt_core.decoding import Predictions, decode
from ktt_core.devices import autocast


class TorchPredictor:
    """A :class:`ktt_core.model.KttModel` in inference mode on ``device``."""

    def __init__(self, model, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.name = model.name
        self.hierarchy = model.hierarchy
        self.max_length = model.config["max_length"]
        self.input_names = [n for n in ("input_ids", "attention_mask") if n in model.tokenizer.model_input_names]

    @torch.inference_mode()
    def run(self, texts: list[str], batch_size: int = 64) -> tuple[Predictions, np.ndarray]:
        """Predictions and pooled features of ``texts``, batched by length (less padding)."""
        model = self.model
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        h = self.hierarchy
        path_scores = np.empty((len(texts), h.n_leaves), dtype=np.float32)
        level_scores = None
        features = None
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = model.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            ids = batch["input_ids"].to(model.device)
            mask = batch["attention_mask"].to(model.device)
            with autocast(model.device, model.config.get("precision", "fp32")):
                outputs, pooled = model.forward_with_features(ids, mask)
            path_scores[rows] = model.head.path_log_scores(outputs).float().cpu().numpy()
            if features is None:
                features = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            features[rows] = pooled.float().cpu().numpy()
            levels = model.head.level_log_scores(outputs)
            if levels is not None:
                if level_scores is None:
                    level_scores = np.empty((len(texts), h.n_classes), dtype=np.float32)
                level_scores[rows] = torch.cat([x.float() for x in levels], dim=1).cpu().numpy()
        per_level = None if level_scores is None else [
            level_scores[:, h.level_offsets[d]:h.level_offsets[d + 1]] for d in range(h.depth)]
        if features is None:
            features = np.empty((0, model.feature_pool.output_size), dtype=np.float32)
        return decode(h, path_scores, None, per_level), features
