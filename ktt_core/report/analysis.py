"""The numbers behind the report, computed from the test arrays (no HTML here).

Class ids are local to each level (``true_ids[:, d]`` indexes ``hierarchy.levels[d]``).
Placeholder classes, which pad short paths, are scored per level like any class (as
:mod:`ktt_core.metrics` does) but never listed as classes of their own.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import precision_recall_fscore_support

from ktt_core.calibration_metrics import expected_calibration_error, multiclass_brier
from ktt_core.hierarchy import Hierarchy, format_path

SIBLING, CROSS_BRANCH, TOP_LEVEL = "sibling", "cross-branch", "top level"


def node_name(hierarchy: Hierarchy, level: int, index: int) -> str:
    """Full path of a class, placeholders stripped ("Baby", not "Baby > ")."""
    return format_path(hierarchy.node_path(level, index))


def real_classes(hierarchy: Hierarchy, level: int) -> np.ndarray:
    """Local ids of the level's classes that are not placeholders."""
    start, stop = hierarchy.level_offsets[level], hierarchy.level_offsets[level + 1]
    return np.flatnonzero(~hierarchy.is_placeholder[start:stop])


def _prf(true: np.ndarray, pred: np.ndarray, **kwargs):
    with warnings.catch_warnings():  # classes never predicted score 0, as zero_division says
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return precision_recall_fscore_support(true, pred, zero_division=0, **kwargs)


def level_scores(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray) -> list[dict]:
    """Per level: accuracy, macro and weighted precision/recall/F1 (over the classes that
    occur in the truth or the predictions, as ``compute_metrics`` averages), support."""
    rows = []
    for d in range(hierarchy.depth):
        true, pred = true_ids[:, d], pred_ids[:, d]
        macro = _prf(true, pred, average="macro")
        weighted = _prf(true, pred, average="weighted")
        rows.append({"level": d + 1, "accuracy": float(np.mean(true == pred)),
                     "macro_precision": macro[0], "macro_recall": macro[1], "macro_f1": macro[2],
                     "weighted_precision": weighted[0], "weighted_recall": weighted[1],
                     "weighted_f1": weighted[2], "classes": len(real_classes(hierarchy, d)),
                     "classes_in_test": len(np.intersect1d(np.unique(true), real_classes(hierarchy, d))),
                     "support": len(true)})
    return rows


