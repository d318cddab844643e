"""Choosing a confidence threshold: how much of each prediction to keep, and how right it is.

With a threshold, a prediction stops at the deepest level whose confidence reaches it
(:func:`ktt_core.decoding.cut_at_threshold`, what ``ktt test/predict --threshold`` use):
a higher threshold names fewer fine classes, and usually names them right more often.
:func:`sweep` measures that coverage/accuracy trade-off on labelled (validation) rows for a
range of thresholds, :func:`threshold_for_precision` finds the lowest threshold (the most
coverage) whose hierarchical precision reaches a target, and :func:`format_sweep` shows a
sweep as a table for the terminal.

Short label paths are padded with placeholder nodes (:mod:`ktt_core.hierarchy`). As in
:func:`ktt_core.metrics.hierarchical_prf`, only real nodes count here: a prediction *ends*
at its deepest kept real node. A predicted path ``Baby`` (stored as ``Baby > "" > ""``)
therefore ends at level 1 whether its placeholders were kept or cut, since both show and
score as ``Baby``; ``stop_level_D`` and ``full_path_share`` count only predictions that name
a real node at the deepest level, and ``uncut_share`` counts those kept whole, padded or
not (1.0 at threshold 0). Correctness compares real nodes too: a kept real node is right
when the true path has the same node at that level (a placeholder in the true path never
matches a real node), and a cut placeholder is no error.

Numpy only: importing this module does not import torch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from ktt_core.decoding import cut_at_threshold
from ktt_core.errors import KttError
from ktt_core.hierarchy import Hierarchy
from ktt_core.metrics import hierarchical_prf

#: Thresholds :func:`sweep` tries by default: 0.0, 0.05, ..., 0.95 (a 0.05 grid) and 0.99.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(20)) + (0.99,)

# Columns of format_sweep: row key -> header (stop shares are added per level).
_SCORE_COLUMNS = {"hierarchical_precision": "hP", "hierarchical_recall": "hR",
                  "hierarchical_f1": "hF1", "kept_accuracy": "kept acc"}


def sweep(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray, confidences: Sequence[np.ndarray],
          thresholds: Sequence[float] | None = None) -> list[dict]:
    """One row of coverage and accuracy per threshold, for N labelled texts.

    ``true_ids``, ``pred_ids``: (N, depth) class ids local to each level; ``pred_ids`` is the
    full predicted path (the consistent best path, no -1) and ``true_ids`` has no unknown
    levels. ``confidences``: per level, (N, n_d) probability of each class at that level (as
    :func:`ktt_core.decoding.level_probs` gives). ``thresholds``: default
    :data:`DEFAULT_THRESHOLDS` (0.0 to 0.95 by 0.05, then 0.99), kept in the order given.

    Each row holds JSON-ready floats: ``threshold``; ``stop_level_1`` .. ``stop_level_D``, the
    share of texts whose prediction ends at that level (they sum to 1); ``full_path_share``
    (= ``stop_level_D``); ``uncut_share``, the share whose predicted path was not cut at all;
    ``hierarchical_precision``/``_recall``/``_f1`` of the cut paths; ``kept_accuracy``, the
    share whose kept path is entirely right; ``exact_path_accuracy``, the share whose kept
    path is the whole true path. See the module docstring for how placeholders count.
    No rows (N = 0) give an empty list.
    """
    true_ids, pred_ids = _checked_ids(hierarchy, true_ids, pred_ids, confidences)
    if not len(true_ids):
        return []
    chosen = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    return [sweep_row(hierarchy, true_ids, pred_ids, confidences, threshold) for threshold in chosen]


def sweep_row(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray, confidences: Sequence[np.ndarray],
              threshold: float) -> dict:
    """The :func:`sweep` row of one threshold (N >= 1 rows, arrays already checked)."""
    # A Python float, as the CLI passes it: numpy then compares it in the confidences' own
    # dtype (float32 for level_probs), so the cut is exactly the one predict makes.
    threshold = float(threshold)
    cut = cut_at_threshold(hierarchy, pred_ids, confidences, threshold)
    kept_real, true_real = real_nodes(hierarchy, cut), real_nodes(hierarchy, true_ids)
    # Same id at the same level is the same node (a node is its full path), so a kept real
    # node is right exactly when it equals the true id there.
    kept_all_right = np.all(~kept_real | (cut == true_ids), axis=1)
    # Placeholders only pad the end of a path and cuts remove a suffix, so the kept real
    # nodes are a prefix: their count is the level the prediction ends at (level 1 is real).
    stop_level = kept_real.sum(axis=1)
    stop_shares = np.bincount(stop_level, minlength=hierarchy.depth + 1)[1:] / len(cut)
    row = {"threshold": threshold}
    row.update({f"stop_level_{d + 1}": float(share) for d, share in enumerate(stop_shares)})
    row["full_path_share"] = float(stop_shares[-1])
    row["uncut_share"] = float(np.mean(np.all(cut == pred_ids, axis=1)))
    row.update({key: float(value) for key, value in hierarchical_prf(hierarchy, true_ids, cut).items()})
    row["kept_accuracy"] = float(np.mean(kept_all_right))
    row["exact_path_accuracy"] = float(np.mean(kept_all_right & np.all(kept_real == true_real, axis=1)))
    return row


def threshold_for_precision(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray,
                            confidences: Sequence[np.ndarray], target: float) -> tuple[float | None, dict | None]:
    """The smallest threshold whose hierarchical precision on these rows reaches ``target``.

    Coverage only shrinks as the threshold rises, so the smallest threshold that reaches the
    target keeps the most. Precision need not rise with the threshold, so every threshold that
    changes a cut is tried: 0, each confidence of a predicted node at levels 2..D, and the
    value just above the last one that keeps any level 2 (only top levels left) when that is
    still <= 1. All are scored at once from sorted confidences (O(N depth log N), no grid),
    and the answer is checked with :func:`sweep_row`, the same cut as predict makes. Of
    thresholds that cut alike, the lowest candidate is returned.

    Returns ``(threshold, its sweep row)``, or ``(None, None)`` when no threshold reaches the
    target (including N = 0 rows): callers then say so in one line. Arguments as for
    :func:`sweep`; ``target`` must be in (0, 1], otherwise :class:`KttError`.
    """
    target = _checked_target(target)
    true_ids, pred_ids = _checked_ids(hierarchy, true_ids, pred_ids, confidences)
    if not len(true_ids):
        return None, None
    candidates, precisions = _precision_at_candidates(hierarchy, true_ids, pred_ids, confidences)
    for threshold in candidates[precisions >= target]:
        row = sweep_row(hierarchy, true_ids, pred_ids, confidences, float(threshold))
        # Both count the same nodes, so they agree; the row (predict's own cut) has the last word.
        if row["hierarchical_precision"] >= target:
            return float(threshold), row
    return None, None


def format_sweep(rows: Sequence[dict], depth: int) -> str:
    """A plain-text table of :func:`sweep` rows for the terminal: threshold, the share of
    predictions ending at each level, hP, hR, hF1 and kept accuracy, right-aligned with 3
    decimals (the threshold too: print a chosen threshold in full elsewhere). No rows: the
    header alone."""
    columns = {"threshold": "threshold"}
    columns.update({f"stop_level_{d}": f"ends@L{d}" for d in range(1, depth + 1)})
    columns.update(_SCORE_COLUMNS)
    table = [list(columns.values())] + [[f"{row[key]:.3f}" for key in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in table)


def real_nodes(hierarchy: Hierarchy, ids: np.ndarray) -> np.ndarray:
    """(N, depth) True where ``ids`` names a real node (not -1, not a placeholder)."""
    offsets = np.asarray(hierarchy.level_offsets[:-1])
    return (ids >= 0) & ~hierarchy.is_placeholder[np.maximum(ids, 0) + offsets]


def _precision_at_candidates(hierarchy: Hierarchy, true_ids: np.ndarray, pred_ids: np.ndarray,
                             confidences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every threshold that can change a cut (ascending) and the hierarchical precision at each.

    Level d >= 2 of a prediction is kept iff the confidences of its levels 2..d all reach the
    threshold, i.e. iff their running minimum does. With those minima sorted, the kept real
    nodes (and the right ones among them) above any threshold are a suffix sum, so all
    candidates are scored together instead of one cut each.
    """
    n, depth = pred_ids.shape
    predicted_real = real_nodes(hierarchy, pred_ids)
    right = predicted_real & (pred_ids == true_ids)
    # The top level is always kept: a constant part of precision's numerator and denominator.
    top_predicted, top_right = int(predicted_real[:, 0].sum()), int(right[:, 0].sum())
    if depth == 1:
        return np.zeros(1), np.array([top_right / max(top_predicted, 1)])
    rows = np.arange(n)
    confidence = np.stack([confidences[d][rows, pred_ids[:, d]] for d in range(1, depth)], axis=1)
    keep_while = np.minimum.accumulate(confidence, axis=1).ravel()  # kept iff threshold <= this
    order = np.argsort(keep_while, kind="stable")
    sorted_keep = keep_while[order]
    predicted_before = np.concatenate([[0], np.cumsum(predicted_real[:, 1:].ravel()[order])])
    right_before = np.concatenate([[0], np.cumsum(right[:, 1:].ravel()[order])])

    dtype = sorted_keep.dtype
    # Just above the highest confidence cuts every prediction to its top level; a threshold
    # above 1 is no probability (and the CLI refuses it), so it is left out then.
    above_all = np.nextafter(sorted_keep[-1], np.array(np.inf, dtype=dtype))
    extra = [above_all] if above_all <= 1 else []
    candidates = np.unique(np.concatenate([np.zeros(1, dtype), confidence.ravel(), np.array(extra, dtype)]))
    first_kept = np.searchsorted(sorted_keep, candidates, side="left")  # entries >= candidate start here
    predicted = top_predicted + predicted_before[-1] - predicted_before[first_kept]
    overlap = top_right + right_before[-1] - right_before[first_kept]
    # The same arithmetic as metrics.hierarchical_prf, so equal counts give equal floats.
    return candidates, overlap.astype(np.float64) / np.maximum(predicted.astype(np.float64), 1.0)


