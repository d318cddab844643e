"""Evaluation metrics, each named for what it measures.

Placeholder nodes that pad short paths (see :mod:`ktt_core.hierarchy`) count as classes
for per-level scores but never as ancestors in hierarchical precision/recall, so a
one-level label is scored as one level.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score

from ktt_core.hierarchy import Hierarchy

#: Metrics where higher is better, in the order reports show them.
HEADLINE = ("exact_path_accuracy", "hierarchical_f1", "leaf_accuracy", "consistency_rate")


def compute_metrics(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray,
                    path_probs: np.ndarray | None = None) -> dict[str, float]:
    """Metrics for (N, depth) true and predicted class ids local to each level.

    ``pred_ids`` may hold -1 where a prediction stops early (a partial path).
    ``path_probs`` (N, n_leaves) adds leaf AU(PRC).
    """
    true_ids, pred_ids = np.asarray(true_ids), np.asarray(pred_ids)
    n = len(true_ids)
    out: dict[str, float] = {"rows": n}
    if n == 0:
        return out
    out["exact_path_accuracy"] = float(np.mean(np.all(true_ids == pred_ids, axis=1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for d in range(hierarchy.depth):
            out[f"level_{d + 1}_accuracy"] = float(accuracy_score(true_ids[:, d], pred_ids[:, d]))
            out[f"level_{d + 1}_macro_f1"] = float(
                f1_score(true_ids[:, d], pred_ids[:, d], average="macro", zero_division=0))
        out["leaf_accuracy"] = out[f"level_{hierarchy.depth}_accuracy"]
        out["leaf_weighted_precision"] = float(
            precision_score(true_ids[:, -1], pred_ids[:, -1], average="weighted", zero_division=0))
    out.update(hierarchical_prf(hierarchy, true_ids, pred_ids))
    if path_probs is not None:
        out["leaf_auprc_micro"] = leaf_auprc(true_ids[:, -1], path_probs)
    out["consistency_rate"] = float(np.mean(hierarchy.is_consistent(pred_ids)))
    return out


def hierarchical_prf(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray) -> dict[str, float]:
    """Micro-averaged hierarchical precision, recall and F1 (Kiritchenko et al., 2005).

    Each path is the set of its real nodes; since a node is identified by its full path,
    two nodes match only at the same level with the same id.
    """
    offsets = np.asarray(hierarchy.level_offsets[:-1])
    pad = hierarchy.is_placeholder
    true_real = ~pad[true_ids + offsets]
    pred_real = (pred_ids >= 0) & ~pad[np.maximum(pred_ids, 0) + offsets]
    overlap = float(np.sum((true_ids == pred_ids) & true_real & pred_real))
    precision = overlap / max(float(pred_real.sum()), 1.0)
    recall = overlap / max(float(true_real.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"hierarchical_precision": precision, "hierarchical_recall": recall, "hierarchical_f1": f1}


def leaf_auprc(true_leaves: np.ndarray, path_probs: np.ndarray) -> float:
    """Micro-averaged area under the precision-recall curve over leaf scores."""
    onehot = np.zeros(path_probs.shape, dtype=np.int8)
    onehot[np.arange(len(true_leaves)), true_leaves] = 1
    return float(average_precision_score(onehot, path_probs, average="micro"))