def class_scores(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray) -> list[dict]:
    """One row per real class of every level: precision, recall, F1, support (true rows)
    and how often it was predicted."""
    rows = []
    for d in range(hierarchy.depth):
        classes = real_classes(hierarchy, d)
        precision, recall, f1, support = _prf(true_ids[:, d], pred_ids[:, d], labels=classes, average=None)
        predicted = np.bincount(pred_ids[:, d], minlength=hierarchy.level_sizes[d])[classes]
        for i, c in enumerate(classes):
            rows.append({"level": d + 1, "class": hierarchy.classes[d][c], "path": node_name(hierarchy, d, c),
                         "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                         "support": int(support[i]), "predicted": int(predicted[i])})
    return rows


def confusion_kind(hierarchy: Hierarchy, level: int, true: int, pred: int) -> str:
    """Sibling (same parent), cross-branch (different parents), or top level (level 1)."""
    if level == 0:
        return TOP_LEVEL
    parents = hierarchy.parent_of[level]
    return SIBLING if parents[true] == parents[pred] else CROSS_BRANCH


def confusion_pairs(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray, level: int,
                    top: int = 20) -> list[dict]:
    """The ``top`` most frequent (true -> predicted) errors at ``level`` (0-based), with
    count, share of the true class's rows and kind; ties in the order of the class ids."""
    true, pred = true_ids[:, level], pred_ids[:, level]
    wrong = true != pred
    if not wrong.any():
        return []
    n = hierarchy.level_sizes[level]
    pairs, counts = np.unique(true[wrong] * n + pred[wrong], return_counts=True)
    support = np.bincount(true, minlength=n)
    order = np.argsort(-counts, kind="stable")[:top]
    out = []
    for pair, count in zip(pairs[order], counts[order]):
        t, p = divmod(int(pair), n)
        out.append({"true": node_name(hierarchy, level, t), "predicted": node_name(hierarchy, level, p),
                    "count": int(count), "share": count / support[t],
                    "kind": confusion_kind(hierarchy, level, t, p)})
    return out


def sibling_share(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray, level: int
                  ) -> tuple[int, float]:
    """Errors at ``level`` (0-based) and the share of them between siblings (NaN: no
    errors or level 1, where classes have no parent)."""
    true, pred = true_ids[:, level], pred_ids[:, level]
    wrong = true != pred
    errors = int(wrong.sum())
    if level == 0 or not errors:
        return errors, float("nan")
    parents = hierarchy.parent_of[level]
    return errors, float(np.mean(parents[true[wrong]] == parents[pred[wrong]]))


def predicted_confidence(probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N,) the probability each row gives the class it predicts."""
    return np.asarray(probs, dtype=float)[np.arange(len(pred)), pred]


def worst_errors(hierarchy: Hierarchy, texts: list[str], true_ids: np.ndarray, pred_ids: np.ndarray,
                 leaf_probs: np.ndarray, top: int = 50) -> list[dict]:
    """Rows with a wrong exact path, most confident first (confidence of the predicted
    leaf-level class): the mistakes a threshold would not catch."""
    wrong = np.flatnonzero(np.any(true_ids != pred_ids, axis=1))
    confidence = predicted_confidence(leaf_probs, pred_ids[:, -1])[wrong]
    out = []
    for i in wrong[np.argsort(-confidence, kind="stable")[:top]]:
        first_wrong = int(np.argmax(true_ids[i] != pred_ids[i]))
        out.append({"row": int(i), "text": texts[i],
                    "true": node_name(hierarchy, hierarchy.depth - 1, true_ids[i, -1]),
                    "predicted": node_name(hierarchy, hierarchy.depth - 1, pred_ids[i, -1]),
                    "confidence": float(leaf_probs[i, pred_ids[i, -1]]), "wrong_from_level": first_wrong + 1})
    return out


def calibration_scores(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray,
                       confidences: list[np.ndarray], raw_confidences: list[np.ndarray] | None,
                       metrics: dict[str, float]) -> list[dict]:
    """Per level: ECE and Brier after calibration (or of the model, when it has none) and
    before (``raw_``). Values in ``metrics`` (``level_D_ece``, ``raw_level_D_brier``, ...)
    win; missing ones are computed here, ECE from the confidence of the predicted class."""
    rows = []
    for d in range(hierarchy.depth):
        row = {"level": d + 1}
        correct = true_ids[:, d] == pred_ids[:, d]
        for prefix, probs in (("", confidences), ("raw_", raw_confidences)):
            if probs is None:
                row[f"{prefix}ece"] = row[f"{prefix}brier"] = None
                continue
            ece = metrics.get(f"{prefix}level_{d + 1}_ece")
            brier = metrics.get(f"{prefix}level_{d + 1}_brier")
            row[f"{prefix}ece"] = float(ece) if ece is not None else expected_calibration_error(
                predicted_confidence(probs[d], pred_ids[:, d]), correct)
            row[f"{prefix}brier"] = float(brier) if brier is not None else multiclass_brier(probs[d], true_ids[:, d])
        rows.append(row)
    return rows


def best_sweep_row(sweep: list[dict], key: str = "hierarchical_f1") -> dict | None:
    """The sweep row with the highest ``key`` (the lowest threshold among ties)."""
    scored = [r for r in sweep if r.get(key) is not None]
    return max(scored, key=lambda r: (r[key], -r.get("threshold", 0))) if scored else None
