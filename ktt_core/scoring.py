"""The one scoring call every command uses, and what is built on it.

:func:`score` asks the ``ktt_score`` hook (by default the model's own ``score``), checks
what comes back, and batches long inputs; :func:`predict` decodes it. Test, predict,
streaming predict, the BentoML runner, reference sets and the ONNX parity check all come
through here, so a plugin that changes scoring changes it everywhere.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ktt_core.contract import LabelledTexts, Scores
from ktt_core.decoding import Predictions, decode_scores
from ktt_core.errors import KttError
from ktt_core.hierarchy import format_path


def score(plugins, spec, model, texts: Sequence[str], features: bool = False) -> Scores:
    """The model's :class:`Scores` for ``texts``; KttError when a model answers with arrays
    of the wrong shape (a plugin bug caught here, not as a wrong prediction later)."""
    texts = list(texts)
    result = plugins.hook.ktt_score(spec=spec, model=model, texts=texts, features=features)
    h = model.hierarchy
    where = f"model {spec.name} (plugin {spec.plugin or '?'})"
    if not isinstance(result, Scores):
        raise KttError(f"{where}: scoring returned {type(result).__name__}, not ktt_core.contract.Scores")
    paths = np.asarray(result.path_log_scores, dtype=np.float32)
    if paths.shape != (len(texts), h.n_leaves):
        raise KttError(f"{where}: path_log_scores has shape {paths.shape}, expected "
                       f"({len(texts)}, {h.n_leaves}) (texts, leaves of the hierarchy)")
    if np.isnan(paths).any():
        raise KttError(f"{where}: path_log_scores holds NaN")
    levels = result.level_log_scores
    if levels is not None:
        shapes = [np.shape(x) for x in levels]
        if shapes != [(len(texts), n) for n in h.level_sizes]:
            raise KttError(f"{where}: level_log_scores have shapes {shapes}, expected "
                           f"{[(len(texts), n) for n in h.level_sizes]}")
    feats = result.features
    if features:
        feats = np.asarray(feats, dtype=np.float32) if feats is not None else None
        if feats is None or feats.ndim != 2 or len(feats) != len(texts):
            raise KttError(f"{where}: asked for drift features, got "
                           f"{'none' if feats is None else f'shape {feats.shape}'}")
    return Scores(paths, levels, feats, result.loss)


def predict(plugins, spec, model, data: LabelledTexts | Sequence[str], calibrated: bool = True) -> Predictions:
    """Decoded predictions (consistent best paths, path probabilities, loss when labelled),
    with the model's calibration unless ``calibrated`` is False (``--no-calibration``)."""
    texts, targets = (data.texts, data.targets) if isinstance(data, LabelledTexts) else (list(data), None)
    return decode_scores(model.hierarchy, score(plugins, spec, model, texts), targets,
                         model.calibration if calibrated else None)


def predict_with_features(plugins, spec, model, texts: Sequence[str]) -> tuple[Predictions, np.ndarray]:
    """Decoded (calibrated) predictions and the drift features of ``texts`` (the service's call)."""
    scores = score(plugins, spec, model, texts, features=True)
    return decode_scores(model.hierarchy, scores, calibration=model.calibration), scores.features


def reference_set(plugins, spec, model, data: LabelledTexts) -> pd.DataFrame:
    """Features and path probabilities per row, plus target and prediction (drift reference)."""
    predictions, features = predict_with_features(plugins, spec, model, data.texts)
    h = model.hierarchy
    leaf_names = [format_path(h.leaf_path(i)) for i in range(h.n_leaves)]
    columns = {str(i): features[:, i] for i in range(features.shape[1])}
    columns.update({name: predictions.path_probs[:, i] for i, name in enumerate(leaf_names)})
    known = data.targets[:, -1] >= 0
    columns["target"] = [leaf_names[t] if ok else None for t, ok in zip(data.targets[:, -1], known)]
    columns["prediction"] = [leaf_names[p] for p in predictions.leaf_ids]
    return pd.DataFrame(columns)


class ModelPredictor:
    """A loaded model behind the service's ``run(texts)`` (the ONNX runtime has the same)."""

    def __init__(self, plugins, spec, model):
        self.plugins, self.spec, self.model = plugins, spec, model
        self.name, self.hierarchy = model.name, model.hierarchy

    def run(self, texts: list[str]) -> tuple[Predictions, np.ndarray]:
        return predict_with_features(self.plugins, self.spec, self.model, texts)
