"""How far confidences are from the frequencies they claim: ECE and Brier score per level.

Both follow hiclass's definitions (``hiclass/metrics.py``: ``expected_calibration_error``
and ``multiclass_brier_score``), so KTT's figures compare with hiclass's:

- Expected calibration error (Naeini et al., 2015; Guo et al., 2017, "On Calibration of
  Modern Neural Networks"): the confidence of each prediction falls into one of 10
  equal-width bins of [0, 1]; ECE is the sum over bins of (bin count / N) times
  |accuracy in the bin - mean confidence in the bin|. One difference from hiclass: a
  confidence of exactly 1.0 falls into the last bin (hiclass's ``np.digitize`` leaves it
  out of every bin while still counting it in N).
- Multiclass Brier score (Brier, 1950): the mean over rows of the squared distance between
  the probability vector and the one-hot truth, summed over classes (0 is perfect, 2 the
  worst).

Per level, KTT takes the confidence of the class it predicts at that level (the node on
the predicted path, whose confidence a threshold compares), where hiclass takes the
largest probability of the level; the two differ only when consistent decoding picks a
path whose node is not its level's argmax.
"""
from __future__ import annotations

import numpy as np

N_BINS = 10


def bin_index(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """The equal-width bin of each confidence; 1.0 goes to the last bin."""
    return np.clip((np.asarray(confidence, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per bin: its edges, row count, mean confidence and accuracy (None for empty bins);
    what a reliability diagram draws."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    hit_sum = np.bincount(index, weights=correct, minlength=n_bins)
    return [{"low": b / n_bins, "high": (b + 1) / n_bins, "count": int(counts[b]),
             "confidence": float(conf_sum[b] / counts[b]) if counts[b] else None,
             "accuracy": float(hit_sum[b] / counts[b]) if counts[b] else None}
            for b in range(n_bins)]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of predictions with these confidences, ``correct`` telling which were right."""
    n = len(confidence)
    if n == 0:
        return float("nan")
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(confidence, correct, n_bins) if b["count"]))


def multiclass_brier(probs: np.ndarray, true: np.ndarray) -> float:
    """Mean over rows of sum over classes of (p - onehot(true))^2; ``probs`` (N, K)."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return float("nan")
    rows = np.arange(len(probs))
    squared = (probs ** 2).sum(axis=1) - 2 * probs[rows, true] + 1.0
    return float(squared.mean())


def calibration_report(hierarchy, predictions, true_ids: np.ndarray) -> dict[str, float]:
    """``level_D_ece`` and ``level_D_brier`` for every level of decoded ``predictions``
    (:class:`ktt_core.decoding.Predictions`) against (N, depth) ``true_ids``."""
    true_ids = np.asarray(true_ids)
    out: dict[str, float] = {}
    if len(true_ids) == 0:
        return out
    rows = np.arange(len(true_ids))
    for d, conf in enumerate(predictions.confidences(hierarchy)):
        predicted = predictions.level_ids[:, d]
        out[f"level_{d + 1}_ece"] = expected_calibration_error(conf[rows, predicted], predicted == true_ids[:, d])
        out[f"level_{d + 1}_brier"] = multiclass_brier(conf, true_ids[:, d])
    return out