def _checked_target(target) -> float:
    """``target`` as a float in (0, 1]; KttError (one line) otherwise."""
    if isinstance(target, bool) or not isinstance(target, Real) or math.isnan(target) or not 0 < target <= 1:
        raise KttError(f"target precision must be a number in (0, 1], got {target!r}")
    return float(target)


def _checked_ids(hierarchy: Hierarchy, true_ids, pred_ids, confidences) -> tuple[np.ndarray, np.ndarray]:
    """``true_ids`` and ``pred_ids`` as (N, depth) int arrays; ValueError when the shapes do
    not fit the hierarchy (a caller's bug, not the user's input)."""
    depth = hierarchy.depth
    true_ids = np.asarray(true_ids, dtype=np.int64).reshape(-1, depth)
    pred_ids = np.asarray(pred_ids, dtype=np.int64).reshape(-1, depth)
    if true_ids.shape != pred_ids.shape:
        raise ValueError(f"true_ids {true_ids.shape} and pred_ids {pred_ids.shape} differ in shape")
    if (pred_ids < 0).any() or (true_ids < 0).any():
        raise ValueError("pred_ids and true_ids must be whole paths (no -1): the sweep makes the cuts")
    if len(confidences) != depth or any(np.shape(c) != (len(pred_ids), size)
                                        for c, size in zip(confidences, hierarchy.level_sizes)):
        raise ValueError(f"confidences must hold one (N, n_d) array per level; expected shapes "
                         f"{[(len(pred_ids), size) for size in hierarchy.level_sizes]}, "
                         f"got {[np.shape(c) for c in confidences]}")
    return true_ids, pred_ids
