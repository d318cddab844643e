"""How well predicted probabilities match observed frequencies: ECE and the Brier score.

Both work on one level of the hierarchy at a time (class ids local to that level), so a
caller scores each level separately, as ``ktt test``, the report and the calibration step
do (:func:`calibration_report`). Both follow hiclass's definitions (``hiclass/metrics.py``)
so that the figures compare; per level, KTT takes the confidence of the class it predicts
(the node on the predicted path, which a threshold compares), where hiclass takes the
level's largest probability: they differ only when consistent decoding picks a path
through a node that is not its level's argmax.
"""
from __future__ import annotations

import numpy as np


def bin_index(confidence: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Index (0..n_bins-1) of the equal-width bin over [0, 1] each confidence falls in.

    Bins are closed on the left (``[0.1, 0.2)``), with the edges of ``np.histogram`` as
    hiclass uses them; a confidence of exactly 1.0 belongs to the last bin (hiclass's
    ``np.digitize`` would put it in none), and values outside [0, 1] to the nearest bin.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(np.asarray(confidence, dtype=float), edges) - 1, 0, n_bins - 1)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: row count, mean confidence and accuracy (NaN in empty bins).

    The points of a reliability diagram; :func:`expected_calibration_error` sums their gaps.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    which = bin_index(confidence, n_bins)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN, on purpose
        mean_confidence = np.bincount(which, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=n_bins) / count
    return count, mean_confidence, accuracy


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of top-label confidences (Guo et al., 2017, "On
    Calibration of Modern Neural Networks"; as hiclass computes it, hiclass/metrics.py
    ``expected_calibration_error``).

    ``conf`` (N,) is the probability the model gave its predicted class, ``correct`` (N,)
    whether that prediction was right. The rows are split into ``n_bins`` equal-width bins
    of confidence over [0, 1] (see :func:`bin_index`; 1.0 falls in the last bin), and

        ECE = sum over bins of (rows in bin / N) * |accuracy in bin - mean confidence in bin|

    0 for perfectly calibrated confidences; 0.0 for no rows.
    """
    conf = np.asarray(conf, dtype=float).ravel()
    if conf.size == 0:
        return 0.0
    count, mean_confidence, accuracy = reliability_bins(conf, np.asarray(correct).ravel(), n_bins)
    filled = count > 0
    return float(np.sum(count[filled] / conf.size * np.abs(accuracy[filled] - mean_confidence[filled])))


def multiclass_brier(probs: np.ndarray, true: np.ndarray) -> float:
    """Multiclass Brier score (Brier, 1950, "Verification of forecasts expressed in terms of
    probability"; as hiclass's ``multiclass_brier_score`` computes it).

    ``probs`` (N, K) holds each row's probability of each class, ``true`` (N,) the true class
    ids. The score is the mean over rows of ``sum over classes (p - onehot)^2``: 0 for
    certain and right, 2 for certain and wrong. 0.0 for no rows.
    """
    probs = np.asarray(probs, dtype=float)
    true = np.asarray(true, dtype=np.int64).ravel()
    if len(true) == 0:
        return 0.0
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(true)), true] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_report(hierarchy, predictions, true_ids: np.ndarray) -> dict[str, float]:
    """``level_D_ece`` and ``level_D_brier`` for every level of decoded ``predictions``
    (:class:`ktt_core.decoding.Predictions`, calibrated or not) against (N, depth) ``true_ids``."""
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
