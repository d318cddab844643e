"""From per-path scores to predictions: best path, per-level scores, top-k paths.

Heads score every path of the hierarchy (one per leaf), so the decoded path always exists
in the hierarchy. Scores are normalised over the paths (a softmax of the log-scores), and a
node's score is the total probability of the paths through it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ktt_core.hierarchy import Hierarchy, strip_padding


@dataclass
class Predictions:
    """Decoded predictions for N texts."""

    path_probs: np.ndarray   # (N, n_leaves) probability of each path, rows sum to 1
    level_ids: np.ndarray    # (N, depth) predicted class id local to each level
    loss: float | None = None

    @property
    def leaf_ids(self) -> np.ndarray:
        return self.level_ids[:, -1]


def softmax(log_scores: np.ndarray) -> np.ndarray:
    z = log_scores - log_scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decode(hierarchy: Hierarchy, path_log_scores: np.ndarray, loss: float | None = None) -> Predictions:
    probs = softmax(np.asarray(path_log_scores, dtype=np.float64)).astype(np.float32)
    best = probs.argmax(axis=1)
    return Predictions(probs, hierarchy.leaf_ancestors[best], loss)


def level_probs(hierarchy: Hierarchy, path_probs: np.ndarray) -> list[np.ndarray]:
    """Per level, (N, n_d): probability of each class = sum over the paths through it."""
    out = []
    for d in range(hierarchy.depth):
        acc = np.zeros((path_probs.shape[0], hierarchy.level_sizes[d]), dtype=path_probs.dtype)
        np.add.at(acc.T, hierarchy.leaf_ancestors[:, d], path_probs.T)
        out.append(acc)
    return out


def describe(hierarchy: Hierarchy, path_probs_row: np.ndarray, top_k: int = 1) -> dict:
    """One text's prediction, for people and JSON: path, per-level scores, top-k paths."""
    per_level = level_probs(hierarchy, path_probs_row[None, :])
    order = np.argsort(-path_probs_row, kind="stable")[: max(1, top_k)]
    paths = []
    for leaf in order:
        ids = hierarchy.leaf_ancestors[leaf]
        levels = [{"level": d + 1, "label": hierarchy.classes[d][c], "score": float(per_level[d][0, c])}
                  for d, c in enumerate(ids) if not hierarchy.is_placeholder[hierarchy.level_offsets[d] + c]]
        paths.append({"path": list(hierarchy.leaf_path(leaf)), "score": float(path_probs_row[leaf]),
                      "levels": levels})
    best = paths[0]
    return {"path": best["path"], "levels": best["levels"], "score": best["score"],
            "top_k": paths if top_k > 1 else None}


def real_path(hierarchy: Hierarchy, level_ids: np.ndarray) -> tuple[str, ...]:
    return strip_padding(hierarchy.levels[-1][level_ids[-1]])
