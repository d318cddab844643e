"""From scores to predictions: best valid path, per-level argmax, thresholds, top-k paths.

Heads score every path of the hierarchy (one per leaf). ``consistent`` decoding (the
default) takes the best-scoring path, which always exists in the hierarchy; for heads that
score each level separately this is the path with the highest sum of per-level
log-probabilities. ``per-level`` decoding takes each level's argmax on its own (the raw
output of the original KTT), which may name a child under the wrong parent.

Path scores are normalised over the paths (a softmax of the log-scores, divided by the
model's calibration temperatures: :mod:`ktt_core.calibration`); a node's confidence is the
total probability of the paths through it. With a threshold, a prediction stops at the
deepest level whose confidence reaches it (deeper levels -1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ktt_core.hierarchy import Hierarchy

MODES = ("consistent", "per-level")


@dataclass
class Predictions:
    """Model scores for N texts, and their consistent decoding."""

    path_probs: np.ndarray   # (N, n_leaves) probability of each path, rows sum to 1
    level_ids: np.ndarray    # (N, depth) class id local to each level (consistent decoding)
    loss: float | None = None
    level_log_scores: list[np.ndarray] | None = field(default=None, repr=False)  # heads' own, per level
    #: Per level (N, n_d), when calibration gives levels their own temperatures; else the
    #: confidences follow from ``path_probs`` (see :meth:`confidences`).
    level_confidences: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def leaf_ids(self) -> np.ndarray:
        return self.level_ids[:, -1]

    def confidences(self, hierarchy: Hierarchy) -> list[np.ndarray]:
        """Per level (N, n_d): the confidence of each class, what thresholds compare."""
        if self.level_confidences is not None:
            return self.level_confidences
        return level_probs(hierarchy, self.path_probs)


def softmax(log_scores: np.ndarray) -> np.ndarray:
    z = log_scores - log_scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decode(hierarchy: Hierarchy, path_log_scores: np.ndarray, loss: float | None = None,
           level_log_scores: list[np.ndarray] | None = None, calibration=None) -> Predictions:
    """Path probabilities and best paths of raw path log-scores, calibrated with
    ``calibration`` (a :class:`ktt_core.calibration.Calibration`; ``None``: raw)."""
    from ktt_core.calibration import calibrated_probs

    probs, levels = calibrated_probs(hierarchy, path_log_scores, calibration)
    probs = probs.astype(np.float32)
    if levels is not None:
        levels = [x.astype(np.float32) for x in levels]
    best = probs.argmax(axis=1)
    return Predictions(probs, hierarchy.leaf_ancestors[best], loss, level_log_scores, levels)


def decode_scores(hierarchy: Hierarchy, scores, targets: np.ndarray | None = None,
                  calibration=None) -> Predictions:
    """Decode a model's :class:`ktt_core.contract.Scores` (calibrated with ``calibration``).
    The loss is the model's own when it reports one; otherwise, given ``targets`` (N, depth)
    that are all known, the mean negative log-likelihood of the true path, which every model
    has."""
    predictions = decode(hierarchy, scores.path_log_scores, scores.loss, scores.level_log_scores, calibration)
    if predictions.loss is None and targets is not None and len(targets) and (targets >= 0).all():
        true = predictions.path_probs[np.arange(len(targets)), targets[:, -1]].astype(np.float64)
        predictions.loss = float(-np.log(np.clip(true, 1e-12, 1.0)).mean())
    return predictions


def level_mass(hierarchy: Hierarchy, path_probs: np.ndarray, level: int) -> np.ndarray:
    """(N, n_level): probability of each class of ``level`` = sum over the paths through it."""
    acc = np.zeros((path_probs.shape[0], hierarchy.level_sizes[level]), dtype=path_probs.dtype)
    np.add.at(acc.T, hierarchy.leaf_ancestors[:, level], path_probs.T)
    return acc


def level_probs(hierarchy: Hierarchy, path_probs: np.ndarray) -> list[np.ndarray]:
    """Per level, (N, n_d): :func:`level_mass` of every level."""
    return [level_mass(hierarchy, path_probs, d) for d in range(hierarchy.depth)]


def decode_levels(hierarchy: Hierarchy, predictions: Predictions, mode: str = "consistent",
                  threshold: float | None = None) -> np.ndarray:
    """(N, depth) predicted ids in ``mode``; with ``threshold``, -1 below the last confident level."""
    if mode == "consistent":
        ids = predictions.level_ids.copy()
    elif mode == "per-level":
        scores = predictions.level_log_scores or predictions.confidences(hierarchy)
        ids = np.stack([s.argmax(axis=1) for s in scores], axis=1)
    else:
        raise ValueError(f"unknown decoding mode {mode!r}; use one of {MODES}")
    if threshold is not None:
        ids = cut_at_threshold(hierarchy, ids, predictions.confidences(hierarchy), threshold)
    return ids


def cut_at_threshold(hierarchy: Hierarchy, ids: np.ndarray, confidences: list[np.ndarray],
                     threshold: float) -> np.ndarray:
    """Stop each prediction at the deepest level whose confidence reaches ``threshold``.

    The top level is always kept, so every prediction names at least a coarse class.
    """
    ids = ids.copy()
    rows = np.arange(len(ids))
    confident = np.ones(len(ids), dtype=bool)
    for d in range(1, hierarchy.depth):
        confident &= confidences[d][rows, ids[:, d]] >= threshold
        ids[~confident, d] = -1
    return ids


def describe(hierarchy: Hierarchy, path_probs_row: np.ndarray, top_k: int = 1,
             level_ids: np.ndarray | None = None, confidences: list[np.ndarray] | None = None) -> dict:
    """One text's prediction, for people and JSON: path, per-level scores, top-k paths.

    ``level_ids`` (one row of :func:`decode_levels`) overrides the best path, e.g. a path
    cut short by a threshold. ``confidences`` (per level, that text's row) are the level
    scores when calibration gives them (:meth:`Predictions.confidences`).
    """
    per_level = (level_probs(hierarchy, path_probs_row[None, :]) if confidences is None
                 else [np.asarray(c)[None, :] for c in confidences])
    order = np.argsort(-path_probs_row, kind="stable")[: max(1, top_k)]
    paths = [_path_entry(hierarchy, per_level, hierarchy.leaf_ancestors[leaf], float(path_probs_row[leaf]))
             for leaf in order]
    if level_ids is None:
        level_ids = hierarchy.leaf_ancestors[order[0]]
    leaf = level_ids[-1]
    # The path's score is its leaf-level confidence: the path probability, unless
    # per-level calibration capped it (ktt_core.calibration).
    best = _path_entry(hierarchy, per_level, level_ids, float(per_level[-1][0, leaf]) if leaf >= 0 else None)
    return {"path": best["path"], "levels": best["levels"], "score": best["score"],
            "top_k": paths if top_k > 1 else None}


def _path_entry(hierarchy: Hierarchy, per_level: list[np.ndarray], ids: np.ndarray, score) -> dict:
    levels = [{"level": d + 1, "label": hierarchy.classes[d][c], "score": float(per_level[d][0, c])}
              for d, c in enumerate(ids)
              if c >= 0 and not hierarchy.is_placeholder[hierarchy.level_offsets[d] + c]]
    return {"path": [lv["label"] for lv in levels], "score": score, "levels": levels}


def describe_all(hierarchy: Hierarchy, predictions: Predictions, top_k: int, decoding: str = "consistent",
                 threshold: float | None = None) -> list[dict]:
    """:func:`describe` for every text, decoded with ``decoding`` and ``threshold``."""
    level_ids = decode_levels(hierarchy, predictions, decoding, threshold)
    levels = predictions.level_confidences
    return [describe(hierarchy, row, top_k, ids, None if levels is None else [c[i] for c in levels])
            for i, (row, ids) in enumerate(zip(predictions.path_probs, level_ids))]
